"""benchmark/sac_continuous.py, the SAC baseline (Stable-Baselines3's SAC): bad input, its logs, stop and resume, seeding,
and a local grid of benchmark/run.py that runs it beside FMER.

Every run is tiny: Pendulum-v1, 300 steps, learning from step 100, evaluation every 150 steps on 2 episodes, CPU.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.save_util import load_from_pkl
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from benchmark import sac_continuous as sac  # benchmark/ is a namespace package under the repo root (pytest.ini)
from benchmark import summarize

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmark" / "sac_continuous.py")
TINY = ["--env-id", "Pendulum-v1", "--total-timesteps", "300", "--learning-starts", "100", "--eval-frequency", "150"]
TINY += ["--eval-episodes", "2", "--log-frequency", "50", "--no-cuda"]
PAUSE = 201  # the stopped run's last step: one step into its second episode (Pendulum's episodes are 200 steps)
# Runs the script, pausing inside its training env's step PAUSE until a signal comes: the stop lands there however
# fast the machine is.
DRIVER = (
    """import runpy, signal, sys, time
from stable_baselines3.common.vec_env import DummyVecEnv
got, install, step_wait, count = [], signal.signal, DummyVecEnv.step_wait, [0]
def noted(signum, handler):  # the script's own handler, and a note that a signal came
    return install(signum, lambda n, frame: (got.append(n), handler(n, frame)))
def paused_step_wait(self):
    count[0] += 1
    if count[0] == %d:
        print("paused", flush=True)
        while not got:
            time.sleep(0.01)
    return step_wait(self)
signal.signal, DummyVecEnv.step_wait = noted, paused_step_wait
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    % PAUSE
)


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    (cwd / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(cwd / "tmp"))  # so a test sees what a run leaves in /tmp
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every (step, value) of every tag, over all event files in order, nothing purged."""
    logged = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    logged.setdefault(value.tag, []).append((event.step, value.tensor.float_val[0]))
    return logged


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A plain run (no state asked for): its run folder."""
    cwd = tmp_path_factory.mktemp("plain")
    result = run(cwd, *TINY, "--run-name", "plain")
    assert result.returncode == 0, result.stderr
    assert "step 150: eval return " in result.stdout and "done: 300 steps" in result.stdout
    return cwd / "runs" / "plain"


def test_bad_input_gets_one_line(tmp_path):
    (tmp_path / "runs" / "foreign").mkdir(parents=True)
    (tmp_path / "runs" / "foreign" / "state.json").write_text(json.dumps({"script": "fmer_continuous.py"}))
    result = run(tmp_path, "--resume", "--run-name", "foreign")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: runs/foreign/state.json is not a training state of sac_continuous.py")
    # the checks that command runs first, without a process each
    for check, message in [
        (lambda: sac.check_env("NoSuchEnv-v0"), "error: cannot make env 'NoSuchEnv-v0'"),
        (lambda: sac.check_env("nomodule:Foo-v0"), "error: cannot make env 'nomodule:Foo-v0': ModuleNotFoundError"),
        (lambda: sac.check_env("CartPole-v1"), "error: SAC needs a continuous (Box) action space with finite bounds"),
        (lambda: sac.check_args(sac.Args(eval_episodes=0)), "error: --eval-episodes must be at least 1, got 0"),
        (lambda: sac.check_args(sac.Args(resume=True)), "error: --resume needs --run-name NAME"),
    ]:
        with pytest.raises(SystemExit) as stop:
            check()
        assert str(stop.value).startswith(message) and "\n" not in str(stop.value), stop.value


def test_a_run_writes_our_tags_and_no_state(plain):
    logged = scalars(plain)
    assert [step for step, _ in logged["eval/episodic_return"]] == [150, 300]
    assert logged["eval/episodic_length"] == [(150, 200.0), (300, 200.0)]
    assert [step for step, _ in logged["charts/episodic_return"]] == [200]
    assert logged["charts/episodic_length"] == [(200, 200.0)]
    assert [step for step, _ in logged["charts/SPS"]] == list(range(50, 301, 50))
    for tag in ("losses/qf_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss"):
        assert [step for step, _ in logged[tag]] == [150, 200, 250, 300], tag  # from the first update on
    table = [
        value.tensor.string_val[0].decode()
        for path in plain.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
        if value.tag == "hyperparameters/text_summary"
    ]
    assert len(table) == 1 and "|total_timesteps|300|" in table[0] and "|batch_size|256|" in table[0]
    assert sorted(p.name for p in plain.iterdir() if not p.name.startswith("events.out.tfevents.")) == []
    # nothing in the temporary folder (SB3 would write its logs there) but torch's own cache
    assert [p.name for p in (plain.parents[1] / "tmp").iterdir() if not p.name.startswith("torchinductor_")] == []


def test_sigterm_saves_and_resume_continues_with_the_same_seeded_run(tmp_path, plain):
    """Stopped mid-episode by SIGTERM: exit 143 with the state of that step; the same command with --resume continues
    to the end, every evaluation logged once. Up to the stop, the run equals the plain run of the same seed; resumed
    twice, the state gives the same run; resumed with a longer budget, its buffer grows."""
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [*TINY, "--run-name", "x", "--checkpoint-frequency", "100", "--resume"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), SCRIPT, *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    while not lines or lines[-1] != "paused\n":
        lines.append(proc.stdout.readline())
        assert lines[-1], f"the run ended before step {PAUSE}: {''.join(lines)}{proc.communicate()[1]}"
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, stderr
    run_dir = tmp_path / "runs" / "x"
    assert f"SIGTERM: stopped at step {PAUSE}" in stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert state["global_step"] == PAUSE
    assert sorted(p.name for p in run_dir.glob("state_*")) == [f"state_{PAUSE}.zip", f"state_{PAUSE}_buffer.pkl"]

    stopped = scalars(run_dir)
    reference = scalars(plain)
    for tag, points in reference.items():
        if tag != "charts/SPS":
            assert stopped[tag] == [(step, value) for step, value in points if step <= PAUSE], tag

    for name in ("again", "longer"):  # the stopped run twice more: resumed the same way, and with a longer budget
        shutil.copytree(run_dir, tmp_path / "runs" / name)
    saved_buffer = load_from_pkl(run_dir / f"state_{PAUSE}_buffer.pkl")

    resumed = run(tmp_path, *command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {PAUSE}" in resumed.stdout and "done: 300 steps" in resumed.stdout
    logged = scalars(run_dir)
    assert [step for step, _ in logged["eval/episodic_return"]] == [150, 300]
    assert [step for step, _ in logged["losses/qf_loss"]] == [150, 200, 250, 300]
    again = run(tmp_path, *command[:-4], "again", *command[-3:])
    assert again.returncode == 0, again.stderr
    assert {tag: points for tag, points in scalars(tmp_path / "runs" / "again").items() if tag != "charts/SPS"} == {
        tag: points for tag, points in logged.items() if tag != "charts/SPS"
    }  # one state resumes as one run

    # --total-timesteps 400: the buffer grows to 400 rows, the saved ones first (SB3 alone would keep 300 and wrap)
    longer = run(tmp_path, *["400" if a == "300" else a for a in command[:-4]], "longer", *command[-3:])
    assert longer.returncode == 0 and "done: 400 steps" in longer.stdout, longer.stderr
    buffer = load_from_pkl(tmp_path / "runs" / "longer" / "state_400_buffer.pkl")
    assert buffer.buffer_size == 400 and (buffer.observations[:PAUSE] == saved_buffer.observations[:PAUSE]).all()
    assert [step for step, _ in scalars(tmp_path / "runs" / "longer")["eval/episodic_return"]] == [150, 300, 400]


@pytest.mark.slow
def test_a_local_grid_runs_fmer_and_sac_and_summarize_reads_both(tmp_path):
    """benchmark/run.py --scripts fmer_continuous.py benchmark/sac_continuous.py, two at a time, from a copy of the
    scripts (the runs write runs/ beside it): both finish, SAC gets none of FMER's own flags (a note for each), and
    summarize.py finds both runs with their evaluations."""
    repo = tmp_path / "repo"
    (repo / "benchmark").mkdir(parents=True)
    for name in ("fmer_continuous.py", "benchmark/sac_continuous.py", "benchmark/run.py", "benchmark/summarize.py"):
        shutil.copy(ROOT / name, repo / name)
    fmer_only = ["--hidden-dim", "32", "--num-candidates", "4", "--ode-steps", "2", "--batch-size", "64"]
    scripts = ["fmer_continuous.py", "benchmark/sac_continuous.py"]
    command = [sys.executable, str(repo / "benchmark" / "run.py"), "--scripts", *scripts, "--env-ids", "Pendulum-v1"]
    command += ["--seeds", "1", "--workers", "2", "--threads", "1", *TINY[2:], *fmer_only]  # TINY less its --env-id
    grid = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert grid.returncode == 0 and "2 ok, 0 failed" in grid.stdout, grid.stdout + grid.stderr
    dropped = [line.split(" takes no ")[1].split(":")[0] for line in grid.stderr.splitlines() if " takes no " in line]
    assert dropped == ["--hidden-dim", "--num-candidates", "--ode-steps", "--batch-size"], grid.stderr
    assert "--num-candidates" not in (repo / "benchmark" / "logs" / "Pendulum-v1__sac_continuous__1.log").read_text()
    groups, notes = summarize.collect(repo / "runs", 0.1)
    assert notes == []
    assert sorted((g.exp_name, g.budget, [r.seed for r in g.runs], g.runs[0].steps.tolist()) for g in groups) == [
        ("fmer_continuous", 300, [1], [150, 300]),
        ("sac_continuous", 300, [1], [150, 300]),
    ]
