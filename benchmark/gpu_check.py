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
  kitchen    fmer_kitchen.py --num-tasks 1 in the fastest mode for as many steps as its budget allows: SPS, the
             light switch completed in training and evaluation episodes, the first step it was (opt-in)

Before the parts, a tiny torch.compile on the device checks that a compiler works (Triton builds its launcher
with the system C compiler and Python headers); where it does not, the check says so in one line and runs
only the modes that need none (eager, cudagraphs). Then a warm-up compiles fmer_continuous.py once per env,
untimed, into a cache folder that every part's subprocess shares (speed.py's updates are the same graphs).

Time. Every part has a budget that starts at its burn-in (the first run past learning_starts + burn_in, or
speed's first measurement), so that startup and compilation do not eat it; until then it may take `startup`
seconds. A part that runs out is cut: its runs are stopped together (SIGTERM, which the scripts treat like
Ctrl-C, or SIGINT for pytest, which then writes its junit file; SIGKILL after one common grace) and what it
measured is kept. The quick profile also has a deadline for the whole check (`total`, 480 s). --budget
PART=SECONDS overrides a part's budget, and warmup=SECONDS or total=SECONDS those two. SPS is always counted
after a burn-in of learning steps, so the first compilation and graph capture are left out.

Nothing measured is lost: OUT_DIR gets report.md, results.json (the raw numbers) and log.txt (every command and
its output); the first two are rewritten at the start and after every part, test, level, speed measurement and
evaluation, so a check that is killed keeps what it had measured. Its children die with it: each asks Linux
for SIGKILL at its parent's death, and every run has a finite step budget and a replay buffer sized to it.

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
PARTS = ("tests", "speed", "seeds", "learn", "multigoal", "mps", "kitchen")
DEFAULT_PARTS = ("tests", "speed", "seeds", "learn")
MODES = {
    "eager": [],
    "compile": ["--compile"],
    "cudagraphs": ["--cudagraphs"],
    "compile+cudagraphs": ["--compile", "--cudagraphs"],
}
NEVER = 1_000_000_000  # an eval frequency no speed run reaches

# What each part runs, per profile. cap: seconds after the part's burn-in; startup: seconds it may take to get
# there (per level in seeds and mps); steps: the step budget of a seeds run past its burn-in (its buffer holds
# that many rows: 40k Humanoid rows are 115 MB, where the default 1M were 2.9 GB).
#
# quick: the default on a GPU. Nothing here has run on a GPU yet: the GPU figures below are estimates, for one
# H100/H200 with 16 cores. The whole check stops at `total` = 480 s, so 8 minutes is a bound; what runs past it
# is cut and what was measured is kept. Inside it (estimates):
#   install from a wheelhouse ~20 s (11 wheels, 48 MiB); compiler probe ~15 s
#   warm-up 60-120 s: Humanoid and Hopper compiled at once, one process each. Measured on this repository's
#     2-core CPU (tiny Hopper nets): the script's compile 100 s cold and 19 s from the warm cache, speed.py's
#     update 85 s cold and 16 s after the script's (the same graphs).
#   tests 30-45 s: three tests at small shapes, two of which compile (their shapes are not in the cache)
#   speed ~110 s: five speed.py processes, each ~5 s of imports and FLOP counting and 10-15 s of tracing and
#     capture (the compiled code comes from the cache); the three SPS runs add 15-25 s each (1,000 random
#     steps, 600 learning steps; eager at an assumed 40 SPS)
#   seeds ~90 s: per level 25-40 s to the burn-in (imports, 1,000 random steps, tracing, capture), the 15-s
#     window, stopping
#   learn ~70 s: ~25 s to the burn-in, 9,800 learning steps at an assumed 300-400 SPS, three evaluations of 5
#     episodes (eager, a few s each)
# That is 400-480 s. If compilation is slower than this, the warm-up is cut at its 150 s and the parts
# compile what is left within their startup; the deadline then cuts the last part, which the report says.
# full: the sizes, each part within 10 min on one H100 (also estimated). dry: tiny sizes on the CPU,
# to check this harness where there is no GPU; its progress lines come every 10 steps, not every so many
# seconds, so that what it measures does not depend on how fast the machine is.
PROFILES = {
    "quick": {
        "total": 480,
        "warmup": {"cap": 150, "learning_starts": 300, "steps": 20, "extra": []},
        "tests": {"cap": 60, "pytest": ["tests/test_fmer_speed.py", "-k", "on_cuda"]},
        "speed": {
            "cap": 110,
            "startup": 60,
            "iters": 20,
            "warmup": 5,
            "parts": False,
            "learning_starts": 1000,
            "burn_in": 100,
            "sps_steps": 500,
            "extra": [],
            # (env, mode, real-run SPS?) in order of value: a cut part keeps the first ones
            "runs": [
                ("Humanoid-v5", "eager", True),
                ("Humanoid-v5", "compile+cudagraphs", True),
                ("Humanoid-v5", "compile", True),
                ("Hopper-v5", "compile+cudagraphs", False),
                ("Hopper-v5", "eager", False),
            ],
        },
        "seeds": {
            "cap": 80,
            "startup": 60,
            "env": "Humanoid-v5",
            "counts": [1, 4],
            "learning_starts": 1000,
            "burn_in": 200,
            "window": 15,
            "steps": 40_000,
            "extra": [],
        },
        "learn": {
            "cap": 60,
            "startup": 60,
            "env": "Hopper-v5",
            "total": 15_000,
            "learning_starts": 5000,
            "eval_every": 5000,
            "eval_episodes": 5,
            "burn_in": 200,
            "extra": [],
        },
        "multigoal": {
            "cap": 240,
            "startup": 120,
            "total": 10_000,
            "learning_starts": 1000,
            "burn_in": 200,
            "extra": ["--hidden-dim", "256"],
        },
        "mps": {
            "cap": 150,
            "startup": 60,
            "env": "Humanoid-v5",
            "counts": [2, 4],
            "learning_starts": 1000,
            "burn_in": 200,
            "window": 15,
            "steps": 40_000,
            "extra": [],
        },
        "kitchen": {
            "cap": 240,
            "startup": 120,
            "total": 200_000,
            "learning_starts": 5000,
            "eval_every": 10_000,
            "eval_episodes": 5,
            "burn_in": 200,
            "extra": [],
        },
    },
    "full": {
        "total": None,
        "warmup": {"cap": 300, "learning_starts": 300, "steps": 20, "extra": []},
        "tests": {"cap": 600, "pytest": ["tests"]},
        "speed": {
            "cap": 600,
            "startup": 120,
            "iters": 50,
            "warmup": 5,
            "parts": True,
            "learning_starts": 2000,
            "burn_in": 500,
            "sps_steps": 3000,
            "extra": [],
            "runs": [
                (env, mode, True)
                for env in ("Humanoid-v5", "Hopper-v5")
                for mode in ("eager", "compile+cudagraphs", "compile")
            ],
        },
        "seeds": {
            "cap": 600,
            "startup": 120,
            "env": "Humanoid-v5",
            "counts": [1, 2, 4, 8],
            "learning_starts": 2000,
            "burn_in": 500,
            "window": 60,
            "steps": 100_000,
            "extra": [],
        },
        "learn": {
            "cap": 600,
            "startup": 120,
            "env": "Hopper-v5",
            "total": 100_000,
            "learning_starts": 10_000,
            "eval_every": 10_000,
            "eval_episodes": 10,
            "burn_in": 500,
            "extra": [],
        },
        "multigoal": {
            "cap": 600,
            "startup": 120,
            "total": 45_000,
            "learning_starts": 10_000,
            "burn_in": 200,
            "extra": ["--hidden-dim", "256"],
        },  # the paper's protocol
        "mps": {
            "cap": 600,
            "startup": 120,
            "env": "Humanoid-v5",
            "counts": [2, 4, 8],
            "learning_starts": 2000,
            "burn_in": 500,
            "window": 60,
            "steps": 100_000,
            "extra": [],
        },
        "kitchen": {
            "cap": 600,
            "startup": 120,
            "total": 1_000_000,
            "learning_starts": 10_000,
            "eval_every": 10_000,
            "eval_episodes": 10,
            "burn_in": 500,
            "extra": [],
        },
    },
    "dry": {
        "total": None,
        "warmup": {"cap": 300, "learning_starts": 100, "steps": 10, "extra": ["--hidden-dim", "32", "--batch-size", "32"]},
        "tests": {"cap": 300, "pytest": ["tests/test_fmer_speed.py", "-k", "on_cuda"]},
        "speed": {
            "cap": 300,
            "startup": 300,
            "iters": 2,
            "warmup": 1,
            "parts": False,
            "learning_starts": 100,
            "burn_in": 10,
            "sps_steps": 20,
            "extra": ["--hidden-dim", "32", "--batch-size", "32"],
            "runs": [("Hopper-v5", "eager", True)],
        },
        "seeds": {
            "cap": 300,
            "startup": 300,
            "env": "Hopper-v5",
            "counts": [1, 2],
            "learning_starts": 200,
            "burn_in": 20,
            "window": 0,
            "steps": 5000,
            "extra": ["--hidden-dim", "32", "--batch-size", "32", "--log-frequency", "10"],
        },
        "learn": {
            "cap": 300,
            "startup": 300,
            "env": "Hopper-v5",
            "total": 300,
            "learning_starts": 150,
            "eval_every": 150,
            "eval_episodes": 2,
            "burn_in": 20,
            "extra": ["--hidden-dim", "32", "--batch-size", "32", "--log-frequency", "10"],
        },
        "multigoal": {
            "cap": 300,
            "startup": 300,
            "total": 300,
            "learning_starts": 200,
            "burn_in": 20,
            "extra": [
                "--hidden-dim",
                "32",
                "--batch-size",
                "32",
                "--eval-frequency",
                "100",
                "--eval-episodes",
                "5",
                "--log-frequency",
                "10",
            ],
        },
        "mps": {"cap": 0},
        "kitchen": {
            "cap": 300,
            "startup": 300,
            "total": 400,
            "learning_starts": 150,
            "eval_every": 200,
            "eval_episodes": 2,
            "burn_in": 20,
            "extra": ["--hidden-dim", "32", "--batch-size", "32", "--log-frequency", "10"],
        },
    },
}
GRACE = 15.0  # seconds between a stop signal and SIGKILL, for all of a part's runs together
RESERVE = 20.0  # seconds kept from the check's deadline to stop the last runs and write the report
# Import name -> pip name of what the parts need besides torch.
NEEDED = {"numpy": "numpy", "gymnasium": "gymnasium", "mujoco": "mujoco", "tyro": "tyro", "tensorboard": "tensorboard"}
NEEDED_BY_PART = {
    "tests": {"pytest": "pytest"},
    "kitchen": {"gymnasium_robotics": "gymnasium-robotics"},
}
# The full tests also need the kitchen (gymnasium-robotics) and the multi-goal pictures (matplotlib).
NEEDED_FULL_TESTS = {"gymnasium_robotics": "gymnasium-robotics", "matplotlib": "matplotlib"}

PROGRESS = re.compile(r"^step (\d+)/\d+(?: \([\w-]+\))?\s+SPS")  # "step 1200/1000000 (learning)  SPS ..."
EVAL = re.compile(r"^step (\d+): eval return (\S+) \+- ([^\s,]+),?\s*(.*)$")
KITCHEN_EVAL = re.compile(r"^step (\d+): eval completion rate ([\d.]+)% \((.*)\)$")  # "... 50.0% (light switch 1/2)"
SUCCESSES = re.compile(r"(.+?) (\d+)/(\d+)$")
GOALS = re.compile(r"(\d+) goals reached")
CASE = re.compile(r"^(\S+::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")  # pytest -v: "tests/x.py::test_a PASSED"
ERROR = re.compile(r"^(error: |[\w.]*(Error|Exception|Failed)\b.*:)")  # "error: ..." or "RuntimeError: ..."

# Every child starts through this launcher: it asks Linux to SIGKILL it when the check dies, however the check
# dies (a harness's SIGKILL leaves the check no chance to stop anything), gives SIGINT back its default action (a
# shell's background job inherits it ignored, and pytest writes its junit file only on SIGINT), then becomes the
# command, keeping its pid. A launcher rather than preexec_fn, which Python's documentation calls unsafe in a
# process with threads, and the check reads every run's output in a thread. The signal comes at the death of the
# thread that started the child: runs are started from the main thread only.
LAUNCH = r"""
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; it survives the exec below
except (AttributeError, OSError):
    pass  # not Linux: this child outlives a killed check
if os.getppid() != int(sys.argv[1]):
    os._exit(70)  # the check died before the prctl
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp(sys.argv[2], sys.argv[2:])
"""


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


class Clock:
    """A part's time: `cap` seconds from its burn-in (burn_in()), and before that `startup` seconds at most from
    its start. No deadline passes `hard`, the check's own. All three in time.monotonic() seconds."""

    def __init__(self, startup: float, cap: float, hard: float = float("inf")):
        self.began, self.startup, self.cap, self.hard = time.monotonic(), startup, cap, hard
        self.burned_in: float | None = None

    def burn_in(self):
        if self.burned_in is None:
            self.burned_in = time.monotonic()

    def deadline(self) -> float:
        end = self.began + self.startup if self.burned_in is None else self.burned_in + self.cap
        return min(end, self.hard)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline()


class Run:
    """A script in a subprocess (a session and process group of its own, killed with the check), its output lines
    timestamped as they arrive.

    Reads the scripts' progress lines ("step 1200/1000000  SPS ..."), evaluation lines ("step 5000: eval return
    312.4 +- 20.1"; the kitchen's "step 5000: eval completion rate 50.0% (light switch 1/2)") and pytest -v's
    outcome lines ("tests/x.py::test_a PASSED").
    """

    live: set = set()  # runs to stop if the check itself is stopped

    def __init__(self, name: str, cmd: list[str], env: dict, log: Log, cwd: Path):
        self.name, self.cmd, self.log = name, [str(c) for c in cmd], log
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(os.getpid()), *self.cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        log.write(f"[{name}] $ {subprocess.list2cmdline(self.cmd)}   (pid {self.proc.pid}, in {cwd})")
        self.progress: list[tuple[float, int]] = []  # (seconds since start, step)
        self.evals: list[dict] = []
        self.cases: list[dict] = []
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
                entry = {
                    "step": int(m.group(1)),
                    "return": float(m.group(2)),
                    "std": float(m.group(3)),
                    "seconds": round(now, 1),
                }
                if g := GOALS.search(m.group(4)):
                    entry["goals_reached"] = int(g.group(1))
                self.evals.append(entry)
            elif m := KITCHEN_EVAL.match(line):
                successes = {
                    s.group(1): [int(s.group(2)), int(s.group(3))] for s in map(SUCCESSES.match, m.group(3).split(", ")) if s
                }
                self.evals.append(
                    {
                        "step": int(m.group(1)),
                        "completion_pct": float(m.group(2)),
                        "successes": successes,
                        "seconds": round(now, 1),
                    }
                )
            elif m := CASE.match(line):
                self.cases.append({"test": m.group(1), "outcome": m.group(2).lower(), "seconds": None, "message": ""})

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

    def signal_group(self, sig: int):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = GRACE, first: int = signal.SIGTERM):
        stop_runs([self], grace, first)

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
        return {"sps": (sb - sa) / (tb - ta), "steps": sb - sa, "seconds": round(tb - ta, 2), "from_step": sa, "to_step": sb}

    def failure(self) -> str | None:
        """Its exit status and last lines, if it ended by itself with an error."""
        code = self.proc.poll()
        if code in (None, 0) or self.stopped:
            return None
        errors = [line.strip() for line in self.tail if ERROR.match(line.strip())][-2:]
        return f"exit status {code}" + "".join(f"\n{e}" for e in errors) + "\nlast lines:\n" + "\n".join(list(self.tail)[-12:])


def stop_runs(runs: list[Run], grace: float = GRACE, first: int = signal.SIGTERM):
    """Stop runs together: `first` to every process group at once, SIGKILL to every group after one common grace
    (also to what a run's own children left behind)."""
    live = [r for r in runs if r.running()]
    for r in live:
        r.stopped = True
        r.signal_group(first)
    deadline = time.monotonic() + grace
    for r in live:
        try:
            r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for r in live:
        r.signal_group(signal.SIGKILL)
    for r in runs:
        try:
            r.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        r.reader.join(timeout=10)
        Run.live.discard(r)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container or taskset may give it fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def without_compiler(mode: str) -> str:
    """The mode to run where torch.compile cannot work: compile+cudagraphs -> cudagraphs, compile -> eager."""
    return {"compile+cudagraphs": "cudagraphs", "compile": "eager"}.get(mode, mode)


COMPILE_PROBE = r"""
import sys, torch
x = torch.arange(8.0, device=sys.argv[1])
f = torch.compile(lambda x: torch.sin(x) * 2.0 + 1.0)
assert torch.allclose(f(x), torch.sin(x) * 2.0 + 1.0)
print("torch.compile works")
"""


def compiler_works(env: dict, device: str, log: Log, timeout: float = 300) -> str | None:
    """None if a tiny torch.compile runs on `device` in a subprocess with env; else why not, in one line."""
    cmd = [sys.executable, "-c", COMPILE_PROBE, device]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"a tiny torch.compile on {device} took more than {timeout:.0f} s"
    log.write(f"[compiler probe] $ python -c COMPILE_PROBE {device}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR.match(line)]
    return (errors or lines or [f"exit status {proc.returncode}"])[-1][:300]


# The MPS daemon is a daemon: it outlives the check unless told to quit. This guard holds the read end of a pipe
# from the check and sends the daemon `quit` when the pipe closes, which it does when the check ends in any way.
MPS_GUARD = r"""
import subprocess, sys
sys.stdin.read()  # returns at the check's end, however it ends
subprocess.run([sys.argv[1]], input="quit\n", text=True, capture_output=True, timeout=60)
"""


def start_mps(control: str, env: dict, log: Log) -> tuple[subprocess.Popen, str | None]:
    """Start the guard, then the daemon (so that no moment has a daemon without a guard); (guard, error or None)."""
    guard = subprocess.Popen(
        [sys.executable, "-c", MPS_GUARD, control],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    with tempfile.TemporaryFile("w+") as said:  # not a pipe: the daemon may keep the descriptors it was given
        start = subprocess.run(
            [control, "-d"], env=env, stdin=subprocess.DEVNULL, stdout=said, stderr=subprocess.STDOUT, text=True, timeout=60
        )
        said.seek(0)
        text = said.read().strip()
    log.write(f"[mps] $ {control} -d: exit {start.returncode} {text}")
    return guard, None if start.returncode == 0 else (text or f"exit status {start.returncode}")[:300]


def stop_mps(guard: subprocess.Popen, log: Log):
    """The guard sends `quit` once its pipe closes; wait for it."""
    guard.stdin.close()
    try:
        guard.wait(timeout=90)
    except subprocess.TimeoutExpired:
        guard.kill()
    log.write(f"[mps] quit sent by the guard (exit {guard.returncode})")


EVENTS = r"""
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0}).Reload()
tags = set(acc.Tags()["scalars"])
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in sys.argv[2:] if tag in tags}))
"""


def read_scalars(run_dir: Path, tags: list[str], env: dict) -> dict | str:
    """{tag: [[step, value], ...]} of a run's tensorboard log, read in a subprocess (tensorboard may live only on
    the parts' PYTHONPATH); a string says why it could not be read."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", EVENTS, str(run_dir), *tags], env=env, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return "reading the tensorboard log took more than 300 s"
    if proc.returncode != 0:
        return "reading the tensorboard log failed: " + ((proc.stderr.strip().splitlines() or ["no message"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_atomically(path: Path, text: str):
    """A killed check leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Check:
    def __init__(
        self, args, profile: str, out: Path, work: Path, env: dict, machine: dict, log: Log, began: float | None = None
    ):
        self.args, self.profile, self.out, self.work, self.env, self.machine, self.log = (
            args,
            profile,
            out,
            work,
            env,
            machine,
            log,
        )
        self.dry = profile == "dry"
        self.sizes = {part: dict(size) if isinstance(size, dict) else size for part, size in PROFILES[profile].items()}
        for part, seconds in args.budget:
            if part == "total":
                self.sizes["total"] = seconds
            else:
                self.sizes[part]["cap"] = seconds
        if args.seed_counts:
            self.sizes["seeds"]["counts"] = args.seed_counts
        if args.learn_steps:
            self.sizes["learn"]["total"] = args.learn_steps
        self.began = time.monotonic() if began is None else began
        total = self.sizes["total"]
        self.hard = self.began + total - RESERVE if total else float("inf")  # no part passes it
        self.run_mode = args.run_mode or ("eager" if self.dry else "compile+cudagraphs")
        self.device_flags = ["--no-cuda"] if self.dry else []
        self.no_compiler: str | None = None  # why torch.compile cannot work here, once the probe said so
        self.part_started = self.began
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

    def make_clock(self, size: dict) -> Clock:
        return Clock(size.get("startup", 0), size["cap"], self.hard)

    def budget_of(self, part: str) -> dict:
        size = self.sizes[part]
        return {"budget_s": size["cap"], "startup_s": size.get("startup", 0)}

    def update(self, part: str, partial: dict):
        """What a running part has measured so far, written at once."""
        self.results["parts"][part] = {
            **partial,
            "status": "running",
            "wall_s": round(time.monotonic() - self.part_started, 1),
            **self.budget_of(part),
        }
        self.write()

    @staticmethod
    def wait_while(busy, clock: Clock, tick=None) -> bool:
        """Poll while busy(): tick() each time, then stop if the clock has run out. True if busy() ended first."""
        while busy():
            if tick:
                tick()
            if clock.expired():
                return False
            time.sleep(0.2)
        return True

    def speed_runs(self, size: dict) -> list[tuple[str, str, bool]]:
        runs = []
        for env_id, mode, with_sps in size["runs"]:
            mode = without_compiler(mode) if self.no_compiler else mode
            if "cudagraphs" in mode and self.dry or any(r[:2] == (env_id, mode) for r in runs):
                continue
            runs.append((env_id, mode, with_sps))
        return runs

    # ----- before the parts -----
    def check_compiler(self):
        """A tiny torch.compile where the parts will compile; without a compiler, the modes that need none."""
        parts = self.args.parts
        modes = [m for _, m, _ in self.speed_runs(self.sizes["speed"])] if "speed" in parts else []
        if set(parts) & {"seeds", "learn", "multigoal", "mps", "kitchen"}:
            modes.append(self.run_mode)
        compiles = any("compile" in m for m in modes) or ("tests" in parts and not self.dry)
        if not compiles:
            return
        device = "cpu" if self.dry else "cuda"
        self.say(f"checking that torch.compile works on {device}")
        why = compiler_works(self.child_env(), device, self.log)
        self.results["compiler"] = {"device": device, "works": why is None, "note": why or ""}
        if why is not None:
            self.no_compiler = why
            self.run_mode = without_compiler(self.run_mode)
            self.results["run_mode"] = self.run_mode
            self.say(
                f"torch.compile does not work here ({why}): running only the modes that need no compiler (eager, cudagraphs)"
            )
        self.write()

    def warm_up(self):
        """Compile fmer_continuous.py once per env, untimed, into the cache folder the parts share."""
        parts, size = self.args.parts, self.sizes["warmup"]
        envs = [env for env, _, _ in self.speed_runs(self.sizes["speed"])] if "speed" in parts else []
        envs += [self.sizes[p]["env"] for p in ("seeds", "mps", "learn") if p in parts and "env" in self.sizes[p]]
        envs = list(dict.fromkeys(envs))
        modes = [m for _, m, _ in self.speed_runs(self.sizes["speed"])] if "speed" in parts else []
        if set(parts) & {"seeds", "mps", "learn"}:
            modes.append(self.run_mode)
        compiles = any("compile" in m for m in modes)
        if not envs or not (compiles or self.dry) or time.monotonic() >= self.hard:
            why = "nothing to compile" if envs else "no part that it would warm"
            why = "the check's time is spent" if time.monotonic() >= self.hard else why
            self.results["warmup"] = {"status": "skipped", "note": why}
            return
        mode = "compile" if compiles else "eager"
        note = "" if compiles else "no mode here compiles: the warm-up runs eagerly, which checks its commands only"
        total = size["learning_starts"] + size["steps"]
        self.say(f"warm-up: {', '.join(envs)} in mode {mode}, {size['cap']:.0f} s at most")
        runs = []
        for env_id in envs:
            cmd = [
                sys.executable,
                self.script("fmer_continuous.py"),
                "--env-id",
                env_id,
                "--seed",
                1,
                "--exp-name",
                "gpu_check_warmup",
                "--total-timesteps",
                total,
                "--buffer-size",
                total,
                "--learning-starts",
                size["learning_starts"],
                "--eval-frequency",
                NEVER,
                "--eval-episodes",
                1,
                *MODES[mode],
                *self.device_flags,
                *size["extra"],
            ]
            runs.append(Run(f"warm-up {env_id}", cmd, self.child_env(), self.log, self.rundir(f"warmup_{env_id}")))
        clock, ends = Clock(0, size["cap"], self.hard), {}
        clock.burn_in()

        def note_ends():
            ends.update({r.name: time.monotonic() for r in runs if r.name not in ends and not r.running()})

        ended = self.wait_while(lambda: any(r.running() for r in runs), clock, note_ends)
        note_ends()
        if not ended:
            stop_runs(runs)
        each = [
            {
                "env_id": env_id,
                "seconds": round(ends.get(r.name, time.monotonic()) - r.start, 1),
                "status": "cut" if r.stopped else ("ok" if r.proc.returncode == 0 else "failed"),
                "note": r.failure() or "",
            }
            for env_id, r in zip(envs, runs)
        ]
        status = "ok" if all(e["status"] == "ok" for e in each) else ("cut" if not ended else "failed")
        self.results["warmup"] = {
            "status": status,
            "mode": mode,
            "wall_s": round(time.monotonic() - clock.began, 1),
            "budget_s": size["cap"],
            "runs": each,
            "note": note,
            "cache": self.env.get("TORCHINDUCTOR_CACHE_DIR", ""),
        }
        self.write()

    # ----- parts -----
    def pytest_args(self, size: dict) -> list[str]:
        args = list(size["pytest"])
        if self.no_compiler:  # leave out the tests that compile
            if "-k" in args:
                i = args.index("-k") + 1
                args[i] = f"({args[i]}) and not compile"
            else:
                args += ["-k", "not compile"]
        return args

    def part_tests(self, size: dict, clock: Clock) -> dict:
        clock.burn_in()  # nothing to leave out: its time starts now
        junit = self.work / "junit.xml"
        junit.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-rA",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *self.pytest_args(size),
        ]
        fixed = {"command": subprocess.list2cmdline(cmd)}
        run = Run("tests", cmd, self.child_env(), self.log, ROOT)
        shown = [0]

        def tick():  # each test's outcome as it comes
            if len(run.cases) != shown[0]:
                shown[0] = len(run.cases)
                self.update("tests", {**fixed, "cases": list(run.cases), "counts": count_cases(run.cases)})

        ended = self.wait_while(run.running, clock, tick)
        if ended:
            run.wait(time.monotonic() + 10)
        else:
            stop_runs([run], first=signal.SIGINT)  # pytest writes its junit file on SIGINT, not on SIGTERM
        cases = junit_cases(junit) if junit.exists() else list(run.cases)
        code = run.proc.returncode
        if not ended:
            status = "cut"
        elif code == 0 and cases:
            status = "ok"
        else:
            status = "failed"
        note = (
            ""
            if code in (0, None)
            else f"pytest exit status {code}"
            + (" (no test matched)" if code == 5 else "")
            + "\n"
            + "\n".join(list(run.tail)[-5:])
        )
        if not ended:
            note = "cut at the part's budget (pytest stopped with SIGINT): the tests that had finished are listed\n" + note
        return {**fixed, "status": status, "counts": count_cases(cases), "cases": cases, "note": note.strip()}

    def part_speed(self, size: dict, clock: Clock) -> dict:
        rows, status, notes = [], "ok", []
        fixed = {
            "command": f"python benchmark/speed.py --env-id ENV --modes MODE --iters {size['iters']} "
            f"--warmup {size['warmup']} {'--parts' if size['parts'] else '--no-parts'} "
            f"--learning-starts {size['learning_starts']} --burn-in {size['burn_in']} "
            f"--sps-steps {size['sps_steps']} " + " ".join(self.device_flags + size["extra"])
        }
        for env_id, mode, with_sps in self.speed_runs(size):
            if clock.expired():
                status = worse(status, "cut")
                notes.append(f"{env_id} {mode}: not run (budget spent)")
                continue
            out = self.work / f"speed_{env_id}_{mode}.json"
            out.unlink(missing_ok=True)
            cmd = [
                sys.executable,
                self.script("benchmark/speed.py"),
                "--env-id",
                env_id,
                "--modes",
                mode,
                "--iters",
                size["iters"],
                "--warmup",
                size["warmup"],
                "--parts" if size["parts"] else "--no-parts",
                "--sps-steps",
                size["sps_steps"] if with_sps else 0,
                "--burn-in",
                size["burn_in"],
                "--learning-starts",
                size["learning_starts"],
                "--json-output",
                out,
                *self.device_flags,
                *size["extra"],
            ]
            self.say(f"speed: {env_id} {mode}")
            run = Run(f"speed {env_id} {mode}", cmd, self.child_env(), self.log, self.rundir("speed"))
            seen = [None]

            def measured():  # this run's rows so far: speed.py rewrites its JSON after each measurement
                try:
                    raw = json.loads(out.read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    return []
                meta = {k: v for k, v in raw.items() if k != "rows"}
                return [{"env_id": env_id, **row, "meta": meta} for row in raw["rows"]]

            def tick():
                stamp = out.stat().st_mtime_ns if out.exists() else None
                if stamp != seen[0]:
                    seen[0] = stamp
                    got = measured()
                    if got:
                        clock.burn_in()  # the part's first measurement: imports and compilation are behind it
                    self.update("speed", {**fixed, "rows": rows + got, "notes": notes})

            ended = self.wait_while(run.running, clock, tick)
            if ended:
                run.wait(time.monotonic() + 10)
            else:
                stop_runs([run])
            got = measured()
            for row in got:
                if with_sps and "sps" not in row:
                    row.update(sps=None, sps_note="cut" if not ended else "failed")
            rows += got
            if not ended:
                status = worse(status, "cut")
                notes.append(f"{env_id} {mode}: cut at the part's budget" + ("; what it had measured is kept" if got else ""))
            elif run.proc.returncode != 0 or not got:
                status = "failed"
                notes.append(f"{env_id} {mode}: " + (run.failure() or "no output"))
            self.update("speed", {**fixed, "rows": rows, "notes": notes})
        return {**fixed, "status": status, "rows": rows, "notes": notes}

    def seeds_command(self, size: dict, seed, tag: str) -> list:
        total = size["learning_starts"] + size["burn_in"] + size["steps"]
        return [
            sys.executable,
            self.script("fmer_continuous.py"),
            "--env-id",
            size["env"],
            "--seed",
            seed,
            "--exp-name",
            f"gpu_check_{tag}",
            "--total-timesteps",
            total,
            "--buffer-size",
            total,
            "--learning-starts",
            size["learning_starts"],
            "--eval-frequency",
            NEVER,
            "--eval-episodes",
            1,
            "--progress-seconds",
            0,
            *MODES[self.run_mode],
            *self.device_flags,
            *size["extra"],
        ]

    def side_by_side(self, n: int, size: dict, clock: Clock, tag: str, extra_env: dict | None = None) -> dict:
        """n fmer_continuous.py runs at once; SPS over a common window after every run's burn-in."""
        burn_step = size["learning_starts"] + size["burn_in"]
        # the caller's OMP_NUM_THREADS if set, else the cores shared out (more threads than free cores stall torch)
        threads = int(self.env.get("OMP_NUM_THREADS") or max(1, usable_cpus() // n))
        runs = [
            Run(
                f"{tag} {n}x seed {seed}",
                self.seeds_command(size, seed, f"{tag}{n}"),
                self.child_env(threads, extra_env),
                self.log,
                self.rundir(f"{tag}{n}"),
            )
            for seed in range(1, n + 1)
        ]
        level = {
            "processes": n,
            "threads_per_process": threads,
            "status": "ok",
            "note": "",
            "steps_budget": size["learning_starts"] + size["burn_in"] + size["steps"],
        }
        try:
            startup_end = time.monotonic() + size["startup"]
            self.wait_while(
                lambda: (
                    all(r.running() for r in runs) and min(r.step for r in runs) < burn_step and time.monotonic() < startup_end
                ),
                clock,
            )
            failed = [f"seed {i + 1}: {r.failure()}" for i, r in enumerate(runs) if r.failure()]
            if failed:
                level.update(status="failed", note="\n".join(failed))
                return level
            if min(r.step for r in runs) < burn_step:
                why = "the part's budget ran out" if clock.expired() else f"its startup of {size['startup']} s ran out"
                level.update(status="cut", note=f"not every run reached step {burn_step}: {why}")
                return level
            clock.burn_in()
            t0, gpu = time.monotonic(), []

            def window_open():  # until the window's length and at least 3 progress lines of every run in it
                done = time.monotonic() - t0 >= size["window"] and all(
                    sum(t >= t0 - r.start for t, _ in r.progress) >= 3 for r in runs
                )
                return not done and all(r.running() for r in runs)

            def sample_gpu():  # once, halfway
                if not gpu and time.monotonic() - t0 >= size["window"] / 2:
                    gpu.append(gpu_utilization())

            whole = self.wait_while(window_open, clock, sample_gpu)
            t1 = time.monotonic()
            failed = [f"seed {i + 1}: {r.failure()}" for i, r in enumerate(runs) if r.failure()]
            if failed:
                level.update(status="failed", note="\n".join(failed))
                return level
            rates = [r.rate(t0 - r.start, t1 - r.start) for r in runs]
            if any(rate is None for rate in rates):
                level.update(status="cut", note="a run logged fewer than 2 progress lines in the window")
                return level
            level.update(
                window_s=round(t1 - t0, 1),
                per_run_sps=[round(x["sps"], 1) for x in rates],
                aggregate_sps=round(sum(x["sps"] for x in rates), 1),
                seconds_to_burn_in=[r.seconds_to(burn_step) for r in runs],
                gpu_during_window=gpu[0] if gpu else None,
            )
            if not whole:
                level.update(status="cut", note="the part's budget ended the window early; its rates are kept")
            elif not all(r.running() for r in runs):
                level.update(note="a run reached its step budget before the window's end, which ended the window")
            return level
        finally:
            stop_runs(runs)

    def part_seeds(self, size: dict, clock: Clock, tag: str = "seeds", extra_env: dict | None = None) -> dict:
        levels, status = [], "ok"
        fixed = {
            "env_id": size["env"],
            "mode": self.run_mode,
            "learning_starts": size["learning_starts"],
            "burn_in": size["burn_in"],
            "window": size["window"],
            "command": "python fmer_continuous.py "
            + subprocess.list2cmdline([str(c) for c in self.seeds_command(size, "S", tag)[2:]]),
        }
        for n in size["counts"]:
            if clock.expired():
                levels.append({"processes": n, "status": "cut", "note": "not run (budget spent)"})
                status = worse(status, "cut")
                continue
            self.say(f"{tag}: {n} process(es) side by side")
            level = self.side_by_side(n, size, clock, tag, extra_env)
            levels.append(level)
            status = worse(status, level["status"])
            self.update(tag, {**fixed, "levels": levels})
        return {**fixed, "status": status, "levels": levels}

    def part_mps(self, size: dict, clock: Clock) -> dict:
        if self.dry:
            return {"status": "skipped", "note": "CUDA MPS needs a GPU: not tried in the dry mode"}
        control = shutil.which("nvidia-cuda-mps-control")
        if control is None:
            return {"status": "skipped", "note": "nvidia-cuda-mps-control is not on this machine's PATH: MPS not measured"}
        pipe, logs = self.rundir("mps_pipe"), self.rundir("mps_log")
        mps_env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
        guard, error = start_mps(control, self.child_env(extra=mps_env), self.log)
        try:
            if error:
                return {"status": "failed", "note": f"starting the MPS daemon failed: {error}"}
            result = self.part_seeds(size, clock, tag="mps", extra_env=mps_env)
        finally:
            stop_mps(guard, self.log)
        result["note"] = f"MPS daemon {control}, pipe directory {pipe}, started and stopped by the check"
        return result

    def follow(self, run: Run, size: dict, clock: Clock, part: str, fixed: dict) -> tuple[bool, dict]:
        """Follow a learning run until it ends or the part's time is up (stopping it there), writing the report at
        each evaluation; whether it ended, and its status, steps, time to burn-in, SPS after it and evaluations."""
        burn_step = size["learning_starts"] + size["burn_in"]
        shown = [0]

        def summary():
            return {
                **fixed,
                "mode": self.run_mode,
                "total": size["total"],
                "reached_step": run.reached,
                "evals": list(run.evals),
                "seconds_to_burn_in": run.seconds_to(burn_step),
                "sps_after_burn_in": run.rate(from_step=burn_step),
            }

        def tick():
            if run.step >= burn_step:
                clock.burn_in()
            if len(run.evals) != shown[0]:
                shown[0] = len(run.evals)
                self.update(part, summary())

        ended = self.wait_while(run.running, clock, tick)
        if ended:
            run.wait(time.monotonic() + 10)
        else:
            stop_runs([run])
        status = "cut" if not ended else ("ok" if run.proc.returncode == 0 else "failed")
        return ended, {**summary(), "status": status}

    def part_learn(self, size: dict, clock: Clock) -> dict:
        cmd = [
            sys.executable,
            self.script("fmer_continuous.py"),
            "--env-id",
            size["env"],
            "--seed",
            1,
            "--exp-name",
            "gpu_check_learn",
            "--total-timesteps",
            size["total"],
            "--learning-starts",
            size["learning_starts"],
            "--eval-frequency",
            size["eval_every"],
            "--eval-episodes",
            size["eval_episodes"],
            "--progress-seconds",
            0,
            *MODES[self.run_mode],
            *self.device_flags,
            *size["extra"],
        ]
        run = Run("learn", cmd, self.child_env(), self.log, self.rundir("learn"))
        fixed = {"env_id": size["env"], "command": "python fmer_continuous.py " + subprocess.list2cmdline(run.cmd[2:])}
        ended, report = self.follow(run, size, clock, "learn", fixed)
        return {**report, "note": run.failure() or ("" if ended else "cut at the part's budget; evaluations so far kept")}

    def part_multigoal(self, size: dict, clock: Clock) -> dict:
        cmd = [
            sys.executable,
            self.script("fmer_multigoal.py"),
            "--seed",
            1,
            "--total-timesteps",
            size["total"],
            "--learning-starts",
            size["learning_starts"],
            "--progress-seconds",
            0,
            *MODES[self.run_mode],
            *self.device_flags,
            *size["extra"],
        ]
        run = Run("multigoal", cmd, self.child_env(), self.log, self.rundir("multigoal"))
        fixed = {"command": "python fmer_multigoal.py " + subprocess.list2cmdline(run.cmd[2:])}
        ended, report = self.follow(run, size, clock, "multigoal", fixed)
        return {**report, "note": run.failure() or ("" if ended else "cut at the part's budget")}

    def part_kitchen(self, size: dict, clock: Clock) -> dict:
        """fmer_kitchen.py on the light switch (N = 1) for as many steps as the budget allows."""
        total = size["total"]
        cmd = [
            sys.executable,
            self.script("fmer_kitchen.py"),
            "--num-tasks",
            1,
            "--seed",
            1,
            "--exp-name",
            "gpu_check_kitchen",
            "--total-timesteps",
            total,
            "--buffer-size",
            total,
            "--learning-starts",
            size["learning_starts"],
            "--eval-frequency",
            size["eval_every"],
            "--eval-episodes",
            size["eval_episodes"],
            "--progress-seconds",
            0,
            *MODES[self.run_mode],
            *self.device_flags,
            *size["extra"],
        ]
        folder = self.rundir("kitchen")
        run = Run("kitchen", cmd, self.child_env(), self.log, folder)
        fixed = {"task": "light switch", "command": "python fmer_kitchen.py " + subprocess.list2cmdline(run.cmd[2:])}
        ended, report = self.follow(run, size, clock, "kitchen", fixed)
        burned = run.step >= size["learning_starts"] + size["burn_in"]
        if ended:
            note = run.failure() or ""
        elif burned:  # what this part is for: the budget, not the step count, ends it
            report["status"], note = "ok", "stopped at its budget, as planned"
        else:
            note = "cut before its burn-in"
        report["note"] = note
        # Training episodes are in its tensorboard log only: charts/tasks_completed at each episode's end. With one
        # task that is the light switch's 0/1, and an episode ends as soon as its one task is done.
        run_dirs = sorted((folder / "runs").glob("*"), key=lambda p: p.stat().st_mtime) if (folder / "runs").is_dir() else []
        scalars = read_scalars(run_dirs[-1], ["charts/tasks_completed"], self.child_env()) if run_dirs else "no run folder"
        if isinstance(scalars, str):
            report["training"] = {"note": scalars}
        else:
            ends = scalars.get("charts/tasks_completed", [])
            done = [step for step, value in ends if value > 0]
            report["training"] = {"episodes": len(ends), "completed": len(done), "first_step": done[0] if done else None}
        evals = [e for e in report["evals"] if "successes" in e]
        report["first_eval_with_completion"] = next((e["step"] for e in evals if e["completion_pct"] > 0), None)
        return report

    def run_part(self, part: str):
        size = self.sizes[part]
        self.part_started = time.monotonic()
        if self.part_started >= self.hard:
            self.results["parts"][part] = {
                "status": "cut",
                "wall_s": 0.0,
                **self.budget_of(part),
                "note": f"not run: the check's total of {self.sizes['total']:.0f} s was spent",
            }
            self.say(f"part {part}: not run, the check's time is spent")
            self.write()
            return
        clock = self.make_clock(size)
        startup = size.get("startup", 0)
        self.say(
            f"part {part}: budget " + (f"{startup:.0f} s to its burn-in, then " if startup else "") + f"{size['cap']:.0f} s"
        )
        self.update(part, {})
        result = None
        try:
            result = getattr(self, f"part_{part}")(size, clock)
        except Exception:  # a bug here must not cost the other parts
            result = {"status": "failed", "note": "gpu_check itself failed:\n" + traceback.format_exc()}
        finally:
            if result is None:  # stopped from outside (Ctrl-C, SIGTERM): what it had measured, marked so
                result = {
                    **self.results["parts"][part],
                    "status": "interrupted",
                    "note": "the check was stopped during this part",
                }
            result.update(wall_s=round(time.monotonic() - self.part_started, 1), **self.budget_of(part))
            self.results["parts"][part] = result
            self.say(f"part {part}: {result['status']} after {result['wall_s']} s")
            self.write()

    def write(self):
        self.results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        write_atomically(self.out / "results.json", json.dumps(self.results, indent=1) + "\n")
        write_atomically(self.out / "report.md", render(self.results) + "\n")


def count_cases(cases: list[dict]) -> dict:
    return {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}


def junit_cases(junit: Path) -> list[dict]:
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not case.get("name"):  # what pytest writes for the test that SIGINT interrupted
            continue
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = {"failure": "failed"}.get(child.tag, child.tag), child.get("message", "")
        cases.append(
            {
                "test": f"{case.get('classname', '')}::{case.get('name', '')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                "message": message.splitlines()[0][:200] if message else "",
            }
        )
    return cases


def worse(a: str, b: str) -> str:
    """The status of a part with two outcomes: failed over cut over ok."""
    order = ("ok", "cut", "failed")
    return max(a, b, key=order.index)


def gpu_utilization() -> dict | None:
    """GPU load and memory in use, from nvidia-smi, at one instant."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        util, used, total = [float(x) for x in out.splitlines()[0].split(",")]
        return {"utilization_pct": util, "memory_used_mib": used, "memory_total_mib": total}
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


PROBE = r"""
import importlib.metadata, importlib.util, json, os, platform, sys
names = sys.argv[1:]
cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
out = {"python": platform.python_version(), "executable": sys.executable, "cpus": cpus, "cpus_machine": os.cpu_count(),
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
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "torch", *modules], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CheckError(f"cannot inspect this Python ({sys.executable}): {last}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
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
    plan = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--report",
        str(report),
        "-r",
        str(requirements),
    ]
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
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--target",
        str(site),
        *wheels,
    ]
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
    m = results.get("machine", {})
    dry = results.get("profile") == "dry"
    lines = [f"# FMER GPU check, {results.get('started', '')[:10]}", ""]
    if dry:
        lines += [
            "**No GPU was measured.** This is the CPU dry mode: every part ran at tiny sizes on the CPU to check "
            "the harness. Its numbers say nothing about GPU speed; the CUDA-only tests were skipped.",
            "",
        ]
    gpu = (
        f"{m.get('gpu')} ({m.get('gpu_count')} visible, compute capability {m.get('capability')}, "
        f"{m.get('gpu_memory_gib')} GiB)"
        if m.get("cuda")
        else "none visible to torch"
    )
    compiler = results.get("compiler")
    warm = results.get("warmup")
    lines += [
        f"- command: `{results.get('command', '')}`",
        f"- profile: {results.get('profile')}; parts: {', '.join(results.get('parts_asked', []))}; "
        f"fast mode of the runs: {results.get('run_mode')}"
        + (f"; the check's deadline: {results['total_s']:.0f} s" if results.get("total_s") else ""),
        f"- GPU: {gpu}" + (f"; nvidia-smi: {m['nvidia_smi']}" if m.get("nvidia_smi") else ""),
        f"- host: {results.get('host')}, {m.get('cpus')} CPUs usable by the check (of {m.get('cpus_machine')}); "
        f"Python {m.get('python')} ({m.get('executable')})",
        f"- torch {m.get('torch')} (CUDA {m.get('torch_cuda')}); "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if k != "torch"),
        f"- wheelhouse: {results.get('wheelhouse')}",
    ]
    if compiler:
        lines.append(
            f"- torch.compile on {compiler['device']}: "
            + (
                "works"
                if compiler["works"]
                else f"**does not work** ({compiler['note']}); only the modes that need no "
                "compiler were run (eager, cudagraphs)"
            )
        )
    if warm:
        each = ", ".join(f"{w['env_id']} {w['status']} in {w['seconds']} s" for w in warm.get("runs", []))
        lines.append(
            f"- warm-up ({warm.get('mode', '')}, untimed, into the parts' compile cache): {warm['status']}"
            + (f" after {warm['wall_s']} s of {warm['budget_s']}: {each}" if "wall_s" in warm else "")
            + (f"; {warm['note']}" if warm.get("note") else "")
        )
        lines += [f"  - {w['env_id']}: {w['note'].splitlines()[0]}" for w in warm.get("runs", []) if w.get("note")]
    lines += [f"- started {results.get('started')}, last written {results.get('finished', '')}", ""]
    for error in results.get("errors", []):
        lines += ["gpu_check itself failed before the parts:", "```", *error.splitlines(), "```", ""]
    lines += ["| part | status | wall (s) | budget (s): to its burn-in + after it |", "| --- | --- | ---: | ---: |"]
    for part, r in results["parts"].items():
        budget = r.get("budget_s", "—")
        if r.get("startup_s"):
            budget = f"{r['startup_s']:g} + {budget:g}"
        lines.append(f"| {part} | {r['status']} | {fmt(r.get('wall_s'))} | {budget} |")
    lines.append("")
    for part, r in results["parts"].items():
        if r["status"] == "skipped":
            lines += [f"## {part}", "", f"Skipped: {r.get('note', '')}", ""]
        elif r["status"] == "running" and "command" not in r:
            lines += [f"## {part}", "", "Running; nothing measured yet.", ""]
        elif "wall_s" in r:
            lines += RENDER[part](r) + [""]
    return "\n".join(lines).rstrip()


def note_lines(r: dict) -> list[str]:
    notes = [n for n in [r.get("note"), *r.get("notes", [])] if n]
    return ["", "Notes:", "```", *[line for n in notes for line in n.splitlines()], "```"] if notes else []


def running(r: dict) -> list[str]:
    return ["", "*Still running when this was written: what it has measured so far.*"] if r["status"] == "running" else []


def render_tests(r):
    c = r.get("counts", {})
    out = [
        "## tests",
        "",
        f"`{r.get('command', '')}` (repository root): {c.get('passed', 0)} passed, "
        f"{c.get('failed', 0)} failed, {c.get('error', 0)} errors, {c.get('skipped', 0)} skipped",
        "",
    ]
    if r.get("cases"):
        out += ["| test | outcome | s | message |", "| --- | --- | ---: | --- |"]
        out += [
            f"| {c['test']} | {c['outcome']} | {fmt(c['seconds'])} | {c['message'].replace('|', '/')} |" for c in r["cases"]
        ]
    return out + running(r) + note_lines(r)


def render_speed(r):
    out = [
        "## speed",
        "",
        f"`{r.get('command', '')}`, one process per (env, mode). update: one critic plus one "
        "actor update, median of --iters after --warmup calls (compilation and capture left out); x floor: "
        "update time over the FLOP floor; SPS: a real training run, over the steps after its burn-in.",
        "",
    ]
    if r.get("rows"):
        out += [
            "| env | mode | update (ms) | updates/s | x FLOP floor | FLOP floor (ms) | SPS | SPS window (steps) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in r["rows"]:
            meta = row["meta"]
            window = meta.get("sps_window_steps")
            if row.get("sps") is not None and window:
                window = "-".join(map(str, window))
            else:
                window = row.get("sps_note") or ("running" if "sps" not in row else "not run")
            out.append(
                f"| {row['env_id']} | {row['mode']} | {row['update'] * 1e3:.2f} | {1 / row['update']:.1f} | "
                f"{row['floor_ratio']:.2f} | {meta['floor_s'] * 1e3:.2f} | {fmt(row.get('sps'))} | {window} |"
            )
        if any("parts" in row for row in r["rows"]):
            names = ["sampler", "scoring", "critic", "wcfm", "divergence"]
            out += [
                "",
                "| env | mode | " + " | ".join(f"{n} (ms)" for n in names) + " |",
                "| --- | --- | " + " | ".join("---:" for _ in names) + " |",
            ]
            out += [
                f"| {row['env_id']} | {row['mode']} | " + " | ".join(f"{row['parts'][n] * 1e3:.2f}" for n in names) + " |"
                for row in r["rows"]
                if "parts" in row
            ]
        meta = r["rows"][0]["meta"]
        out += ["", f"Shapes: B={meta['B']}, K={meta['K']}, N={meta['N']}, hidden={meta['hidden']}; device: {meta['device']}."]
    return out + running(r) + note_lines(r)


def render_levels(r, title):
    out = [
        f"## {title}",
        "",
        f"`{r.get('command', '')}` for seeds 1..n at once, each in a process of its own on "
        f"the one device. SPS per run: its env steps over a common window of at least {r.get('window')} s and 3 "
        f"progress lines of every run, that starts once every run has passed step "
        f"{r.get('learning_starts', 0) + r.get('burn_in', 0)} (so compilation and graph capture are left out); "
        "aggregate: their sum. Each run has a step budget, and a replay buffer of as many rows.",
        "",
    ]
    if r.get("levels"):
        out += [
            "| processes | torch threads each | status | aggregate SPS | per-run SPS | start to burn-in end (s) | "
            "GPU load, memory | window (s) |",
            "| ---: | ---: | --- | ---: | --- | --- | --- | ---: |",
        ]
        for lv in r["levels"]:
            g = lv.get("gpu_during_window")
            gtext = f"{g['utilization_pct']:.0f}%, {g['memory_used_mib']:.0f} MiB" if g else "—"
            out.append(
                f"| {lv['processes']} | {lv.get('threads_per_process', '—')} | {lv['status']} | "
                f"{fmt(lv.get('aggregate_sps'))} | "
                f"{', '.join(fmt(x) for x in lv.get('per_run_sps', [])) or '—'} | "
                f"{', '.join(fmt(x) for x in lv.get('seconds_to_burn_in', [])) or '—'} | {gtext} | "
                f"{fmt(lv.get('window_s'))} |"
            )
        for lv in r["levels"]:
            if lv.get("note"):
                out += ["", f"{lv['processes']} processes: {lv['status']}", "```", *lv["note"].splitlines(), "```"]
    return out + running(r) + note_lines(r)


def sps_lines(r) -> list[str]:
    sps = r.get("sps_after_burn_in")
    if not sps:
        return []
    return [
        f"Steps per second from step {sps['from_step']} to {sps['to_step']}: {sps['sps']:.1f} (evaluations "
        f"included); from the start to the end of the burn-in (startup, random steps, compilation, "
        f"capture): {fmt(r.get('seconds_to_burn_in'))} s.",
        "",
    ]


def render_evals(r, title, what):
    out = [
        f"## {title}",
        "",
        f"`{r.get('command', '')}`: reached step {r.get('reached_step')} of {r.get('total')} "
        f"in {fmt(r.get('wall_s'))} s." + (f" {what}" if r.get("evals") else ""),
        "",
    ]
    out += sps_lines(r)
    if r.get("evals"):
        goals = any("goals_reached" in e for e in r["evals"])
        out += [
            "| step | eval return | +- | s since start |" + (" goals reached |" if goals else ""),
            "| ---: | ---: | ---: | ---: |" + (" ---: |" if goals else ""),
        ]
        out += [
            f"| {e['step']} | {e['return']:.1f} | {e['std']:.1f} | {e['seconds']} |"
            + (f" {e.get('goals_reached', '—')} |" if goals else "")
            for e in r["evals"]
        ]
    return out + running(r) + note_lines(r)


def render_kitchen(r):
    task = r.get("task", "light switch")
    stopped = "stopped at its budget" in (r.get("note") or "")
    out = [
        "## kitchen",
        "",
        f"`{r.get('command', '')}`: reached step {r.get('reached_step')} of {r.get('total')} "
        f"in {fmt(r.get('wall_s'))} s" + (", as far as its budget allowed." if stopped else "."),
        "",
    ]
    out += sps_lines(r)
    training = r.get("training")
    if training and "episodes" in training:
        first = training["first_step"]
        out += [
            f"Training episodes (tensorboard `charts/tasks_completed`): {training['episodes']} ended, the {task} "
            f"completed in {training['completed']}; "
            + (
                f"first at step {first} (a one-task episode ends on the step its task is done)."
                if first
                else "no step has completed it yet."
            ),
            "",
        ]
    elif training:
        out += [f"Training episodes: {training['note']}", ""]
    evals = r.get("evals", [])
    if evals:
        out += [f"| step | eval completion % | {task} | s since start |", "| ---: | ---: | ---: | ---: |"]
        out += [
            f"| {e['step']} | {e['completion_pct']:.1f} | {'/'.join(map(str, e['successes'].get(task, ['—'])))} | "
            f"{e['seconds']} |"
            for e in evals
        ]
        first = r.get("first_eval_with_completion")
        out += ["", f"First evaluation with a completion: {f'step {first}' if first else 'none'}."]
    return out + running(r) + note_lines(r)


RENDER = {
    "tests": render_tests,
    "speed": render_speed,
    "seeds": lambda r: render_levels(r, "seeds side by side"),
    "mps": lambda r: render_levels(r, "seeds side by side under CUDA MPS"),
    "learn": lambda r: render_evals(r, "learning run", "Evaluation returns (best-of-K policy):"),
    "multigoal": lambda r: render_evals(r, "multi-goal run", "Evaluations from the start state:"),
    "kitchen": render_kitchen,
}


def parse_args(argv):
    p = OneLineParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("out_dir", help="where report.md, results.json and log.txt go (created if missing)")
    p.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated parts, or all ({', '.join(PARTS)}); default {','.join(DEFAULT_PARTS)}",
    )
    p.add_argument("--full", action="store_true", help="the full sizes (each part up to 10 min on one H100)")
    p.add_argument("--dry", action="store_true", help="CPU dry mode: tiny sizes, no GPU measured")
    p.add_argument("--wheelhouse", help="install the packages this Python lacks from this folder (pip --no-index)")
    p.add_argument("--work-dir", help="scratch folder for the runs (default: a temporary folder, removed after)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (tensorboard runs, site)")
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="PART=SECONDS",
        help="override a part's budget (seconds after its burn-in), or warmup= or total= (the whole check)",
    )
    p.add_argument("--seed-counts", help="processes side by side in the seeds part, e.g. 1,2,4,8")
    p.add_argument("--learn-steps", type=int, help="total env steps of the learning run")
    p.add_argument(
        "--run-mode",
        choices=list(MODES),
        help="mode of the seeds, learn, multigoal, mps and kitchen runs (default: compile+cudagraphs; eager in the dry mode)",
    )
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
        if part not in (*PARTS, "warmup", "total") or not re.fullmatch(r"\d+(\.\d+)?", seconds) or float(seconds) <= 0:
            raise CheckError(f"--budget {item!r}: expected PART=SECONDS with PART in {', '.join(PARTS)}, warmup or total")
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
    began = time.monotonic()
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
    # One compile cache for every subprocess (the caller's, if set): the warm-up fills it, the parts read it.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "compile_cache" / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(work / "compile_cache" / "triton"))
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
            raise CheckError(
                f"missing Python packages: {', '.join(missing)}; install them, or give --wheelhouse DIR "
                "(benchmark/make_wheelhouse.py writes one)"
            )
        if not args.dry and not machine["cuda"]:
            raise CheckError(
                f"torch {machine['torch']} sees no CUDA GPU here (torch.cuda.is_available() is False); "
                "--dry runs the CPU dry mode, which measures no GPU"
            )
        profile = "dry" if args.dry else ("full" if args.full else "quick")
        check = Check(args, profile, out, work, env, machine, log, began)
        check.results.update(
            command="python benchmark/gpu_check.py " + subprocess.list2cmdline(argv),
            profile=profile,
            parts_asked=list(args.parts),
            run_mode=check.run_mode,
            machine=machine,
            started=started,
            host=f"{platform.node()} ({platform.machine()})",
            gpu_measured=not args.dry,
            wheelhouse_installed=installed,
            wheelhouse=(
                f"{args.wheelhouse}: installed " + (", ".join(installed) or "nothing (nothing was missing)")
                if args.wheelhouse
                else "not used"
            ),
            total_s=check.sizes["total"],
        )
        check.write()  # at once: a check killed in its first part still leaves its machine and command
        if args.dry:
            check.say("CPU dry mode: no GPU will be measured")
        for step in (check.check_compiler, check.warm_up):
            try:
                step()
            except Exception:  # a bug here must not cost the parts
                check.results.setdefault("errors", []).append(f"{step.__name__}: {traceback.format_exc()}")
                check.say(f"gpu_check itself failed in {step.__name__}; the parts run all the same")
                check.write()
        for part in args.parts:
            check.run_part(part)
    finally:
        stop_runs(list(Run.live), grace=5)
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report = (out / "report.md").read_text()
    print(report)
    statuses = {part: r["status"] for part, r in check.results["parts"].items()}
    bad = [p for p, s in statuses.items() if s in ("failed", "cut", "interrupted")]
    print(
        f"\ngpu_check: {sum(s == 'ok' for s in statuses.values())} ok, {len(bad)} failed or cut"
        + (f" ({', '.join(bad)})" if bad else "")
        + f", {sum(s == 'skipped' for s in statuses.values())} skipped"
        + ("; NO GPU WAS MEASURED (dry mode)" if args.dry else "")
        + f"; report: {out / 'report.md'}"
    )
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
