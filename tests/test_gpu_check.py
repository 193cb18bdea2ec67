"""benchmark/gpu_check.py, here in its CPU dry mode (no GPU on this machine).

No test depends on how fast the machine is: a check is killed or timed out at a point the test chooses (its first
evaluation written; a learning run of 100,000 steps that no CPU finishes within its time limit), not after so many
seconds of work. The waits below only keep a broken check from hanging the suite.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = [sys.executable, str(ROOT / "benchmark" / "gpu_check.py")]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CHECK, *args], capture_output=True, text=True, env=ONE_THREAD, timeout=timeout)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize(
    "flags, words",
    [
        ([], "required: out"),
        (["{out}", "--parts", "tests,nope"], "unknown part 'nope'"),
        (["{out}", "--parts", ","], "names no part"),
        (["{out}", "--timeout", "0"], "--timeout"),
        (["{out}", "--dry", "--learn-steps", "150"], "--learn-steps must be above 150"),
        (["{file}"], "is not a folder"),
        (["{out}", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, flags, words):
    (tmp_path / "file").write_text("")
    flags = [flag.format(out=tmp_path / "out", file=tmp_path / "file") for flag in flags]
    proc = check(*flags)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: "), proc.stderr
    assert words in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written on bad input


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_refuses_to_measure_the_cpu(tmp_path):
    proc = check(str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr == "error: no CUDA device is visible to torch here; --dry checks this tool on the CPU\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_mode_runs_every_part_and_reports_it(tmp_path):
    out = tmp_path / "report"
    proc = check(str(out), "--dry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = results(out)
    assert res["gpu_measured"] is False and res["device"] == "CPU (dry mode)"
    assert [name for name in res["parts"]] == ["tests", "speed", "learn"]
    assert all(part["status"] == "passed" for part in res["parts"].values())

    tests = res["parts"]["tests"]["tests"]  # the CUDA tests, skipped here with pytest's reason
    assert len(tests) == 3 and all("on_cuda" in t["name"] and t["outcome"] == "skipped" for t in tests)
    assert all("CUDA" in t["message"] for t in tests)

    (speed,) = res["parts"]["speed"]["envs"].values()  # speed.py's own numbers, as it wrote them
    assert speed == json.loads((out / "speed-Hopper-v5.json").read_text())
    assert speed["env_id"] == "Hopper-v5" and speed["hidden"] == 32 and speed["B"] == 32
    (row,) = speed["rows"]
    assert row["mode"] == "eager" and row["update"] > 0 and row["sps"] > 0

    learn = res["parts"]["learn"]
    assert [step for step, _, _ in learn["evals"]] == [100, 200, 300]
    assert learn["sps"] > 0 and (out / learn["run_dir"]).is_dir()

    report = (out / "report.md").read_text()
    assert report.startswith("# GPU check of fmer_continuous.py\n\n**No GPU was measured.**")
    for heading in ("## tests: passed", "## speed: passed", "## learn: passed"):
        assert heading in report
    assert f"| Hopper-v5 | eager | {row['update'] * 1e3:.2f} |" in report
    assert "| 300 |" in report and f"{learn['sps']:.1f}" in report
    assert report in proc.stdout  # and printed at the end
    for log in ("tests.log", "speed.log", "learn.log"):  # every command and its output
        assert (out / log).read_text().startswith(f"$ {sys.executable} ")


@pytest.mark.slow
def test_a_killed_check_keeps_what_it_had_written(tmp_path):
    out = tmp_path / "report"
    # its own process group, with its children, as a harness kills it at its time limit
    proc = subprocess.Popen(
        [*CHECK, str(out), "--dry", "--parts", "tests,learn", "--learn-steps", "100000"],
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not ((out / "results.json").exists() and results(out)["parts"]["learn"].get("evals")):
            assert proc.poll() is None and time.monotonic() < deadline, "the check ended before its first evaluation"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-run: 99,900 steps to go
        proc.wait()
    res = results(out)
    assert res["parts"]["tests"]["status"] == "passed" and len(res["parts"]["tests"]["tests"]) == 3
    learn = res["parts"]["learn"]
    assert learn["status"] == "running" and learn["evals"][0][0] == 100 and "sps" not in learn
    report = (out / "report.md").read_text()
    assert "## tests: passed" in report and "## learn: running" in report and "| 100 |" in report
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_a_subprocess_past_its_time_limit_is_stopped_and_reported(tmp_path):
    out = tmp_path / "report"
    proc = check(str(out), "--dry", "--parts", "learn", "--learn-steps", "100000", "--timeout", "5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert results(out)["parts"]["learn"]["status"] == "timed out"
    assert "## learn: timed out" in (out / "report.md").read_text()
    assert "(stopped after 5 s)" in (out / "learn.log").read_text()
