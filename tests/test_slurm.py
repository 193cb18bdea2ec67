"""The Slurm path, for real: benchmark/run.py --slurm on a one-node cluster of this machine.

The cluster (slurmctld, slurmd, munged; Debian's slurm-wlm and munge, which .ci/run installs) is started by
benchmark/slurm_cluster.sh in a fixture, which installs nothing here (FMER_SLURM_NO_INSTALL=1). The grid is
fmer_continuous.py and the SAC baseline (benchmark/sac_continuous.py) on Pendulum-v1, seed 1, with a tiny budget; each
task is requeued mid-run (`scontrol requeue`, what a preemption does) once it has saved its state, must resume, and
the finished array must give, through summarize.py, both runs with every evaluation point exactly once.

Skipped, with the reason, only where Slurm cannot run: not root, or not installed. In CI (CI=true)
that is a failure instead: the test is never skipped there.

The first tests need no cluster: summarize.py on hand-written event files of a resumed run.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import unavailable
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

from benchmark import run as bench_run
from benchmark import summarize

ROOT = Path(__file__).resolve().parents[1]
TAG = "eval/episodic_return"


def write_start(run: Path, points: dict[str, list[int]], value, total: int, purge_step: int | None = None) -> None:
    """One start of a run: the hyperparameter table, then each tag at its steps (value(step))."""
    writer = SummaryWriter(str(run), purge_step=purge_step)
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n|total_timesteps|{total}|\n|seed|1|")
    for step in sorted({s for steps in points.values() for s in steps}):
        for tag, steps in points.items():
            if step in steps:
                writer.add_scalar(tag, value(step), step)
    writer.close()
    time.sleep(1.1)  # event files are named by the second they were opened, and read in name order


def raw_steps(run: Path, tag: str) -> list[int]:
    """Every step logged for tag, over all event files, nothing purged."""
    steps = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_summarize_reads_a_resumed_run_once(tmp_path):
    """A run saved at step 400, killed after logging evals 500 and 600, resumed with purge_step 401
    (as the scripts do): summarize.py has every eval point once, the resumed start's values."""
    run = tmp_path / "Pendulum-v1__fmer_continuous__1"  # the stable name of a Slurm array task
    write_start(
        run,
        {TAG: list(range(100, 700, 100)), "losses/qf_loss": list(range(50, 650, 50))},
        lambda step: float(step),
        total=1000,
    )
    write_start(
        run,
        {TAG: list(range(500, 1100, 100)), "losses/qf_loss": list(range(450, 1050, 50))},
        lambda step: -float(step),
        total=1000,
        purge_step=401,
    )
    assert sorted(raw_steps(run, TAG)).count(500) == 2  # both files hold step 500 and 600
    loaded = summarize.load_run(run)
    assert not isinstance(loaded, str), loaded
    assert loaded.steps.tolist() == list(range(100, 1100, 100))
    assert loaded.values.tolist() == [100.0, 200.0, 300.0, 400.0] + [-float(s) for s in range(500, 1100, 100)]
    assert (loaded.env, loaded.exp_name, loaded.seed, loaded.budget) == ("Pendulum-v1", "fmer_continuous", 1, 1000)
    assert loaded.time > 0  # the time of its first event file

    groups, notes = summarize.collect(tmp_path, 0.1)
    assert notes == []
    assert [(g.exp_name, g.env, g.budget, len(g.runs)) for g in groups] == [("fmer_continuous", "Pendulum-v1", 1000, 1)]
    assert groups[0].scores.tolist() == [-900.0]  # max over steps >= 900: -900, -1000


def test_summarize_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
    """A writer reopened without purge_step (no SessionLog START): a step in both files counts once,
    with its last value."""
    run = tmp_path / "Pendulum-v1__fmer_continuous__2__1700000000"
    write_start(run, {TAG: [100, 200, 300]}, lambda step: 1.0, total=400)
    write_start(run, {TAG: [300, 400]}, lambda step: 2.0, total=400)
    loaded = summarize.load_run(run)
    assert loaded.steps.tolist() == [100, 200, 300, 400]
    assert loaded.values.tolist() == [1.0, 1.0, 2.0, 2.0]


def test_run_names():
    assert summarize.parse_run_name("Pendulum-v1__fmer_continuous__3") == ("Pendulum-v1", "fmer_continuous", 3, None)
    assert summarize.parse_run_name("Hopper-v5__fmer_clip__1__1795361221") == ("Hopper-v5", "fmer_clip", 1, 1795361221)
    assert summarize.parse_run_name("notes") is None
    assert summarize.parse_run_name("a__b__c") is None
    runs = {
        run.seed if run.script == "fmer_continuous.py" else run.script: run
        for run in [
            bench_run.Run("fmer_continuous.py", "Hopper-v5", ("--env-id", "Hopper-v5"), 2),
            bench_run.Run("fmer_kitchen.py", "N4", ("--num-tasks", "4"), 1),
            bench_run.Run("fmer_multigoal.py", "default", (), 1),
        ]
    }
    assert bench_run.run_name_stable(runs[2], ["--exp-name", "x"]) == "Hopper-v5__x__2"
    assert bench_run.run_name_stable(runs["fmer_kitchen.py"], []) == "FrankaKitchen-v1-N4__fmer_kitchen__1"
    assert bench_run.run_name_stable(runs["fmer_multigoal.py"], []) == "MultiGoal__fmer_multigoal__1"
    for limit, seconds in [
        ("10", 600),
        ("10:30", 630),
        ("1:00:00", 3600),
        ("1-00:00:00", 86400),
        ("2-3", 183600),
        ("1-2:3", 93780),
        ("infinite", None),
    ]:
        assert bench_run.slurm_seconds(limit) == seconds, limit
    for preset in ("mujoco", "kitchen", "ablations"):
        plan = bench_run.grid(bench_run.preset_plan(preset), (1, 2))
        names = [bench_run.run_name_stable(run, []) for run in plan]
        assert len(set(names)) == len(names), preset
        assert all(summarize.parse_run_name(name) for name in names)


# ---- the cluster ----


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld, slurmd), so that another cluster on the machine is no clash."""
    for port in range(27817, 28817, 2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair in 27817..28817")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A started one-node cluster: the environment for sbatch, squeue and scontrol (SLURM_CONF)."""
    if shutil.which("bash") is None:
        unavailable("no bash")
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "benchmark" / "slurm_cluster.sh"
    env = dict(os.environ, FMER_SLURM_PORT=str(free_port_pair()), FMER_SLURM_NO_INSTALL="1")
    start = subprocess.run(["bash", str(script), "start", str(state)], env=env, capture_output=True, text=True, timeout=900)
    if start.returncode == 3:  # not root, or slurm-wlm and munge missing (apt-get install slurm-wlm munge)
        unavailable(f"no Slurm here ({start.stderr.strip().splitlines()[-1]}): apt-get install slurm-wlm munge")
    assert start.returncode == 0, f"the one-node cluster did not start:\n{start.stdout}\n{start.stderr}"
    try:
        yield dict(env, SLURM_CONF=str(state / "slurm.conf"))
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], env=env, capture_output=True, timeout=120)


def squeue(env: dict, job: str) -> list[str]:
    """The array's tasks still in the queue: `{job}_{index} {state}` lines."""
    out = subprocess.run(
        ["squeue", "--noheader", "--jobs", job, "--format=%i %T"], env=env, capture_output=True, text=True, timeout=30
    )
    return out.stdout.split("\n") if out.returncode == 0 and out.stdout.strip() else []


def last_step(output: Path) -> int:
    """The last step a task's output names (its progress and eval lines: `step N/...`, `step N: ...`)."""
    steps = re.findall(r"^step (\d+)[/:]", output.read_text() if output.exists() else "", re.MULTILINE)
    return int(steps[-1]) if steps else -1


def wait_for(condition, timeout: float, what: str, diagnose) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}", pytrace=False)
        time.sleep(2)


SCRIPTS = ("fmer_continuous.py", "benchmark/sac_continuous.py")  # one array task each


TOTAL, EVAL, LEARNING_STARTS = 600, 200, 200
TINY = [
    "--total-timesteps",
    str(TOTAL),
    "--learning-starts",
    str(LEARNING_STARTS),
    "--eval-frequency",
    str(EVAL),
    "--eval-episodes",
    "2",
    "--checkpoint-frequency",
    "100",
    "--hidden-dim",
    "32",
    "--num-candidates",
    "4",
    "--ode-steps",
    "2",
    "--batch-size",
    "64",
    "--buffer-size",
    "5000",
    "--log-frequency",
    "50",
    "--progress-seconds",
    "2",
    "--no-cuda",
]


# A task's first start stops inside its training env's step PAUSE_AT (after its save and its evaluation at step 400)
# until a signal comes, so the requeue finds it mid-run however fast the machine is: the task runs the script through
# this driver. The training env: FMER's vector env of 1 (the evaluation has 2), SAC's (SB3's DummyVecEnv).
PAUSE_AT = LEARNING_STARTS + EVAL + 1
STATE_FILES = ("state.pt", "state.json")  # FMER's, SAC's (the file that names its model and buffer files)
PAUSE_DRIVER = """import os, runpy, signal, sys, time
import gymnasium as gym
script, args = sys.argv[1], sys.argv[2:]
run_name = args[args.index("--run-name") + 1]
if not any(os.path.exists(f"runs/{run_name}/{name}") for name in %r):
    signals, count, install = [], [0], signal.signal
    def noted(signum, handler):  # the script's own handler, and a note that a signal came
        return install(signum, lambda n, frame: (signals.append(n), handler(n, frame)))
    def pause():
        count[0] += 1
        if count[0] == %d:
            open(f"runs/{run_name}/paused", "w").close()
            while not signals:
                time.sleep(0.05)
    step = gym.vector.SyncVectorEnv.step
    def paused_step(self, actions):
        if self.num_envs == 1:
            pause()
        return step(self, actions)
    signal.signal, gym.vector.SyncVectorEnv.step = noted, paused_step
    if script.endswith("sac_continuous.py"):
        from stable_baselines3.common.vec_env import DummyVecEnv
        step_wait = DummyVecEnv.step_wait
        DummyVecEnv.step_wait = lambda self: (pause(), step_wait(self))[1]
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
""" % (STATE_FILES, PAUSE_AT)


@pytest.mark.slow
def test_slurm_array_is_requeued_and_resumes(slurm, tmp_path):
    for script in SCRIPTS:
        if not bench_run.RESUME_FLAGS <= (bench_run.declared_flags(ROOT / script) or set()):
            pytest.fail(
                f"{script} has no --resume switch or --checkpoint-frequency: the Slurm array needs them", pytrace=False
            )
    started = time.time()
    # a copy of the repository's scripts: the tasks write their runs/ there, not in the checkout
    repo = tmp_path / "repo"
    (repo / "benchmark").mkdir(parents=True)
    for name in (*SCRIPTS, "benchmark/run.py", "benchmark/summarize.py"):
        shutil.copy(ROOT / name, repo / name)
    out_dir = tmp_path / "slurm"
    (repo / "pause_driver.py").write_text(PAUSE_DRIVER)
    python = repo / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {repo / "pause_driver.py"} "$@"\n')
    python.chmod(0o755)
    write = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmark" / "run.py"),
            "--scripts",
            *SCRIPTS,
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--slurm",
            "--slurm-dir",
            str(out_dir),
            "--job-name",
            "fmertest",
            "--gpus-per-task",
            "0",
            "--cpus-per-task",
            "1",
            "--mem",
            "2G",
            "--time",
            "20",
            "--signal-seconds",
            "60",
            "--python",
            str(python),
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert write.returncode == 0, write.stderr
    assert "note: benchmark/sac_continuous.py takes no --num-candidates: not passed to it" in write.stderr
    sbatch_file = out_dir / "fmertest.sbatch"
    text = sbatch_file.read_text()
    for option in ("--requeue", "--signal=B:USR1@60", "--open-mode=append", "--mem=2G"):
        assert f"#SBATCH {option}\n" in text
    names = [f"Pendulum-v1__{Path(script).stem}__1" for script in SCRIPTS]
    assert "--checkpoint-frequency 50000" not in text  # the user's --checkpoint-frequency 100 stands
    for name in names:  # each task resumes its own run folder
        assert f"--no-cuda --run-name {name} --resume)" in text

    submit = subprocess.run(
        ["sbatch", "--parsable", str(sbatch_file)], env=slurm, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    outputs = [out_dir / f"fmertest_{job}_{i}.out" for i in range(len(SCRIPTS))]
    runs = [repo / "runs" / name for name in names]
    logs = Path(slurm["SLURM_CONF"]).parent / "log"

    def diagnose() -> str:
        parts = [f"squeue: {squeue(slurm, job)}"]
        for path in [*outputs, logs / "slurmctld.log", logs / "slurmd.log"]:
            tail = "\n".join(path.read_text().splitlines()[-25:]) if path.exists() else "(none)"
            parts.append(f"--- {path}\n{tail}")
        return "\n".join(parts)

    # preempt each task mid-run: it has learnt, saved its state and evaluated, and waits in step PAUSE_AT for the signal
    for i, run in enumerate(runs):
        wait_for(lambda: (run / "paused").exists(), 300, f"task {i} to pause at step {PAUSE_AT}", diagnose)
        assert any((run / name).exists() for name in STATE_FILES), diagnose()
        assert last_step(outputs[i]) >= LEARNING_STARTS + EVAL, diagnose()
        requeue = subprocess.run(["scontrol", "requeue", f"{job}_{i}"], env=slurm, capture_output=True, text=True, timeout=60)
        assert requeue.returncode == 0, requeue.stderr
    wait_for(lambda: not squeue(slurm, job), 600, "the array to finish", diagnose)

    expected = list(range(EVAL, TOTAL + 1, EVAL))
    for output, run in zip(outputs, runs):
        log = output.read_text()
        assert "restart 1)" in log, f"{run.name} was not started again\n{diagnose()}"
        before, after = log.split("restart 1)", 1)
        assert "DUE TO JOB REQUEUE" in before, diagnose()
        saved = re.search(r"^SIGTERM: stopped at step (\d+)", before, re.MULTILINE)  # saved on Slurm's SIGTERM
        resumed = re.search(r", resumed at step (\d+)$", after, re.MULTILINE)
        assert saved and resumed, f"{run.name} did not save on SIGTERM and resume\n{diagnose()}"
        assert int(resumed.group(1)) == int(saved.group(1)) == PAUSE_AT, (saved.group(0), resumed.group(0))
        assert f"done: {TOTAL} steps" in after, diagnose()

        # the resumed start reopened the run with a SessionLog START past step 0 (purge_step = saved step + 1)
        files = sorted(run.glob("events.out.tfevents.*"))
        assert len(files) == 2, files
        starts = [
            event.step
            for event in EventFileLoader(str(files[1])).Load()
            if event.HasField("session_log") and event.session_log.status == event.session_log.START
        ]
        assert starts == [PAUSE_AT + 1], (run.name, starts)
        loaded = summarize.load_run(run)
        assert not isinstance(loaded, str), f"{run.name}: {loaded}"
        assert loaded.steps.tolist() == expected, run.name  # each eval point once
        assert np.isfinite(loaded.values).all()

    groups, notes = summarize.collect(repo / "runs", 0.1)
    assert notes == []
    assert sorted((g.exp_name, g.env, g.budget, [r.seed for r in g.runs]) for g in groups) == [
        ("fmer_continuous", "Pendulum-v1", TOTAL, [1]),
        ("sac_continuous", "Pendulum-v1", TOTAL, [1]),
    ]
    summary = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmark" / "summarize.py"),
            "--runs-dir",
            str(repo / "runs"),
            "--out",
            str(tmp_path / "summary.md"),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summary.returncode == 0, summary.stderr
    for name in ("fmer_continuous", "sac_continuous"):
        assert f"| {name} | Pendulum-v1 |" in summary.stdout
    print(f"Slurm array of FMER and SAC, each requeued once: {time.time() - started:.0f} s")


FAKE_RUN = """import signal, sys, time
got = []
for number in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(number, lambda n, frame: got.append(n))
print("started", flush=True)
for _ in range(600):
    time.sleep(0.05)
    if got:
        print("saved", flush=True)
        sys.exit(128 + got[0])
"""


@pytest.mark.parametrize("signal_name, code, requeued", [("USR1", 138, True), ("TERM", 143, False)])
def test_array_task_passes_signals_on(tmp_path, signal_name, code, requeued):
    """No cluster: the batch shell gets the signal (B:USR1 near the time limit; TERM), passes it to the
    run, waits for it to save and exit, and requeues the task itself only after USR1."""
    (tmp_path / "fake.py").write_text(FAKE_RUN)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake.py"} "$@"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    for path in (python, bin_dir / "scontrol"):
        path.chmod(0o755)
    write = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmark" / "run.py"),
            "--scripts",
            "benchmark/sac_continuous.py",
            "--env-ids",
            "Pendulum-v1",
            "--seeds",
            "1",
            "--slurm",
            "--slurm-dir",
            str(tmp_path),
            "--python",
            str(python),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert write.returncode == 0, write.stderr
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", SLURM_JOB_ID="4242", PATH=f"{bin_dir}:{os.environ['PATH']}")
    task = subprocess.Popen(["bash", str(tmp_path / "sac_continuous.sbatch")], env=env, stdout=subprocess.PIPE, text=True)
    assert "array task 0" in task.stdout.readline()
    assert task.stdout.readline() == "started\n"
    task.send_signal(getattr(signal, f"SIG{signal_name}"))
    rest = task.communicate(timeout=30)[0]
    assert task.returncode == code
    assert "saved" in rest
    scontrol = tmp_path / "scontrol.args"
    assert (scontrol.read_text() if scontrol.exists() else None) == ("requeue 4242\n" if requeued else None)


def test_slurm_flags_of_a_task_are_not_pass_through(tmp_path):
    write = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmark" / "run.py"),
            "--scripts",
            "fmer_continuous.py",
            "--seeds",
            "1",
            "--slurm",
            "--slurm-dir",
            str(tmp_path),
            "--run-name",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert write.returncode != 0 and "--run-name is set per array task" in write.stderr


def test_readme_shows_the_array_tail_as_written():
    readme = (ROOT / "benchmark" / "README.md").read_text()
    shown = re.search(r"^restarts=.*?^exit \"\$code\"\n", readme, re.MULTILINE | re.DOTALL)
    assert shown and shown.group(0) == bench_run.SLURM_TAIL
