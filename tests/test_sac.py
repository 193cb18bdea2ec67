"""benchmark/sac_continuous.py, the SAC baseline (Stable-Baselines3's SAC): bad input, its logs, stop and resume, seeding.

Every run is tiny: Pendulum-v1, 300 steps, learning from step 100, evaluation every 150 steps on 2 episodes, CPU.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from benchmark import sac_continuous as sac  # benchmark/ is a namespace package under the repo root (pytest.ini)

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
    for tag in ("losses/critic_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss"):
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
    to the end, every evaluation logged once. Up to the stop, the run equals the plain run of the same seed."""
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

    resumed = run(tmp_path, *command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {PAUSE}" in resumed.stdout and "done: 300 steps" in resumed.stdout
    logged = scalars(run_dir)
    assert [step for step, _ in logged["eval/episodic_return"]] == [150, 300]
    assert [step for step, _ in logged["losses/critic_loss"]] == [150, 200, 250, 300]
