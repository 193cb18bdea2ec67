"""The GPU path of fmer_continuous.py checked in one command: the CUDA tests, the speed table, a short learning run.

    python benchmark/gpu_check.py gpu-report/                     # every part on the first CUDA device
    python benchmark/gpu_check.py gpu-report/ --parts speed,learn # some parts (tests, speed, learn)
    python benchmark/gpu_check.py dry-report/ --dry               # no GPU: every part at tiny sizes on the CPU

Parts, in this order:
  tests  the CUDA tests of tests/test_fmer_speed.py (-k on_cuda): --compile, --cudagraphs and both against eager,
         the same losses and weights for a fixed seed
  speed  benchmark/speed.py on Humanoid-v5 and Hopper-v5 in eager, compile and compile+cudagraphs: update ms,
         updates/s, x FLOP floor, and the SPS of a real training run after its burn-in
  learn  fmer_continuous.py on Hopper-v5 with --compile --cudagraphs, 15,000 steps (the first 5,000 random),
         evaluated every 5,000 steps over 5 episodes: the returns, its SPS after the burn-in, its wall time

OUT gets report.md, results.json (the same numbers, raw) and one log per part (each command and its output). Both
reports are written at the start and after every measurement (the tests, each speed row and SPS, each evaluation),
each to a temporary file renamed over the old one, so a check that is killed keeps what had finished and shows the
part it was in as "running". Every subprocess has a time limit (--timeout): past it, it gets SIGTERM (SIGKILL 15 s
later) and its part is "timed out". The dry mode runs every part on the CPU at tiny sizes, eager only, to check this
tool where there is no GPU; its report says that no GPU was measured.
Exit status: 0 when every part passed, 1 when one failed or timed out, 2 on bad input (one `error:` line).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "speed", "learn")
EVAL_LINE = re.compile(r"step (\d+): eval return (\S+) \+- (\S+)")  # the scripts' evaluation line
TINY = "--hidden-dim 32 --batch-size 32 --no-cuda"
SMALL_K_N = "--num-candidates 4 --ode-steps 2"  # the dry learning run's candidates and ODE steps (speed.py keeps its own)

# What the parts run on a GPU, and in the dry mode. Sized for about 5 minutes on one H100/H200 (an estimate: not yet
# run on a GPU). The measured windows are short (speed times 20 updates per mode and counts SPS over 500 steps after
# 1,000 random and 100 learning ones); most of the time goes to compiling, a cold torch.compile of the updates per
# network shape, which torch caches on disk for the later runs of the same shapes.
SIZES = {
    "gpu": {
        "envs": ["Humanoid-v5", "Hopper-v5"],
        "modes": ["eager", "compile", "compile+cudagraphs"],
        "speed": "--iters 20 --warmup 5 --no-parts --learning-starts 1000 --burn-in 100 --sps-steps 500".split(),
        "learn": "--compile --cudagraphs --learning-starts 5000 --eval-frequency 5000 --eval-episodes 5".split(),
        "learn_steps": 15_000,
        "sps_from": 5_500,  # learn's SPS: from 500 learning steps on (compilation and graph capture come before)
    },
    "dry": {
        "envs": ["Hopper-v5"],
        "modes": ["eager"],
        "speed": f"--iters 3 --warmup 1 --no-parts --learning-starts 64 --burn-in 16 --sps-steps 48 {TINY}".split(),
        "learn": f"--learning-starts 100 --eval-frequency 100 --eval-episodes 2 --log-frequency 10 {TINY} {SMALL_K_N}".split(),
        "learn_steps": 300,
        "sps_from": 150,
    },
}


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = fail  # bad input: one line, exit status 2 (argparse would print its usage too)
    parser.add_argument("out", help="folder for report.md, results.json and the logs (made if missing)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: tests, speed, learn (default: all)")
    parser.add_argument("--dry", action="store_true", help="no GPU: every part at tiny sizes on the CPU, to check this tool")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each subprocess may take (default 600)")
    parser.add_argument("--learn-steps", type=int, help="env steps of the learning run (default 15,000; dry: 300)")
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    for part in args.parts:
        if part not in PARTS:
            fail(f"unknown part {part!r} in --parts; choose from {', '.join(PARTS)}")
    if not args.parts:
        fail("--parts names no part; choose from tests, speed, learn")
    args.parts = [part for part in PARTS if part in args.parts]  # always in this order
    sizes = SIZES["dry" if args.dry else "gpu"]
    args.learn_steps = sizes["learn_steps"] if args.learn_steps is None else args.learn_steps
    if args.learn_steps <= sizes["sps_from"]:
        fail(f"--learn-steps must be above {sizes['sps_from']} (random steps, then the burn-in of its SPS)")
    if args.timeout <= 0:
        fail("--timeout must be positive")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        fail(f"{args.out} exists and is not a folder")
    return args


def write_atomically(path: Path, text: str):
    """A reader, or a kill, meets the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(cmd: list[str], log: Path, timeout: float, on_line=None, cwd: Path = ROOT) -> int | None:
    """Runs cmd with its output going to log, line by line to on_line too. Its exit status, or None if it timed out."""
    with open(log, "a") as f:
        print(f"$ {' '.join(cmd)}", file=f, flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timed_out = threading.Event()

        def stop():
            timed_out.set()
            proc.terminate()  # the scripts stop at the end of their step; speed.py's run dies with it
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

        timer = threading.Timer(timeout, stop)
        timer.start()
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if on_line:
                on_line(line.rstrip("\n"))
        proc.wait()
        timer.cancel()
        print(f"exit status {proc.returncode}" + (f" (stopped after {timeout:g} s)" if timed_out.is_set() else ""), file=f)
    return None if timed_out.is_set() else proc.returncode


def status(rc: int | None, ok: bool) -> str:
    return "timed out" if rc is None else "passed" if rc == 0 and ok else f"failed (exit status {rc})"


def tests_part(args, out: Path, part: dict, save):
    """The CUDA tests, with pytest's outcome per test (from its junit file)."""
    junit = out / "tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "tests/test_fmer_speed.py", "-k", "on_cuda", "-p", "no:cacheprovider"]
    part["command"] = " ".join(["python", *cmd[1:]])
    save()
    rc = run([*cmd, f"--junitxml={junit}"], out / "tests.log", args.timeout)
    part["tests"] = []
    for case in ET.parse(junit).iter("testcase") if junit.exists() else []:
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        part["tests"].append(
            {
                "name": case.get("name"),
                "outcome": "passed" if outcome is None else outcome.tag,
                "message": "" if outcome is None else " ".join(outcome.get("message", "").split())[:300].replace("|", "/"),
                "seconds": float(case.get("time", 0)),
            }
        )
    # on a GPU a skipped test is a failure (the test did not see the GPU); in the dry mode they skip, as they should
    wanted = ("passed", "skipped") if args.dry else ("passed",)
    return status(rc, bool(part["tests"]) and all(t["outcome"] in wanted for t in part["tests"]))


def speed_part(args, out: Path, part: dict, save):
    """speed.py per env; it rewrites its JSON after every measurement and then prints a line, which reloads it here."""
    sizes, rcs = SIZES["dry" if args.dry else "gpu"], []
    part["envs"] = {}
    for env_id in sizes["envs"]:
        raw = out / f"speed-{env_id}.json"
        raw.unlink(missing_ok=True)
        cmd = [sys.executable, "benchmark/speed.py", "--env-id", env_id, "--modes", *sizes["modes"], *sizes["speed"]]
        cmd += ["--json-output", str(raw), "--output", str(out / f"speed-{env_id}.md")]
        part.setdefault("commands", []).append(" ".join(["python", *cmd[1:]]))

        def reload(line=""):
            if raw.exists():
                part["envs"][env_id] = json.loads(raw.read_text())
                save()

        rcs.append(run(cmd, out / "speed.log", args.timeout, reload))
        reload()
    rows = [row for env in part["envs"].values() for row in env["rows"] if row.get("sps") is not None]
    complete = len(rows) == len(sizes["envs"]) * len(sizes["modes"])
    return status(None if None in rcs else next((rc for rc in rcs if rc != 0), 0), complete)


def sps_after(run_dir: Path, step: int) -> float | None:
    """The median of the run's charts/SPS (one value per logging window) from step on: evaluation windows left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    if "charts/SPS" not in events.Tags()["scalars"]:
        return None
    window = [e.value for e in events.Scalars("charts/SPS") if e.step >= step]
    return statistics.median(window) if window else None


def learn_part(args, out: Path, part: dict, save):
    """A short Hopper learning run in the fastest mode (eager in the dry mode), in OUT/learn/."""
    sizes, folder = SIZES["dry" if args.dry else "gpu"], out / "learn"
    shutil.rmtree(folder, ignore_errors=True)  # a check run again into OUT starts afresh
    folder.mkdir()
    cmd = [sys.executable, str(ROOT / "fmer_continuous.py"), "--env-id", "Hopper-v5", "--seed", "1"]
    cmd += ["--total-timesteps", str(args.learn_steps), *sizes["learn"]]
    part.update(command=" ".join(["python", "fmer_continuous.py", *cmd[2:]]), evals=[], sps_from=sizes["sps_from"])
    save()

    def evaluation(line):
        if match := EVAL_LINE.match(line):
            part["evals"].append([int(match[1]), float(match[2]), float(match[3])])
            save()

    start = time.monotonic()
    rc = run(cmd, out / "learn.log", args.timeout, evaluation, cwd=folder)
    part["seconds_total"] = time.monotonic() - start
    run_dirs = sorted((folder / "runs").glob("*"))
    part["run_dir"] = str(run_dirs[-1].relative_to(out)) if run_dirs else None
    part["sps"] = sps_after(run_dirs[-1], sizes["sps_from"]) if run_dirs else None
    return status(rc, bool(part["evals"]) and part["sps"] is not None)


def render(results: dict) -> str:
    """report.md, from results.json's numbers."""
    lines = ["# GPU check of fmer_continuous.py", ""]
    if not results["gpu_measured"]:
        lines += ["**No GPU was measured.** Dry mode: every part at tiny sizes on the CPU, to check this tool.", ""]
    lines += [
        f"`{results['command']}` at commit {results['commit']}, started {results['started']}",
        f"device: {results['device']}; torch {results['torch']}; Python {results['python']}",
    ]
    for name, part in results["parts"].items():
        took = f" in {part['seconds']:.0f} s" if "seconds" in part else ""
        lines += ["", f"## {name}: {part['status']}{took}", ""]
        if name == "tests" and "command" in part:
            lines += [f"`{part['command']}`", ""]
            if part.get("tests"):
                lines += ["| test | outcome | s | message |", "| --- | --- | ---: | --- |"]
                lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {t['message']} |" for t in part["tests"]]
        if name == "speed":
            lines += [f"`{command}`" for command in part.get("commands", [])]
            lines += [
                "",
                "| env | mode | update (ms) | updates/s | x FLOP floor | SPS |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for env_id, env in part.get("envs", {}).items():
                for row in env["rows"]:
                    sps = (
                        f"{row['sps']:.1f}"
                        if row.get("sps") is not None
                        else "running"
                        if part["status"] == "running"
                        else "not run"
                    )
                    ms, ratio = row["update"] * 1e3, row["floor_ratio"]
                    lines.append(f"| {env_id} | {row['mode']} | {ms:.2f} | {1e3 / ms:.1f} | {ratio:.2f} | {sps} |")
            for env_id, env in part.get("envs", {}).items():
                window = env["sps_window_steps"]
                lines += [
                    f"\n{env_id}: B={env['B']}, K={env['K']}, N={env['N']}, hidden {env['hidden']}; one update is "
                    f"{env['update_flops'] / 1e9:.2f} GFLOP of matmuls, [{env['B'] * env['K']}x{env['hidden']}]@"
                    f"[{env['hidden']}x{env['hidden']}] runs at {env['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, so the "
                    f"floor is {env['floor_s'] * 1e3:.2f} ms; SPS over steps {window[0]}-{window[1]} of a real run."
                ]
        if name == "learn" and "command" in part:
            lines += [f"`{part['command']}` (run folder: {part.get('run_dir') or 'not yet'})", ""]
            lines += ["| step | eval return (mean +- std) |", "| ---: | ---: |"]
            lines += [f"| {step} | {mean:.1f} +- {std:.1f} |" for step, mean, std in part["evals"]]
            if "seconds_total" in part:
                sps = "none logged" if part["sps"] is None else f"{part['sps']:.1f}"
                lines += [
                    "",
                    f"SPS from step {part['sps_from']} on (median of charts/SPS, evaluations left out): {sps}; "
                    f"the whole run, startup and compilation included: {part['seconds_total']:.0f} s.",
                ]
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    import torch  # after the arguments: bad input is answered at once

    if not args.dry and not torch.cuda.is_available():
        fail("no CUDA device is visible to torch here; --dry checks this tool on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    results = {
        "command": " ".join(["python", "benchmark/gpu_check.py", *sys.argv[1:]]),
        "commit": commit.stdout.strip() or "unknown",
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu_measured": not args.dry,
        "device": "CPU (dry mode)" if args.dry else f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parts": {name: {"status": "waiting"} for name in args.parts},
    }

    def save():
        write_atomically(out / "report.md", render(results))  # first: results.json in place means the report is too
        write_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")

    save()
    for name in args.parts:
        part = results["parts"][name]
        part["status"], start = "running", time.monotonic()
        (out / f"{name}.log").unlink(missing_ok=True)
        print(f"{name}: running (log: {out / f'{name}.log'})", flush=True)
        part["status"] = {"tests": tests_part, "speed": speed_part, "learn": learn_part}[name](args, out, part, save)
        part["seconds"] = time.monotonic() - start
        save()
        print(f"{name}: {part['status']} in {part['seconds']:.0f} s", flush=True)
    print(render(results))
    sys.exit(0 if all(part["status"] == "passed" for part in results["parts"].values()) else 1)


if __name__ == "__main__":
    main()
