"""benchmark/gpu_check.py (the GPU check, here in its CPU dry mode) and benchmark/make_wheelhouse.py.

No GPU here: the dry mode runs every part at tiny sizes on the CPU and must say that it measured no
GPU. The wheelhouse test is real: it downloads tyro and its dependencies, hides them from a fresh
environment that still sees this machine's torch, and lets the check install them with --no-index.

No test here depends on how fast the machine is: the dry runs print a progress line every 10 steps, and a
check or part is stopped midway at a point the test chooses (a line in the log, a result written), not after
so many seconds. Time limits below are only there so that a broken check cannot hang the suite.
"""

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from benchmark import gpu_check, make_wheelhouse

ROOT = Path(__file__).resolve().parents[1]
CHECK = str(ROOT / "benchmark" / "gpu_check.py")
WHEELHOUSE = str(ROOT / "benchmark" / "make_wheelhouse.py")
CUDA = torch.cuda.is_available()
QUIET = {**os.environ, "OMP_NUM_THREADS": "1"}  # two cores here, shared: one thread per child run


def wait_for(condition, what: str, timeout: float = 600):
    """Wait until condition() holds; the timeout only keeps a broken check from hanging the suite."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie that nobody has reaped yet."""
    try:
        return "\nState:\tZ" in (Path("/proc") / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


class CutWhen(gpu_check.Clock):
    """A part's clock that runs out as soon as condition() holds: a cut at a point the test chooses."""

    def __init__(self, condition):
        super().__init__(startup=600, cap=600)
        self.condition = condition

    def expired(self) -> bool:
        return self.condition() or super().expired()


def dry_check(tmp_path: Path, *flags: str) -> gpu_check.Check:
    """A Check in the dry mode, as main() makes one, to run its parts one by one."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    args = gpu_check.parse_args([str(out), "--dry", *flags])
    env = {**QUIET, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": str(work / "cache")}
    check = gpu_check.Check(args, "dry", out, work, env, {}, gpu_check.Log(out / "log.txt"))
    check.results.update(profile="dry", parts_asked=list(args.parts), run_mode=check.run_mode, started="", command="(test)")
    return check


def one_error_line(proc: subprocess.CompletedProcess, *words: str):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--parts", "tests,gpu"], ["unknown part gpu"]),
        (["--budget", "seeds=soon"], ["--budget", "PART=SECONDS"]),
        (["--full", "--dry"], ["exclude each other"]),
        (["--seed-counts", "1,0"], ["--seed-counts"]),
        (["--dry", "--run-mode", "compile+cudagraphs"], ["needs CUDA"]),
    ],
)
def test_check_refuses_bad_input_in_one_line(tmp_path, args, words):
    proc = subprocess.run([sys.executable, CHECK, str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=60)
    one_error_line(proc, *words)


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_check_without_gpu_asks_for_the_dry_mode(tmp_path):
    proc = subprocess.run([sys.executable, CHECK, str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    one_error_line(proc, "sees no CUDA GPU", "--dry")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--python-version", "twelve"], ["--python-version"]),
        (["--glibc", "2"], ["--glibc"]),
        (["torch==2.11.0"], ["torch"]),
    ],
)
def test_wheelhouse_refuses_bad_input_in_one_line(tmp_path, args, words):
    proc = subprocess.run(
        [sys.executable, WHEELHOUSE, str(tmp_path / "wh"), *args], capture_output=True, text=True, timeout=60
    )
    one_error_line(proc, *words)


def test_wheelhouse_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "old.whl").write_text("")
    proc = subprocess.run([sys.executable, WHEELHOUSE, str(tmp_path)], capture_output=True, text=True, timeout=60)
    one_error_line(proc, "not an empty folder")


def test_platform_tags_cover_every_glibc_up_to_the_given_one():
    tags = make_wheelhouse.platform_tags("x86_64", "2.28")
    assert "manylinux_2_28_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert make_wheelhouse.platform_tags("aarch64", "2.17") == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]


def test_default_wheelhouse_takes_the_repository_pins():
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith(("gymnasium", "mujoco", "tyro"))
    ]
    assert len(pins) == 4
    requirements = make_wheelhouse.default_requirements()
    assert requirements[:4] == pins and "torch" not in " ".join(requirements)


def test_runs_are_timed_from_their_progress_lines(tmp_path):
    # A stand-in script: 100 steps per progress line, every 0.2 s; then an evaluation line.
    script = tmp_path / "fake.py"
    script.write_text(
        "import time\n"
        "for i in range(1, 11):\n"
        "    time.sleep(0.2)\n"
        "    print(f'step {i * 100}/1000  SPS 1.0  ETA 1.0 min  last return 1.0', flush=True)\n"
        "print('step 1000: eval return -12.5 +- 3.0, 2 goals reached (episodes per goal: 1/1/0/0)', flush=True)\n"
    )
    log = gpu_check.Log(tmp_path / "log.txt")
    run = gpu_check.Run("fake", [sys.executable, script], {}, log, tmp_path)
    assert run.wait(time.monotonic() + 60)
    assert [s for _, s in run.progress] == list(range(100, 1100, 100))
    rate = run.rate(from_step=300)
    assert rate["from_step"] == 300 and rate["to_step"] == 1000 and rate["steps"] == 700
    seconds = dict((s, t) for t, s in run.progress)
    assert rate["sps"] == pytest.approx(700 / (seconds[1000] - seconds[300]))  # arrival times, however fast they came
    assert run.evals == [{"step": 1000, "return": -12.5, "std": 3.0, "seconds": run.evals[0]["seconds"], "goals_reached": 2}]
    assert run.reached == 1000 and run.failure() is None
    assert "[fake] step 500/1000" in (tmp_path / "log.txt").read_text()


def test_a_failed_run_names_its_error(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\nprint('step 10/100  SPS 5.0')\n"
        "print('RuntimeError: <weakref at 0x1>', file=sys.stderr)\n"
        + "".join(f"print('context line {i}')\n" for i in range(20))
        + "sys.exit(3)\n"
    )
    run = gpu_check.Run("crash", [sys.executable, script], {}, gpu_check.Log(tmp_path / "log.txt"), tmp_path)
    assert run.wait(time.monotonic() + 60)
    lines = run.failure().splitlines()
    assert lines[:2] == ["exit status 3", "RuntimeError: <weakref at 0x1>"]  # the error, though 20 lines came after it
    assert lines[-1] == "context line 19" and run.step == 10


def test_a_run_is_stopped_with_its_process_group(tmp_path):
    script = tmp_path / "forever.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(f'child {child.pid}', flush=True)\n"
        "time.sleep(600)\n"
    )
    run = gpu_check.Run("forever", [sys.executable, script], {}, gpu_check.Log(tmp_path / "log.txt"), tmp_path)
    assert not run.wait(time.monotonic() + 3)
    run.stop(grace=5)
    assert run.proc.returncode is not None and run.failure() is None  # stopped by us, not failed
    wait_for(lambda: gone(int(run.tail[0].split()[1])), "the grandchild to end", 30)  # it went with the group


def test_runs_are_stopped_together_on_one_grace(tmp_path, monkeypatch):
    script = tmp_path / "stubborn.py"  # ignores SIGTERM: only SIGKILL ends it
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    log = gpu_check.Log(tmp_path / "log.txt")
    runs = [gpu_check.Run(f"stubborn {i}", [sys.executable, script], {}, log, tmp_path) for i in range(3)]
    wait_for(lambda: all("ready" in r.tail for r in runs), "the stand-ins to start", 120)
    sent, killpg = [], os.killpg
    monkeypatch.setattr(gpu_check.os, "killpg", lambda pid, sig: (sent.append((pid, sig)), killpg(pid, sig))[1])
    gpu_check.stop_runs(runs, grace=1)
    pids = [r.proc.pid for r in runs]
    # every run gets SIGTERM before any gets SIGKILL: one grace for all, not one after another
    assert sent == [(pid, signal.SIGTERM) for pid in pids] + [(pid, signal.SIGKILL) for pid in pids]
    assert [r.proc.returncode for r in runs] == [-signal.SIGKILL] * 3 and not gpu_check.Run.live & set(runs)


def stand_in_check(tmp_path: Path, body: str) -> subprocess.Popen:
    """A stand-in for the check: a process that imports gpu_check, runs body (which prints a line), then waits."""
    parent = tmp_path / "parent.py"
    parent.write_text(
        f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\nfrom benchmark import gpu_check\n{body}\ntime.sleep(600)\n"
    )
    return subprocess.Popen([sys.executable, parent], stdout=subprocess.PIPE, text=True)


def test_children_die_with_the_check(tmp_path):
    # the stand-in starts a silent child (no output line would break its pipe), then is killed
    proc = stand_in_check(
        tmp_path,
        f"run = gpu_check.Run('silent', [sys.executable, '-c', 'import time; time.sleep(600)'], "
        f"{{}}, gpu_check.Log({str(tmp_path / 'log.txt')!r}), {str(tmp_path)!r})\n"
        "print(run.proc.pid, flush=True)",
    )
    child = int(proc.stdout.readline())
    cmdline = Path("/proc") / str(child) / "cmdline"
    wait_for(lambda: cmdline.read_bytes().split(b"\0")[2] == b"import time; time.sleep(600)", "the launcher's exec", 60)
    proc.kill()
    proc.wait()
    wait_for(lambda: gone(child), "the child to die with its parent", 30)


FAKE_MPS_CONTROL = """import os, signal, subprocess, sys
pid_file = os.path.join(os.environ["CUDA_MPS_PIPE_DIRECTORY"], "daemon.pid")
if sys.argv[1:] == ["-d"]:  # start the daemon, detached, like the real one
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(pid_file, "w").write(str(daemon.pid))
elif sys.stdin.read().strip() == "quit":
    os.kill(int(open(pid_file).read()), signal.SIGTERM)
"""


def test_the_mps_daemon_is_stopped_however_the_check_ends(tmp_path):
    control = tmp_path / "nvidia-cuda-mps-control"
    control.write_text(f"#!{sys.executable}\n" + FAKE_MPS_CONTROL)
    control.chmod(0o755)
    log = gpu_check.Log(tmp_path / "log.txt")

    def daemon(pipe: Path) -> int:
        return int((pipe / "daemon.pid").read_text())

    # the check ends normally: stop_mps
    pipe = tmp_path / "pipe1"
    pipe.mkdir()
    guard, error = gpu_check.start_mps(str(control), {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe)}, log)
    assert error is None and not gone(daemon(pipe))
    gpu_check.stop_mps(guard, log)
    wait_for(lambda: gone(daemon(pipe)), "the daemon to quit", 60)

    # the check is killed: the guard notices and stops the daemon
    pipe = tmp_path / "pipe2"
    pipe.mkdir()
    proc = stand_in_check(
        tmp_path,
        f"env = {{**os.environ, 'CUDA_MPS_PIPE_DIRECTORY': {str(pipe)!r}}}\n"
        f"guard, error = gpu_check.start_mps({str(control)!r}, env, "
        f"gpu_check.Log({str(tmp_path / 'l2')!r}))\nprint(error, flush=True)",
    )
    assert proc.stdout.readline().strip() == "None" and not gone(daemon(pipe))
    proc.kill()
    proc.wait()
    wait_for(lambda: gone(daemon(pipe)), "the daemon to quit after the check was killed", 60)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to give the check fewer")
def test_cpus_are_counted_by_affinity():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # this thread, and the processes it starts, may use one CPU
    try:
        assert gpu_check.usable_cpus() == 1
        machine = gpu_check.probe(dict(os.environ), [])
        assert machine["cpus"] == 1 and machine["cpus_machine"] == os.cpu_count() > 1
    finally:
        os.sched_setaffinity(0, before)


def test_every_seeds_run_has_a_step_budget_and_a_buffer_of_its_size(tmp_path):
    for profile in ("quick", "full"):
        args = gpu_check.parse_args([str(tmp_path), "--full"] if profile == "full" else [str(tmp_path)])
        check = gpu_check.Check(args, profile, tmp_path, tmp_path, {}, {}, None)
        for part in ("seeds", "mps"):
            size = check.sizes[part]
            cmd = [str(c) for c in check.seeds_command(size, 1, part)]
            total = int(cmd[cmd.index("--total-timesteps") + 1])
            assert int(cmd[cmd.index("--buffer-size") + 1]) == total <= 200_000
            # Humanoid-v5 rows: 348 + 348 + 17 + 2 floats; all of a part's processes at once
            assert total * (2 * 348 + 17 + 2) * 4 * max(size["counts"]) < 8e9, (profile, part)


def test_without_a_compiler_the_check_says_so_and_runs_the_modes_that_need_none(tmp_path):
    # the quick profile's speed runs and tests without a compiler
    check = gpu_check.Check(gpu_check.parse_args([str(tmp_path)]), "quick", tmp_path, tmp_path, {}, {}, None)
    check.no_compiler = "no compiler"
    assert [r[:2] for r in check.speed_runs(check.sizes["speed"])] == [
        ("Humanoid-v5", "eager"),
        ("Humanoid-v5", "cudagraphs"),
        ("Hopper-v5", "cudagraphs"),
        ("Hopper-v5", "eager"),
    ]
    assert check.pytest_args(check.sizes["tests"])[-2:] == ["-k", "(on_cuda) and not compile"]

    # the dry mode on this CPU, where inductor compiles C++ with $CXX: none there
    broken = {**QUIET, "CXX": str(tmp_path / "no-such-c++")}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, CHECK, str(out), "--dry", "--parts", "learn", "--run-mode", "compile", "--learn-steps", "160"],
        env=broken,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if "torch.compile does not work here" in line]
    assert len(said) == 1 and "(eager, cudagraphs)" in said[0]
    results = json.loads((out / "results.json").read_text())
    assert results["run_mode"] == "eager" and results["compiler"]["works"] is False
    assert "InvalidCxxCompiler" in results["compiler"]["note"] and "\n" not in results["compiler"]["note"]
    assert "--compile" not in results["parts"]["learn"]["command"] and results["parts"]["learn"]["status"] == "ok"


@pytest.mark.slow
def test_dry_mode_runs_the_parts_and_says_no_gpu_was_measured(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, CHECK, str(out), "--dry", "--parts", "speed,seeds,learn", "--seed-counts", "2"],
        env=QUIET,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NO GPU WAS MEASURED" in proc.stdout.splitlines()[-1]
    report = (out / "report.md").read_text()
    assert "**No GPU was measured.**" in report
    results = json.loads((out / "results.json").read_text())
    assert results["gpu_measured"] is False and results["profile"] == "dry"
    assert results["warmup"]["status"] == "ok" and [w["env_id"] for w in results["warmup"]["runs"]] == ["Hopper-v5"]
    parts = results["parts"]
    assert {p: r["status"] for p, r in parts.items()} == {"speed": "ok", "seeds": "ok", "learn": "ok"}

    (row,) = parts["speed"]["rows"]
    assert row["env_id"] == "Hopper-v5" and row["mode"] == "eager" and row["update"] > 0 and row["sps"] > 0

    (level,) = parts["seeds"]["levels"]
    assert level["processes"] == 2 and len(level["per_run_sps"]) == 2 and min(level["per_run_sps"]) > 0
    assert level["aggregate_sps"] == pytest.approx(sum(level["per_run_sps"]), abs=0.2)
    burn_step = parts["seeds"]["learning_starts"] + parts["seeds"]["burn_in"]
    assert all(s is not None for s in level["seconds_to_burn_in"]) and burn_step > 0
    assert level["steps_budget"] == burn_step + gpu_check.PROFILES["dry"]["seeds"]["steps"]

    learn = parts["learn"]  # a progress line every 10 steps: steps 170 to 300 give 14, at any speed
    assert [e["step"] for e in learn["evals"]] == [150, 300]
    assert learn["sps_after_burn_in"]["from_step"] == 170 and learn["sps_after_burn_in"]["to_step"] == 300
    assert "| 300 |" in report and "Hopper-v5" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_a_part_out_of_budget_is_cut_keeps_what_it_measured_and_the_check_fails(tmp_path):
    # 1 s after its burn-in (step 170) the learn part is cut; 100,000 steps cannot be done by then on any machine,
    # and the evaluation at step 150 came before the burn-in
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, CHECK, str(out), "--dry", "--parts", "learn", "--budget", "learn=1", "--learn-steps", "100000"],
        env=QUIET,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    learn = json.loads((out / "results.json").read_text())["parts"]["learn"]
    assert learn["status"] == "cut" and 170 <= learn["reached_step"] < 100_000
    assert [e["step"] for e in learn["evals"]] == [150] and "| 150 |" in (out / "report.md").read_text()
    assert "1 failed or cut (learn)" in proc.stdout


def test_the_checks_own_deadline_cuts_what_is_left(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, CHECK, str(out), "--dry", "--parts", "learn", "--budget", "total=1"],
        env=QUIET,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["warmup"]["status"] == "skipped" and results["parts"]["learn"]["status"] == "cut"
    assert "total of 1 s was spent" in results["parts"]["learn"]["note"]


@pytest.mark.slow
def test_a_killed_check_keeps_what_it_had_measured(tmp_path):
    # SIGKILL, as a harness sends at its time limit, once the first level is written and the second has started
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            CHECK,
            str(out),
            "--dry",
            "--parts",
            "seeds",
            "--seed-counts",
            "1,2",
            "--work-dir",
            str(tmp_path / "work"),
        ],  # a killed check cannot remove its scratch folder
        env=QUIET,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = out / "log.txt"

    def second_level_started():
        text = log.read_text() if log.exists() else ""
        return len(re.findall(r"^\[seeds 2x seed \d\] \$ .*\(pid \d+", text, re.MULTILINE)) == 2

    try:
        wait_for(second_level_started, "the second level to start")
    finally:
        proc.kill()
        proc.wait()
    results = json.loads((out / "results.json").read_text())
    seeds = results["parts"]["seeds"]
    assert seeds["status"] == "running"  # what a killed check leaves: the part it was in, as far as it got
    (level,) = seeds["levels"]
    assert level["processes"] == 1 and level["status"] == "ok" and level["per_run_sps"][0] > 0
    report = (out / "report.md").read_text()
    assert "| seeds | running |" in report and "| 1 | 1 | ok |" in report
    pids = [int(p) for p in re.findall(r"^\[seeds 2x seed \d\] \$ .*\(pid (\d+)", log.read_text(), re.MULTILINE)]
    wait_for(lambda: all(gone(pid) for pid in pids), "the second level's runs to die with the check", 60)


def test_a_cut_tests_part_keeps_the_tests_that_finished(tmp_path):
    tests = tmp_path / "test_stand_in.py"
    tests.write_text("import time\n\n\ndef test_quick():\n    pass\n\n\ndef test_long():\n    time.sleep(600)\n")
    check = dry_check(tmp_path, "--parts", "tests")
    check.sizes["tests"]["pytest"] = [str(tests)]
    check.make_clock = lambda size: CutWhen(lambda: check.results["parts"]["tests"].get("cases"))  # after test_quick
    check.run_part("tests")
    tests_part = json.loads((tmp_path / "out" / "results.json").read_text())["parts"]["tests"]
    assert tests_part["status"] == "cut"
    assert [(c["test"].split("::")[-1], c["outcome"]) for c in tests_part["cases"]] == [("test_quick", "passed")]
    assert tests_part["cases"][0]["seconds"] is not None  # from pytest's junit file, which SIGINT lets it write
    assert "test_quick | passed" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_a_cut_speed_part_keeps_the_update_time(tmp_path):
    check = dry_check(tmp_path, "--parts", "speed")
    check.sizes["speed"]["sps_steps"] = 100_000  # an SPS run that no machine ends before the cut
    check.make_clock = lambda size: CutWhen(lambda: check.results["parts"]["speed"].get("rows"))
    check.run_part("speed")
    speed = json.loads((tmp_path / "out" / "results.json").read_text())["parts"]["speed"]
    assert speed["status"] == "cut"
    (row,) = speed["rows"]  # written by speed.py before its SPS run started
    assert row["update"] > 0 and row["meta"]["floor_s"] > 0 and row["sps"] is None and row["sps_note"] == "cut"
    assert "| Hopper-v5 | eager |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_a_cut_seeds_part_keeps_the_levels_that_finished(tmp_path):
    check = dry_check(tmp_path, "--parts", "seeds")
    log = tmp_path / "out" / "log.txt"
    check.make_clock = lambda size: CutWhen(lambda: "[seeds 2x seed 2] step" in log.read_text())  # the 2nd level runs
    check.run_part("seeds")
    seeds = json.loads((tmp_path / "out" / "results.json").read_text())["parts"]["seeds"]
    assert seeds["status"] == "cut"
    first, second = seeds["levels"]
    assert first["status"] == "ok" and first["per_run_sps"][0] > 0
    assert second["processes"] == 2 and second["status"] == "cut"
    assert "| 1 | 1 | ok |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_kitchen_part_runs_to_its_budget_and_reports_sps_and_completions(tmp_path):
    check = dry_check(tmp_path, "--parts", "kitchen")
    check.sizes["kitchen"]["total"] = 100_000  # as on a GPU: its budget ends it, here once it has evaluated twice
    check.make_clock = lambda size: CutWhen(lambda: len(check.results["parts"]["kitchen"].get("evals", [])) >= 2)
    check.run_part("kitchen")
    kitchen = json.loads((tmp_path / "out" / "results.json").read_text())["parts"]["kitchen"]
    assert kitchen["status"] == "ok" and "stopped at its budget" in kitchen["note"], kitchen["note"]
    assert "--num-tasks 1" in kitchen["command"] and 400 <= kitchen["reached_step"] < 100_000
    assert kitchen["sps_after_burn_in"]["from_step"] == 170 and kitchen["sps_after_burn_in"]["sps"] > 0
    assert [e["step"] for e in kitchen["evals"]] == [200, 400]
    assert all(set(e["successes"]) == {"light switch"} and e["successes"]["light switch"][1] == 2 for e in kitchen["evals"])
    training = kitchen["training"]  # read from its tensorboard log: 280-step episodes, or shorter where it succeeded
    assert training["episodes"] >= 1 and 0 <= training["completed"] <= training["episodes"]
    assert (training["first_step"] is None) == (training["completed"] == 0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## kitchen" in report and "Training episodes" in report and "| 400 |" in report


def hide_packages(farm: Path, hidden: set[str]) -> None:
    """A folder of links to this Python's site-packages, less the packages in `hidden`."""
    farm.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if make_wheelhouse.normalize(entry.name.split("-")[0].removesuffix(".py")) not in hidden:
            (farm / entry.name).symlink_to(entry)


@pytest.mark.slow
def test_wheelhouse_installs_offline_into_a_fresh_environment(tmp_path):
    wheelhouse = tmp_path / "wh"
    build = subprocess.run(
        [sys.executable, WHEELHOUSE, str(wheelhouse), "tyro==1.0.17"], capture_output=True, text=True, timeout=600
    )
    if build.returncode != 0 and any(
        s in build.stderr
        for s in (
            "No matching distribution",
            "Could not find a version",
            "NewConnectionError",
            "Max retries exceeded",
            "Temporary failure in name resolution",
            "Network is unreachable",
        )
    ):
        pytest.skip(f"pip cannot download tyro==1.0.17 from its index here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    wheels = {make_wheelhouse.wheel_name(w) for w in wheelhouse.glob("*.whl")}
    assert {"tyro", "docstring-parser", "typeguard"} <= wheels
    assert (wheelhouse / "requirements.txt").read_text().splitlines()[-1] == "tyro==1.0.17"

    # A fresh venv that sees this machine's packages (torch, gymnasium, ...) except tyro and the
    # two dependencies of tyro that a GPU image lacks.
    hide_packages(tmp_path / "farm", {"tyro", "docstring-parser", "typeguard"})
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (venv_site,) = venv.glob("lib/python3*/site-packages")
    (venv_site / "farm.pth").write_text(f"import site; site.addsitedir({str(tmp_path / 'farm')!r})\n")
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch, gymnasium"], timeout=120).returncode == 0
    assert subprocess.run([python, "-c", "import tyro"], capture_output=True, timeout=60).returncode != 0

    args = [python, CHECK, str(tmp_path / "out"), "--dry", "--parts", "tests"]
    without = subprocess.run(args, capture_output=True, text=True, timeout=300)
    one_error_line(without, "missing Python packages: tyro", "--wheelhouse")

    offline = subprocess.run([*args, "--wheelhouse", str(wheelhouse)], capture_output=True, text=True, timeout=600)
    assert offline.returncode == 0, offline.stdout[-3000:] + offline.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    installed = {line.split("==")[0] for line in results["wheelhouse_installed"]}
    assert "tyro==1.0.17" in results["wheelhouse_installed"]
    assert installed == {"tyro", "docstring-parser", "typeguard"} or installed == {"tyro", "docstring_parser", "typeguard"}
    assert len(list(wheelhouse.glob("*.whl"))) > len(installed)  # what the environment has is not installed again
    tests = results["parts"]["tests"]
    assert tests["status"] == "ok" and tests["counts"]["skipped"] == 3 and tests["counts"]["failed"] == 0
