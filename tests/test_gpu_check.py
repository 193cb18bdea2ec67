"""benchmark/gpu_check.py (the GPU check, here in its CPU dry mode) and benchmark/make_wheelhouse.py.

No GPU here: the dry mode runs every part at tiny sizes on the CPU and must say that it measured no
GPU. The wheelhouse test is real: it downloads tyro and its dependencies, hides them from a fresh
environment that still sees this machine's torch, and lets the check install them with --no-index.
"""
import json
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


def one_error_line(proc: subprocess.CompletedProcess, *words: str):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("args, words", [
    (["--parts", "tests,gpu"], ["unknown part gpu"]),
    (["--budget", "seeds=soon"], ["--budget", "PART=SECONDS"]),
    (["--full", "--dry"], ["exclude each other"]),
    (["--seed-counts", "1,0"], ["--seed-counts"]),
    (["--dry", "--run-mode", "compile+cudagraphs"], ["needs CUDA"]),
])
def test_check_refuses_bad_input_in_one_line(tmp_path, args, words):
    proc = subprocess.run([sys.executable, CHECK, str(tmp_path / "out"), *args], capture_output=True, text=True,
                          timeout=60)
    one_error_line(proc, *words)


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_check_without_gpu_asks_for_the_dry_mode(tmp_path):
    proc = subprocess.run([sys.executable, CHECK, str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    one_error_line(proc, "sees no CUDA GPU", "--dry")


@pytest.mark.parametrize("args, words", [
    (["--python-version", "twelve"], ["--python-version"]),
    (["--glibc", "2"], ["--glibc"]),
    (["torch==2.11.0"], ["torch"]),
])
def test_wheelhouse_refuses_bad_input_in_one_line(tmp_path, args, words):
    proc = subprocess.run([sys.executable, WHEELHOUSE, str(tmp_path / "wh"), *args], capture_output=True, text=True,
                          timeout=60)
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
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith(("gymnasium", "mujoco", "tyro"))]
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
        "print('step 1000: eval return -12.5 +- 3.0, 2 goals reached (episodes per goal: 1/1/0/0)', flush=True)\n")
    log = gpu_check.Log(tmp_path / "log.txt")
    run = gpu_check.Run("fake", [sys.executable, script], {}, log, tmp_path)
    assert run.wait(time.monotonic() + 60)
    assert [s for _, s in run.progress] == list(range(100, 1100, 100))
    rate = run.rate(from_step=300)
    assert rate["from_step"] == 300 and rate["to_step"] == 1000
    assert 200 < rate["sps"] < 600  # 700 steps in about 1.4 s
    assert run.evals == [{"step": 1000, "return": -12.5, "std": 3.0, "seconds": run.evals[0]["seconds"],
                          "goals_reached": 2}]
    assert run.reached == 1000 and run.failure() is None
    assert "[fake] step 500/1000" in (tmp_path / "log.txt").read_text()


def test_a_failed_run_names_its_error(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('step 10/100  SPS 5.0')\n"
                      "print('RuntimeError: <weakref at 0x1>', file=sys.stderr)\n"
                      + "".join(f"print('context line {i}')\n" for i in range(20)) + "sys.exit(3)\n")
    run = gpu_check.Run("crash", [sys.executable, script], {}, gpu_check.Log(tmp_path / "log.txt"), tmp_path)
    assert run.wait(time.monotonic() + 60)
    lines = run.failure().splitlines()
    assert lines[:2] == ["exit status 3", "RuntimeError: <weakref at 0x1>"]  # the error, though 20 lines came after it
    assert lines[-1] == "context line 19" and run.step == 10


def test_a_run_is_stopped_with_its_process_group(tmp_path):
    script = tmp_path / "forever.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                      "print(f'child {child.pid}', flush=True)\n"
                      "time.sleep(600)\n")
    run = gpu_check.Run("forever", [sys.executable, script], {}, gpu_check.Log(tmp_path / "log.txt"), tmp_path)
    assert not run.wait(time.monotonic() + 3)
    run.stop(grace=5)
    assert run.proc.returncode is not None and run.failure() is None  # stopped by us, not failed
    child = Path("/proc") / run.tail[0].split()[1]

    def gone():  # ended: no such process, or a zombie that nobody has reaped yet
        try:
            return "\nState:\tZ" in (child / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True

    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone()  # the grandchild went with the process group


@pytest.mark.slow
def test_dry_mode_runs_the_parts_and_says_no_gpu_was_measured(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, CHECK, str(out), "--dry", "--parts", "speed,seeds,learn",
                           "--seed-counts", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NO GPU WAS MEASURED" in proc.stdout.splitlines()[-1]
    report = (out / "report.md").read_text()
    assert "**No GPU was measured.**" in report
    results = json.loads((out / "results.json").read_text())
    assert results["gpu_measured"] is False and results["profile"] == "dry"
    parts = results["parts"]
    assert {p: r["status"] for p, r in parts.items()} == {"speed": "ok", "seeds": "ok", "learn": "ok"}

    (row,) = parts["speed"]["rows"]
    assert row["env_id"] == "Hopper-v5" and row["mode"] == "eager" and row["update"] > 0 and row["sps"] > 0

    (level,) = parts["seeds"]["levels"]
    assert level["processes"] == 2 and len(level["per_run_sps"]) == 2 and min(level["per_run_sps"]) > 0
    assert level["aggregate_sps"] == pytest.approx(sum(level["per_run_sps"]), abs=0.2)
    burn_step = parts["seeds"]["learning_starts"] + parts["seeds"]["burn_in"]
    assert all(s is not None for s in level["seconds_to_burn_in"]) and burn_step > 0

    learn = parts["learn"]
    assert [e["step"] for e in learn["evals"]] == [150, 300]
    assert learn["sps_after_burn_in"]["from_step"] >= 170
    assert "| 300 |" in report and "Hopper-v5" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_a_part_out_of_budget_is_cut_and_the_check_fails(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, CHECK, str(out), "--dry", "--parts", "learn", "--budget", "learn=2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    learn = json.loads((out / "results.json").read_text())["parts"]["learn"]
    assert learn["status"] == "cut" and learn["wall_s"] < 60
    assert "1 failed or cut (learn)" in proc.stdout


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
    build = subprocess.run([sys.executable, WHEELHOUSE, str(wheelhouse), "tyro==1.0.17"], capture_output=True,
                           text=True, timeout=600)
    if build.returncode != 0 and any(s in build.stderr for s in (
            "No matching distribution", "Could not find a version", "NewConnectionError", "Max retries exceeded",
            "Temporary failure in name resolution", "Network is unreachable")):
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
