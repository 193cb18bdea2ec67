"""One command that turns a CUDA GPU into evidence about fmer_continuous.py's GPU path.

    python benchmark/gpu_check.py OUT_DIR                       # tests, speed, seeds, learn at the quick sizes (8 min)
    python benchmark/gpu_check.py OUT_DIR --full --parts all    # the full sizes, every part (up to 10 min each)
    python benchmark/gpu_check.py OUT_DIR --wheelhouse WH       # offline: missing packages from WH first
    python benchmark/gpu_check.py OUT_DIR --dry                 # no GPU: every part at tiny sizes on the CPU

Parts (--parts, comma-separated, or all):
  tests      the CUDA-only tests: --compile and --cudagraphs against eager, same losses for a fixed seed
             (--full: the whole test suite, on the GPU)
  speed      benchmark/speed.py on Humanoid-v5 and Hopper-v5, modes eager, compile, compile+cudagraphs:
             update ms, updates/s, x FLOP floor, and SPS of a real run after its burn-in
  seeds      1, 4 (--full: 1, 2, 4, 8) fmer_continuous.py processes side by side on the one GPU
             (Humanoid-v5, compile+cudagraphs): per-run and aggregate SPS
  learn      a short Hopper-v5 learning run in the fastest mode, with its evaluation returns
  multigoal  fmer_multigoal.py at the paper's width, 3 x 256 (opt-in; --full: the paper's protocol, 45k steps)
  mps        the seeds part again under CUDA MPS, started and stopped by the check (opt-in)

Every part has a wall-time budget (--budget PART=SECONDS overrides it); a part that runs out is cut,
its unfinished runs are stopped, and what it measured so far is kept. SPS is always counted after a
burn-in of learning steps, so the first compilation and the first graph capture are left out. Every
part runs the repository's own scripts in subprocesses. OUT_DIR gets report.md, results.json (the
raw numbers) and log.txt (every command and its output), rewritten after each part, so that a check
that is killed keeps what it had measured.

Only the standard library is imported here, because the packages the parts need may first have to be
installed from a wheelhouse (benchmark/make_wheelhouse.py writes one): --wheelhouse installs the
missing ones with `pip --no-index` into a folder that only the parts' subprocesses see.
Exit status: 0 when every part that ran passed, 1 when one failed or was cut, 2 on bad input.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "speed", "seeds", "learn", "multigoal", "mps")
DEFAULT_PARTS = ("tests", "speed", "seeds", "learn")
MODES = {"eager": [], "compile": ["--compile"], "cudagraphs": ["--cudagraphs"],
         "compile+cudagraphs": ["--compile", "--cudagraphs"]}
NEVER = 1_000_000_000  # an eval frequency no speed run reaches

# What each part runs, per profile. cap: the part's wall budget in seconds. quick: the default on a
# GPU, 8 min for the four default parts together on one H100/H200 (estimated: nothing here has run
# on a GPU yet). full: the sizes, each part within 10 min on one H100 (also estimated).
# dry: tiny sizes on the CPU, to check this harness where there is no GPU.
PROFILES = {
    "quick": {
        "tests": {"cap": 90, "pytest": ["tests/test_fmer_speed.py", "-k", "on_cuda"]},
        "speed": {"cap": 150, "iters": 20, "warmup": 5, "parts": False, "learning_starts": 1000, "burn_in": 200,
                  "sps_steps": 1000, "extra": [],
                  # (env, mode, real-run SPS?) in order of value: a cut part keeps the first ones
                  "runs": [("Humanoid-v5", "eager", True), ("Humanoid-v5", "compile+cudagraphs", True),
                           ("Humanoid-v5", "compile", True), ("Hopper-v5", "eager", False),
                           ("Hopper-v5", "compile+cudagraphs", False), ("Hopper-v5", "compile", False)]},
        "seeds": {"cap": 120, "env": "Humanoid-v5", "counts": [1, 4], "learning_starts": 1000, "burn_in": 200,
                  "window": 20, "extra": []},
        "learn": {"cap": 120, "env": "Hopper-v5", "total": 15_000, "learning_starts": 5000, "eval_every": 5000,
                  "eval_episodes": 5, "burn_in": 200, "extra": []},
        "multigoal": {"cap": 300, "total": 10_000, "learning_starts": 1000, "burn_in": 200,
                      "extra": ["--hidden-dim", "256"]},
        "mps": {"cap": 240, "env": "Humanoid-v5", "counts": [2, 4], "learning_starts": 1000, "burn_in": 200,
                "window": 20, "extra": []},
    },
    "full": {
        "tests": {"cap": 600, "pytest": ["tests"]},
        "speed": {"cap": 600, "iters": 50, "warmup": 5, "parts": True, "learning_starts": 2000, "burn_in": 500,
                  "sps_steps": 3000, "extra": [],
                  "runs": [(env, mode, True) for env in ("Humanoid-v5", "Hopper-v5")
                           for mode in ("eager", "compile+cudagraphs", "compile")]},
        "seeds": {"cap": 600, "env": "Humanoid-v5", "counts": [1, 2, 4, 8], "learning_starts": 2000, "burn_in": 500,
                  "window": 60, "extra": []},
        "learn": {"cap": 600, "env": "Hopper-v5", "total": 100_000, "learning_starts": 10_000, "eval_every": 10_000,
                  "eval_episodes": 10, "burn_in": 500, "extra": []},
        "multigoal": {"cap": 600, "total": 45_000, "learning_starts": 10_000, "burn_in": 200,  # the paper's protocol
                      "extra": ["--hidden-dim", "256", "--plot-frequency", "15000"]},
        "mps": {"cap": 600, "env": "Humanoid-v5", "counts": [2, 4, 8], "learning_starts": 2000, "burn_in": 500,
                "window": 60, "extra": []},
    },
    "dry": {
        "tests": {"cap": 300, "pytest": ["tests/test_fmer_speed.py", "-k", "on_cuda"]},
        "speed": {"cap": 300, "iters": 2, "warmup": 1, "parts": False, "learning_starts": 100, "burn_in": 10,
                  "sps_steps": 20, "extra": ["--hidden-dim", "32", "--batch-size", "32"],
                  "runs": [("Hopper-v5", "eager", True)]},
        "seeds": {"cap": 300, "env": "Hopper-v5", "counts": [1, 2], "learning_starts": 200, "burn_in": 20,
                  "window": 4, "extra": ["--hidden-dim", "32", "--batch-size", "32", "--buffer-size", "10000",
                                         "--log-frequency", "10"]},
        "learn": {"cap": 300, "env": "Hopper-v5", "total": 300, "learning_starts": 150, "eval_every": 150,
                  "eval_episodes": 2, "burn_in": 20, "extra": ["--hidden-dim", "32", "--batch-size", "32",
                                                              "--log-frequency", "10"]},
        "multigoal": {"cap": 300, "total": 300, "learning_starts": 200, "burn_in": 20,
                      "extra": ["--hidden-dim", "32", "--batch-size", "32", "--eval-frequency", "100",
                                "--eval-episodes", "5", "--plot-frequency", "300", "--log-frequency", "10"]},
        "mps": {"cap": 0},
    },
}
# Import name -> pip name of what the parts need besides torch.
NEEDED = {"numpy": "numpy", "gymnasium": "gymnasium", "mujoco": "mujoco", "tyro": "tyro",
          "tensorboard": "tensorboard"}
NEEDED_BY_PART = {"tests": {"pytest": "pytest"}, "multigoal": {"matplotlib": "matplotlib"}}
NEEDED_FULL_TESTS = {"gymnasium_robotics": "gymnasium-robotics", "matplotlib": "matplotlib"}

PROGRESS = re.compile(r"^step (\d+)/\d+(?: \([\w-]+\))?\s+SPS")  # "step 1200/1000000 (learning)  SPS ..."
EVAL = re.compile(r"^step (\d+): eval return (\S+) \+- ([^\s,]+),?\s*(.*)$")
GOALS = re.compile(r"(\d+) goals reached")
ERROR = re.compile(r"^(error: |[\w.]*(Error|Exception|Failed)\b.*:)")  # "error: ..." or "RuntimeError: ..."


class CheckError(Exception):
    """Bad input or an unusable machine: one `error:` line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise CheckError(message)


class Log:
    """log.txt: every command and every line of its output, prefixed with the run's name."""

    def __init__(self, path: Path):
        self.file, self.lock = open(path, "w", buffering=1), threading.Lock()

    def write(self, text: str):
        with self.lock:
            self.file.write(text if text.endswith("\n") else text + "\n")


class Run:
    """A script in a subprocess (a process group of its own), its output lines timestamped as they arrive.

    Reads the scripts' progress lines ("step 1200/1000000  SPS ...") and evaluation lines
    ("step 5000: eval return 312.4 +- 20.1").
    """

    live: set = set()  # runs to stop if the check itself is stopped

    def __init__(self, name: str, cmd: list[str], env: dict, log: Log, cwd: Path):
        self.name, self.cmd, self.log = name, [str(c) for c in cmd], log
        log.write(f"[{name}] $ {subprocess.list2cmdline(self.cmd)}   (in {cwd})")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True)
        self.progress: list[tuple[float, int]] = []  # (seconds since start, step)
        self.evals: list[dict] = []
        self.tail: deque = deque(maxlen=80)
        self.stopped = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        Run.live.add(self)

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic() - self.start
            line = line.rstrip("\n")
            self.log.write(f"[{self.name}] {line}")
            self.tail.append(line)
            if m := PROGRESS.match(line):
                self.progress.append((now, int(m.group(1))))
            elif m := EVAL.match(line):
                entry = {"step": int(m.group(1)), "return": float(m.group(2)), "std": float(m.group(3)),
                         "seconds": round(now, 1)}
                if g := GOALS.search(m.group(4)):
                    entry["goals_reached"] = int(g.group(1))
                self.evals.append(entry)

    @property
    def step(self) -> int:
        return self.progress[-1][1] if self.progress else 0

    @property
    def reached(self) -> int:
        return max([self.step] + [e["step"] for e in self.evals])

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, deadline: float) -> bool:
        """Wait until the run ends or the deadline (time.monotonic()) passes; True if it ended."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        self.reader.join(timeout=10)
        Run.live.discard(self)
        return True

    def stop(self, grace: float = 20.0):
        """SIGTERM to its process group (the scripts close their logs on it), SIGKILL after `grace` s."""
        if self.running():
            self.stopped = True
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.reader.join(timeout=10)
        Run.live.discard(self)

    def seconds_to(self, step: int) -> float | None:
        """Seconds from its start to the first progress line at or past `step`."""
        return next((round(t, 1) for t, s in self.progress if s >= step), None)

    def rate(self, t0: float = 0.0, t1: float = float("inf"), from_step: int = 0) -> dict | None:
        """Env steps per second between its first and last progress lines inside [t0, t1] (seconds
        since its start) at steps >= from_step."""
        points = [(t, s) for t, s in self.progress if t0 <= t <= t1 and s >= from_step]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        (ta, sa), (tb, sb) = points[0], points[-1]
        return {"sps": (sb - sa) / (tb - ta), "steps": sb - sa, "seconds": round(tb - ta, 2), "from_step": sa,
                "to_step": sb}

    def failure(self) -> str | None:
        """Its exit status and last lines, if it ended by itself with an error."""
        code = self.proc.poll()
        if code in (None, 0) or self.stopped:
            return None
        errors = [line.strip() for line in self.tail if ERROR.match(line.strip())][-2:]
        return f"exit status {code}" + "".join(f"\n{e}" for e in errors) + "\nlast lines:\n" + "\n".join(
            list(self.tail)[-12:])


class Check:
    def __init__(self, args, profile: str, out: Path, work: Path, env: dict, machine: dict, log: Log):
        self.args, self.profile, self.out, self.work, self.env, self.machine, self.log = (
            args, profile, out, work, env, machine, log)
        self.dry = profile == "dry"
        self.sizes = {part: dict(size) for part, size in PROFILES[profile].items()}
        for part, seconds in args.budget:
            self.sizes[part]["cap"] = seconds
        if args.seed_counts:
            self.sizes["seeds"]["counts"] = args.seed_counts
        if args.learn_steps:
            self.sizes["learn"]["total"] = args.learn_steps
        self.run_mode = args.run_mode or ("eager" if self.dry else "compile+cudagraphs")
        self.device_flags = ["--no-cuda"] if self.dry else []
        self.results: dict = {"parts": {}}

    # ----- helpers -----
    def script(self, name: str) -> str:
        return str(ROOT / name)

    def say(self, text: str):
        print(f"[gpu_check] {text}", flush=True)
        self.log.write(f"[gpu_check] {text}")

    def child_env(self, threads: int | None = None, extra: dict | None = None) -> dict:
        env = dict(self.env)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.update(extra or {})
        return env

    def rundir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ----- parts -----
    def part_tests(self, size: dict, deadline: float) -> dict:
        junit = self.work / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={junit}",
               *size["pytest"]]
        run = Run("tests", cmd, self.child_env(), self.log, ROOT)
        ended = run.wait(deadline)
        if not ended:
            run.stop()
        cases = []
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                outcome, message = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome, message = {"failure": "failed"}.get(child.tag, child.tag), child.get("message", "")
                cases.append({"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome,
                              "seconds": float(case.get("time") or 0), "message": message.splitlines()[0][:200]
                              if message else ""})
        counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
        code = run.proc.returncode
        if not ended:
            status = "cut"
        elif code == 0 and cases:
            status = "ok"
        else:
            status = "failed"
        note = "" if code in (0, None) else f"pytest exit status {code}" + (
            " (no test matched)" if code == 5 else "") + "\n" + "\n".join(list(run.tail)[-5:])
        return {"status": status, "command": subprocess.list2cmdline(cmd), "counts": counts, "cases": cases,
                "note": note.strip()}

    def part_speed(self, size: dict, deadline: float) -> dict:
        rows, status, notes = [], "ok", []
        for env_id, mode, with_sps in size["runs"]:
            if "cudagraphs" in mode and self.dry:
                continue
            if time.monotonic() >= deadline:
                status = worse(status, "cut")
                notes.append(f"{env_id} {mode}: not run (budget spent)")
                continue
            out = self.work / f"speed_{env_id}_{mode}.json"
            cmd = [sys.executable, self.script("benchmark/speed.py"), "--env-id", env_id, "--modes", mode,
                   "--iters", size["iters"], "--warmup", size["warmup"], "--parts" if size["parts"] else "--no-parts",
                   "--sps-steps", size["sps_steps"] if with_sps else 0, "--burn-in", size["burn_in"],
                   "--learning-starts", size["learning_starts"], "--json-output", out, *self.device_flags, *size["extra"]]
            self.say(f"speed: {env_id} {mode}")
            run = Run(f"speed {env_id} {mode}", cmd, self.child_env(), self.log, self.rundir("speed"))
            if not run.wait(deadline):
                run.stop()
                status = worse(status, "cut")
                notes.append(f"{env_id} {mode}: cut at the part's budget")
                continue
            if run.proc.returncode != 0 or not out.exists():
                status = "failed"
                notes.append(f"{env_id} {mode}: " + (run.failure() or "no output"))
                continue
            raw = json.loads(out.read_text())
            for row in raw.pop("rows"):
                rows.append({"env_id": env_id, **row, "meta": raw})
        return {"status": status, "rows": rows, "notes": notes,
                "command": f"python benchmark/speed.py --env-id ENV --modes MODE --iters {size['iters']} "
                           f"--warmup {size['warmup']} {'--parts' if size['parts'] else '--no-parts'} "
                           f"--learning-starts {size['learning_starts']} --burn-in {size['burn_in']} "
                           f"--sps-steps {size['sps_steps']} " + " ".join(self.device_flags + size["extra"])}

    def side_by_side(self, n: int, size: dict, deadline: float, tag: str, extra_env: dict | None = None) -> dict:
        """n fmer_continuous.py runs at once; SPS over a common window after every run's burn-in."""
        burn_step = size["learning_starts"] + size["burn_in"]
        # the caller's OMP_NUM_THREADS if set, else the cores shared out (more threads than free cores stall torch)
        threads = int(self.env.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n))
        runs = []
        for seed in range(1, n + 1):
            cmd = [sys.executable, self.script("fmer_continuous.py"), "--env-id", size["env"], "--seed", seed,
                   "--exp-name", f"gpu_check_{tag}{n}", "--total-timesteps", 1_000_000, "--learning-starts",
                   size["learning_starts"], "--eval-frequency", NEVER, "--progress-seconds", 0.5,
                   *MODES[self.run_mode], *self.device_flags, *size["extra"]]
            runs.append(Run(f"{tag} {n}x seed {seed}", cmd, self.child_env(threads, extra_env), self.log,
                            self.rundir(f"{tag}{n}")))
        level = {"processes": n, "threads_per_process": threads, "status": "ok", "note": ""}
        try:
            while time.monotonic() < deadline and all(r.running() for r in runs) and min(r.step for r in runs) < burn_step:
                time.sleep(0.2)
            failed = [f"seed {i + 1}: {r.failure()}" for i, r in enumerate(runs) if r.failure()]
            if failed:
                level.update(status="failed", note="\n".join(failed))
                return level
            if min(r.step for r in runs) < burn_step:
                level.update(status="cut", note=f"not every run reached step {burn_step} within the budget")
                return level
            t0, gpu = time.monotonic(), None

            def window_done():  # the window's length, and at least 3 progress lines of every run in it
                return time.monotonic() - t0 >= size["window"] and all(
                    sum(t >= t0 - r.start for t, _ in r.progress) >= 3 for r in runs)

            while time.monotonic() < deadline and not window_done() and all(r.running() for r in runs):
                time.sleep(0.2)
                if gpu is None and time.monotonic() - t0 >= size["window"] / 2:
                    gpu = gpu_utilization()
            t1 = time.monotonic()
            failed = [f"seed {i + 1}: {r.failure()}" for i, r in enumerate(runs) if r.failure()]
            if failed:
                level.update(status="failed", note="\n".join(failed))
                return level
            rates = [r.rate(t0 - r.start, t1 - r.start) for r in runs]
            if any(rate is None for rate in rates):
                level.update(status="cut", note="a run logged fewer than 2 progress lines in the window")
                return level
            level.update(window_s=round(t1 - t0, 1), per_run_sps=[round(x["sps"], 1) for x in rates],
                         aggregate_sps=round(sum(x["sps"] for x in rates), 1),
                         seconds_to_burn_in=[r.seconds_to(burn_step) for r in runs], gpu_during_window=gpu)
            return level
        finally:
            for r in runs:
                r.stop()

    def part_seeds(self, size: dict, deadline: float, tag: str = "seeds", extra_env: dict | None = None) -> dict:
        levels, status = [], "ok"
        counts = list(size["counts"])
        for i, n in enumerate(counts):
            now = time.monotonic()
            if now >= deadline:
                levels.append({"processes": n, "status": "cut", "note": "not run (budget spent)"})
                status = worse(status, "cut")
                continue
            share = (deadline - now) / (len(counts) - i)  # a fair share of what is left
            self.say(f"{tag}: {n} process(es) side by side, {share:.0f} s at most")
            level = self.side_by_side(n, size, now + share, tag, extra_env)
            levels.append(level)
            status = worse(status, level["status"])
        return {"status": status, "levels": levels, "env_id": size["env"], "mode": self.run_mode,
                "learning_starts": size["learning_starts"], "burn_in": size["burn_in"], "window": size["window"],
                "command": f"python fmer_continuous.py --env-id {size['env']} --seed S --total-timesteps 1000000 "
                           f"--learning-starts {size['learning_starts']} --eval-frequency {NEVER} "
                           f"--progress-seconds 0.5 {' '.join(MODES[self.run_mode] + self.device_flags + size['extra'])}"}

    def part_mps(self, size: dict, deadline: float) -> dict:
        if self.dry:
            return {"status": "skipped", "note": "CUDA MPS needs a GPU: not tried in the dry mode"}
        control = shutil.which("nvidia-cuda-mps-control")
        if control is None:
            return {"status": "skipped", "note": "nvidia-cuda-mps-control is not on this machine's PATH: MPS not measured"}
        pipe, logs = self.rundir("mps_pipe"), self.rundir("mps_log")
        mps_env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
        env = self.child_env(extra=mps_env)
        start = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=60)
        self.log.write(f"[mps] $ {control} -d: exit {start.returncode} {start.stdout} {start.stderr}")
        if start.returncode != 0:
            return {"status": "failed", "note": f"starting the MPS daemon failed: {start.stderr.strip()[:300]}"}
        try:
            result = self.part_seeds(size, deadline, tag="mps", extra_env=mps_env)
        finally:
            stop = subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=60)
            self.log.write(f"[mps] quit: exit {stop.returncode} {stop.stdout} {stop.stderr}")
        result["note"] = f"MPS daemon {control}, pipe directory {pipe}, started and stopped by the check"
        return result

    def part_learn(self, size: dict, deadline: float) -> dict:
        cmd = [sys.executable, self.script("fmer_continuous.py"), "--env-id", size["env"], "--seed", 1,
               "--exp-name", "gpu_check_learn", "--total-timesteps", size["total"], "--learning-starts",
               size["learning_starts"], "--eval-frequency", size["eval_every"], "--eval-episodes",
               size["eval_episodes"], "--progress-seconds", 1, *MODES[self.run_mode], *self.device_flags,
               *size["extra"]]
        run = Run("learn", cmd, self.child_env(), self.log, self.rundir("learn"))
        ended, report = self.finish_run(run, size, deadline)
        return {**report, "env_id": size["env"],
                "note": run.failure() or ("" if ended else "cut at the part's budget; evaluations so far kept"),
                "command": "python fmer_continuous.py " + subprocess.list2cmdline(run.cmd[2:])}

    def part_multigoal(self, size: dict, deadline: float) -> dict:
        cmd = [sys.executable, self.script("fmer_multigoal.py"), "--seed", 1, "--total-timesteps", size["total"],
               "--learning-starts", size["learning_starts"], "--progress-seconds", 1, *MODES[self.run_mode],
               *self.device_flags, *size["extra"]]
        run = Run("multigoal", cmd, self.child_env(), self.log, self.rundir("multigoal"))
        ended, report = self.finish_run(run, size, deadline)
        return {**report, "note": run.failure() or ("" if ended else "cut at the part's budget"),
                "command": "python fmer_multigoal.py " + subprocess.list2cmdline(run.cmd[2:])}

    def finish_run(self, run, size: dict, deadline: float) -> tuple[bool, dict]:
        """Wait for a learning part's run until its deadline (stopping it there); whether it ended, and
        what the learn and multigoal parts both report: status, steps, time to burn-in, SPS after it."""
        ended = run.wait(deadline)
        if not ended:
            run.stop()
        burn_step = size["learning_starts"] + size["burn_in"]
        status = "cut" if not ended else ("ok" if run.proc.returncode == 0 else "failed")
        return ended, {"status": status, "mode": self.run_mode, "total": size["total"], "reached_step": run.reached,
                       "evals": run.evals, "wall_s": round(time.monotonic() - run.start, 1),
                       "seconds_to_burn_in": run.seconds_to(burn_step),
                       "sps_after_burn_in": run.rate(from_step=burn_step)}

    def run_part(self, part: str):
        size = self.sizes[part]
        started = time.monotonic()
        self.say(f"part {part}: budget {size['cap']:.0f} s")
        self.results["parts"][part] = {"status": "running"}
        result = {"status": "interrupted", "note": "the check was stopped during this part"}
        try:
            result = getattr(self, f"part_{part}")(size, started + size["cap"])
        except Exception:  # a bug here must not cost the other parts
            result = {"status": "failed", "note": "gpu_check itself failed:\n" + traceback.format_exc()}
        finally:
            result.update(wall_s=round(time.monotonic() - started, 1), budget_s=size["cap"])
            self.results["parts"][part] = result
            self.say(f"part {part}: {result['status']} after {result['wall_s']} s")
            self.write()

    def write(self):
        self.results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1) + "\n")
        (self.out / "report.md").write_text(render(self.results) + "\n")


def worse(a: str, b: str) -> str:
    """The status of a part with two outcomes: failed over cut over ok."""
    order = ("ok", "cut", "failed")
    return max(a, b, key=order.index)


def gpu_utilization() -> dict | None:
    """GPU load and memory in use, from nvidia-smi, at one instant."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
        util, used, total = [float(x) for x in out.splitlines()[0].split(",")]
        return {"utilization_pct": util, "memory_used_mib": used, "memory_total_mib": total}
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


PROBE = r"""
import importlib.metadata, importlib.util, json, os, platform, sys
names = sys.argv[1:]
out = {"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
       "missing": [m for m in names if importlib.util.find_spec(m) is None], "versions": {}}
for dist in ("torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco", "tyro", "tensorboard", "pytest",
             "matplotlib", "triton"):
    try:
        out["versions"][dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
if "torch" not in out["missing"]:
    import torch
    out["torch"], out["torch_cuda"], out["cuda"] = torch.__version__, torch.version.cuda, torch.cuda.is_available()
    if out["cuda"]:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
print(json.dumps(out))
"""


def probe(env: dict, modules: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, "torch", *modules], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CheckError(f"cannot inspect this Python ({sys.executable}): {last}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return info


def hermetic_pip_env() -> dict:
    """Only the wheelhouse: no pip configuration or PIP_* variable of this machine adds an index or a link."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def wheelhouse_requirements(wheelhouse: Path) -> Path:
    """The wheelhouse's requirements.txt, which make_wheelhouse.py writes: what the wheels are for."""
    own = wheelhouse / "requirements.txt"
    if own.exists():
        return own
    raise CheckError(f"{wheelhouse} has no requirements.txt (benchmark/make_wheelhouse.py writes one)")


def install_wheelhouse(wheelhouse: Path, site: Path, env: dict, log: Log) -> list[str]:
    """Install what the wheelhouse's requirements need and this Python lacks into `site`; return name==version."""
    if not wheelhouse.is_dir():
        raise CheckError(f"--wheelhouse {wheelhouse} is not a folder")
    requirements = wheelhouse_requirements(wheelhouse)
    report = site.parent / "pip-install-report.json"
    pip_env = {**env, **hermetic_pip_env()}
    # 1. What is missing: pip resolves against the packages this Python already has.
    plan = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", "--find-links",
            str(wheelhouse), "--report", str(report), "-r", str(requirements)]
    proc = subprocess.run(plan, env=pip_env, capture_output=True, text=True, timeout=600)
    log.write(f"[wheelhouse] $ {subprocess.list2cmdline(plan)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
        raise CheckError(f"the wheelhouse {wheelhouse} cannot satisfy {requirements.name} here: {last.strip()}")
    items = json.loads(report.read_text())["install"]
    if not items:
        return []
    wheels = [urllib.parse.unquote(urllib.parse.urlparse(item["download_info"]["url"]).path) for item in items]
    # 2. Exactly those wheels, into a folder of their own that only the parts see (PYTHONPATH).
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--upgrade", "--target", str(site), *wheels]
    proc = subprocess.run(install, env=pip_env, capture_output=True, text=True, timeout=600)
    log.write(f"[wheelhouse] $ {subprocess.list2cmdline(install)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
        raise CheckError(f"installing from the wheelhouse failed: {last.strip()}")
    return [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in items]


# ----- the report -----

def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def render(results: dict) -> str:
    m = results["machine"]
    dry = results["profile"] == "dry"
    lines = [f"# FMER GPU check, {results['started'][:10]}", ""]
    if dry:
        lines += ["**No GPU was measured.** This is the CPU dry mode: every part ran at tiny sizes on the CPU to check "
                  "the harness. Its numbers say nothing about GPU speed; the CUDA-only tests were skipped.", ""]
    gpu = f"{m.get('gpu')} ({m.get('gpu_count')} visible, compute capability {m.get('capability')}, " \
          f"{m.get('gpu_memory_gib')} GiB)" if m.get("cuda") else "none visible to torch"
    lines += [f"- command: `{results['command']}`",
              f"- profile: {results['profile']}; parts: {', '.join(results['parts_asked'])}; "
              f"fast mode of the runs: {results['run_mode']}",
              f"- GPU: {gpu}" + (f"; nvidia-smi: {m['nvidia_smi']}" if m.get("nvidia_smi") else ""),
              f"- host: {results['host']}, {m.get('cpus')} CPUs; Python {m.get('python')} ({m.get('executable')})",
              f"- torch {m.get('torch')} (CUDA {m.get('torch_cuda')}); "
              + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if k != "torch"),
              f"- wheelhouse: {results['wheelhouse']}",
              f"- started {results['started']}, last written {results.get('finished', '')}", ""]
    lines += ["| part | status | wall (s) | budget (s) |", "| --- | --- | ---: | ---: |"]
    for part, r in results["parts"].items():
        lines.append(f"| {part} | {r['status']} | {fmt(r.get('wall_s'))} | {r.get('budget_s', '—')} |")
    lines.append("")
    for part, r in results["parts"].items():
        if r["status"] == "skipped":
            lines += [f"## {part}", "", f"Skipped: {r.get('note', '')}", ""]
        elif "wall_s" in r:
            lines += RENDER[part](r) + [""]
    return "\n".join(lines).rstrip()


def note_lines(r: dict) -> list[str]:
    notes = [n for n in [r.get("note"), *r.get("notes", [])] if n]
    return ["", "Notes:", "```", *[line for n in notes for line in n.splitlines()], "```"] if notes else []


def render_tests(r):
    c = r.get("counts", {})
    out = ["## tests", "", f"`{r.get('command', '')}` (repository root): {c.get('passed', 0)} passed, "
           f"{c.get('failed', 0)} failed, {c.get('error', 0)} errors, {c.get('skipped', 0)} skipped", ""]
    if r.get("cases"):
        out += ["| test | outcome | s | message |", "| --- | --- | ---: | --- |"]
        out += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} | {c['message'].replace('|', '/')} |"
                for c in r["cases"]]
    return out + note_lines(r)


def render_speed(r):
    out = ["## speed", "", f"`{r.get('command', '')}`, one process per (env, mode). update: one critic plus one "
           "actor update, median of --iters after --warmup calls (compilation and capture left out); x floor: "
           "update time over the FLOP floor; SPS: a real training run, over the steps after its burn-in.", ""]
    if r.get("rows"):
        out += ["| env | mode | update (ms) | updates/s | x FLOP floor | FLOP floor (ms) | SPS | SPS window (steps) |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in r["rows"]:
            meta = row["meta"]
            window = meta.get("sps_window_steps")
            out.append(f"| {row['env_id']} | {row['mode']} | {row['update'] * 1e3:.2f} | {1 / row['update']:.1f} | "
                       f"{row['floor_ratio']:.2f} | {meta['floor_s'] * 1e3:.2f} | {fmt(row.get('sps'))} | "
                       f"{'-'.join(map(str, window)) if window and row.get('sps') is not None else 'not run'} |")
        if any("parts" in row for row in r["rows"]):
            names = ["sampler", "scoring", "critic", "wcfm", "divergence"]
            out += ["", "| env | mode | " + " | ".join(f"{n} (ms)" for n in names) + " |",
                    "| --- | --- | " + " | ".join("---:" for _ in names) + " |"]
            out += [f"| {row['env_id']} | {row['mode']} | " + " | ".join(f"{row['parts'][n] * 1e3:.2f}" for n in names)
                    + " |" for row in r["rows"] if "parts" in row]
        meta = r["rows"][0]["meta"]
        out += ["", f"Shapes: B={meta['B']}, K={meta['K']}, N={meta['N']}, hidden={meta['hidden']}; device: "
                f"{meta['device']}."]
    return out + note_lines(r)


def render_levels(r, title):
    out = [f"## {title}", "", f"`{r.get('command', '')}` for seeds 1..n at once, each in a process of its own on "
           f"the one device. SPS per run: its env steps over a common window of about {r.get('window')} s that "
           f"starts once every run has passed step {r.get('learning_starts', 0) + r.get('burn_in', 0)} "
           "(so compilation and graph capture are left out); aggregate: their sum.", ""]
    if r.get("levels"):
        out += ["| processes | torch threads each | status | aggregate SPS | per-run SPS | start to burn-in end (s) | "
                "GPU load, memory | window (s) |", "| ---: | ---: | --- | ---: | --- | --- | --- | ---: |"]
        for lv in r["levels"]:
            g = lv.get("gpu_during_window")
            gtext = f"{g['utilization_pct']:.0f}%, {g['memory_used_mib']:.0f} MiB" if g else "—"
            out.append(f"| {lv['processes']} | {lv.get('threads_per_process', '—')} | {lv['status']} | "
                       f"{fmt(lv.get('aggregate_sps'))} | "
                       f"{', '.join(fmt(x) for x in lv.get('per_run_sps', [])) or '—'} | "
                       f"{', '.join(fmt(x) for x in lv.get('seconds_to_burn_in', [])) or '—'} | {gtext} | "
                       f"{fmt(lv.get('window_s'))} |")
        for lv in r["levels"]:
            if lv.get("note"):
                out += ["", f"{lv['processes']} processes: {lv['status']}", "```", *lv["note"].splitlines(), "```"]
    return out + note_lines(r)


def render_evals(r, title, what):
    out = [f"## {title}", "", f"`{r.get('command', '')}`: reached step {r.get('reached_step')} of {r.get('total')} "
           f"in {fmt(r.get('wall_s'))} s." + (f" {what}" if r.get("evals") else ""), ""]
    sps = r.get("sps_after_burn_in")
    if sps:
        out += [f"Steps per second from step {sps['from_step']} to {sps['to_step']}: {sps['sps']:.1f} (evaluations "
                f"included); from the start to the end of the burn-in (startup, random steps, compilation, "
                f"capture): {fmt(r.get('seconds_to_burn_in'))} s.", ""]
    if r.get("evals"):
        goals = any("goals_reached" in e for e in r["evals"])
        out += ["| step | eval return | +- | s since start |" + (" goals reached |" if goals else ""),
                "| ---: | ---: | ---: | ---: |" + (" ---: |" if goals else "")]
        out += [f"| {e['step']} | {e['return']:.1f} | {e['std']:.1f} | {e['seconds']} |"
                + (f" {e.get('goals_reached', '—')} |" if goals else "") for e in r["evals"]]
    return out + note_lines(r)


RENDER = {
    "tests": render_tests,
    "speed": render_speed,
    "seeds": lambda r: render_levels(r, "seeds side by side"),
    "mps": lambda r: render_levels(r, "seeds side by side under CUDA MPS"),
    "learn": lambda r: render_evals(r, "learning run", "Evaluation returns (best-of-K policy):"),
    "multigoal": lambda r: render_evals(r, "multi-goal run", "Evaluations from the start state:"),
}


def parse_args(argv):
    p = OneLineParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("out_dir", help="where report.md, results.json and log.txt go (created if missing)")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated parts, or all ({', '.join(PARTS)}); default {','.join(DEFAULT_PARTS)}")
    p.add_argument("--full", action="store_true", help="the full sizes (each part up to 10 min on one H100)")
    p.add_argument("--dry", action="store_true", help="CPU dry mode: tiny sizes, no GPU measured")
    p.add_argument("--wheelhouse", help="install the packages this Python lacks from this folder (pip --no-index)")
    p.add_argument("--work-dir", help="scratch folder for the runs (default: a temporary folder, removed after)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (tensorboard runs, site)")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="override a part's budget")
    p.add_argument("--seed-counts", help="processes side by side in the seeds part, e.g. 1,2,4,8")
    p.add_argument("--learn-steps", type=int, help="total env steps of the learning run")
    p.add_argument("--run-mode", choices=list(MODES), help="mode of the seeds, learn, multigoal and mps runs "
                   "(default: compile+cudagraphs; eager in the dry mode)")
    args = p.parse_args(argv)
    parts = PARTS if args.parts.strip() == "all" else tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        raise CheckError(f"unknown part {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)} or all")
    args.parts = tuple(x for x in PARTS if x in parts)
    if args.full and args.dry:
        raise CheckError("--full and --dry exclude each other")
    budgets = []
    for item in args.budget:
        part, _, seconds = item.partition("=")
        if part not in PARTS or not re.fullmatch(r"\d+(\.\d+)?", seconds) or float(seconds) <= 0:
            raise CheckError(f"--budget {item!r}: expected PART=SECONDS with PART in {', '.join(PARTS)}")
        budgets.append((part, float(seconds)))
    args.budget = budgets
    if args.seed_counts:
        if not re.fullmatch(r"\d+(,\d+)*", args.seed_counts) or 0 in [int(x) for x in args.seed_counts.split(",")]:
            raise CheckError(f"--seed-counts {args.seed_counts!r}: expected positive integers such as 1,2,4,8")
        args.seed_counts = [int(x) for x in args.seed_counts.split(",")]
    if args.learn_steps is not None and args.learn_steps < 1:
        raise CheckError("--learn-steps must be at least 1")
    if args.run_mode and "cudagraphs" in args.run_mode and args.dry:
        raise CheckError(f"--run-mode {args.run_mode} needs CUDA, and --dry runs on the CPU")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise CheckError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fmer_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    started = datetime.datetime.now().isoformat(timespec="seconds")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    modules = dict(NEEDED)
    for part in args.parts:
        modules.update(NEEDED_BY_PART.get(part, {}))
    if args.full and "tests" in args.parts:
        modules.update(NEEDED_FULL_TESTS)
    try:
        installed = []
        if args.wheelhouse:
            site = work / "site"
            installed = install_wheelhouse(Path(args.wheelhouse).resolve(), site, env, log)
            env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        machine = probe(env, list(modules))
        if "torch" in machine["missing"]:
            raise CheckError(f"torch is not installed for {sys.executable}: the check uses the PyTorch the machine has")
        missing = [modules[m] for m in machine["missing"] if m in modules]
        if missing:
            raise CheckError(f"missing Python packages: {', '.join(missing)}; install them, or give --wheelhouse DIR "
                             "(benchmark/make_wheelhouse.py writes one)")
        if not args.dry and not machine["cuda"]:
            raise CheckError(f"torch {machine['torch']} sees no CUDA GPU here (torch.cuda.is_available() is False); "
                             "--dry runs the CPU dry mode, which measures no GPU")
        profile = "dry" if args.dry else ("full" if args.full else "quick")
        check = Check(args, profile, out, work, env, machine, log)
        check.results.update(
            command="python benchmark/gpu_check.py " + subprocess.list2cmdline(argv), profile=profile,
            parts_asked=list(args.parts), run_mode=check.run_mode, machine=machine, started=started,
            host=f"{platform.node()} ({platform.machine()})", gpu_measured=not args.dry, wheelhouse_installed=installed,
            wheelhouse=(f"{args.wheelhouse}: installed " + (", ".join(installed) or "nothing (nothing was missing)")
                        if args.wheelhouse else "not used"))
        if args.dry:
            check.say("CPU dry mode: no GPU will be measured")
        for part in args.parts:
            check.run_part(part)
    finally:
        for run in list(Run.live):
            run.stop(grace=5)
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report = (out / "report.md").read_text()
    print(report)
    statuses = {part: r["status"] for part, r in check.results["parts"].items()}
    bad = [p for p, s in statuses.items() if s in ("failed", "cut", "interrupted")]
    print(f"\ngpu_check: {sum(s == 'ok' for s in statuses.values())} ok, {len(bad)} failed or cut"
          + (f" ({', '.join(bad)})" if bad else "") + f", {sum(s == 'skipped' for s in statuses.values())} skipped"
          + ("; NO GPU WAS MEASURED (dry mode)" if args.dry else "") + f"; report: {out / 'report.md'}")
    return 1 if bad else 0


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # so that the runs are stopped and the report is written


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        sys.exit(main())
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gpu_check: stopped; the report holds the parts finished so far", file=sys.stderr)
        sys.exit(130)
