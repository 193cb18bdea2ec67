"""Resume (fmer_continuous.py; its copies share the functions, test_ablations.py holds them to the parent's text).

The contract: `--run-name NAME --resume` continues runs/NAME/state.pt if it exists and starts the run otherwise;
`--checkpoint-frequency N` saves the state every N steps, at the end and on SIGTERM/SIGUSR1/a first Ctrl-C, which stop
the run at the end of the step with exit 128 + signal. A resumed run starts a new episode with its generators seeded
from (seed, step): it is not the uninterrupted run bit for bit, but one state file always resumes as the same run.

The stop is made deterministic by a driver that runs the script in-process (runpy) and signals itself after a chosen
number of training vector steps, as Slurm's SIGTERM/SIGUSR1 or a Ctrl-C would.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fmer_continuous as fm

ROOT = Path(__file__).resolve().parents[1]
# Pendulum-v1 episodes are 200 steps: step 150 is mid-episode, after learning starts at 100.
TINY = "--env-id Pendulum-v1 --learning-starts 100 --hidden-dim 16 --num-candidates 4 --ode-steps 2 --batch-size 16"
TINY = [*TINY.split(), *"--log-frequency 25 --eval-frequency 100 --eval-episodes 2 --seed 5".split()]
JOB = [*TINY, "--total-timesteps", "300", "--run-name", "job", "--resume", "--checkpoint-frequency", "1000"]
DRIVER = """
import os, runpy, signal, sys
import gymnasium as gym
stop_at, signums, script = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3]
step, count = gym.vector.SyncVectorEnv.step, [0]
def counted_step(self, actions):
    result = step(self, actions)
    if self.num_envs == 1:  # the training env (the tests evaluate over 2 episodes, one env each)
        count[0] += 1
        if count[0] == stop_at:
            for signum in signums:
                os.kill(os.getpid(), signum)
    return result
gym.vector.SyncVectorEnv.step = counted_step
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def run(args, cwd, stop_at=None, signums=(signal.SIGTERM,), timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "fmer_continuous.py")
    driver = [sys.executable, "-c", DRIVER, str(stop_at), ",".join(str(int(s)) for s in signums), script]
    command = [sys.executable, script, *args] if stop_at is None else [*driver, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def scalars(run_dir: Path) -> dict:
    """Every (tag, step) TensorBoard shows, with the purge rule of a resumed run applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A job stopped mid-episode at step 150 by two SIGTERMs (Slurm's requeue sends TERM twice)."""
    cwd = tmp_path_factory.mktemp("stopped")
    proc = run(JOB, cwd, stop_at=150, signums=(signal.SIGTERM, signal.SIGTERM))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "SIGTERM: stopped at step 150"
    assert torch.load(cwd / "runs/job/state.pt", weights_only=True)["counters"]["global_step"] == 150
    return cwd


def resumed_copy(stopped: Path, dest: Path) -> subprocess.CompletedProcess:
    shutil.copytree(stopped / "runs", dest / "runs")
    return run(JOB, dest)


@pytest.mark.slow
def test_the_same_command_continues_a_stopped_job_to_the_end_and_two_resumes_are_the_same_run(stopped, tmp_path):
    proc, other = resumed_copy(stopped, tmp_path / "a"), resumed_copy(stopped, tmp_path / "b")
    assert proc.returncode == 0 and other.returncode == 0, proc.stderr[-3000:] + other.stderr[-3000:]
    assert "resumed at step 150" in proc.stdout
    logged = scalars(tmp_path / "a/runs/job")
    assert [s for s, _ in logged["eval/episodic_return"]] == [100, 200, 300]  # each once: 100 before the stop
    losses = [s for s, _ in logged["losses/qf_loss"]]
    assert losses == sorted(set(losses)) and losses[0] == 100 and losses[-1] == 300  # no step twice, none lost
    saved = torch.load(tmp_path / "a/runs/job/state.pt", weights_only=True)  # the end saves too
    assert saved["counters"]["global_step"] == 300 and saved["replay_buffer"]["size"] == 300
    # one state file resumes as one run
    logged_b = scalars(tmp_path / "b/runs/job")
    assert "losses/wcfm_loss" in logged and "eval/episodic_return" in logged
    for tag in logged.keys() - {"charts/SPS"}:
        assert logged[tag] == logged_b[tag], tag
    assert [s for s, _ in logged["charts/SPS"]] == [s for s, _ in logged_b["charts/SPS"]]
    again = run(JOB, tmp_path / "a")  # a finished job, resubmitted, ends at once
    assert again.returncode == 0 and "eval return" not in again.stdout, again.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signums, code, saved",
    [
        ((signal.SIGUSR1,), 128 + signal.SIGUSR1, True),  # Slurm's time-limit warning
        ((signal.SIGINT,), 128 + signal.SIGINT, True),  # Ctrl-C: the step ends, the state is saved
        ((signal.SIGINT, signal.SIGINT), -signal.SIGINT, False),  # a second Ctrl-C stops at once
    ],
)
def test_stop_signals(tmp_path, signums, code, saved):
    proc = run(JOB, tmp_path, stop_at=50, signums=signums)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert (tmp_path / "runs/job/state.pt").exists() == saved


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("whole")
    proc = run([*TINY, "--total-timesteps", "300", "--run-name", "whole"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "whole"


@pytest.mark.slow
def test_a_plain_run_writes_only_its_log(whole_run):
    assert [p.name.split(".")[0] for p in whole_run.iterdir()] == ["events"]


@pytest.mark.slow
def test_sps_leaves_out_every_window_that_holds_the_first_updates(whole_run):
    # TINY: learning starts at 100, logs every 25; the fast path's first calls (compile, 3 warm-ups, capture) fall in
    # steps 100-107. The window (75, 100] holds the first update: a learning-starts that is a multiple of the log
    # frequency (the defaults) must not log it.
    assert [s for s, _ in scalars(whole_run)["charts/SPS"]] == [25, 50, 75, *range(150, 301, 25)]


def trained_parts(seed: int):
    """A tiny learner, its optimizers after one update of each, and a filled buffer."""
    torch.manual_seed(seed)
    actor, critic, target = fm.VelocityField(3, 1, 8), fm.TwinQ(3, 1, 8), fm.TwinQ(3, 1, 8)
    log_alpha, log_beta = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    lr = torch.tensor(3e-4)
    opts = [torch.optim.Adam(actor.parameters(), lr=lr), torch.optim.Adam(critic.parameters(), lr=3e-4)]
    opts += [torch.optim.Adam([log_alpha], lr=3e-3), torch.optim.Adam([log_beta], lr=3e-2)]
    rb = fm.ReplayBuffer(10, 3, 1, torch.device("cpu"))
    for i in range(13):  # wraps: pos 3, size 10
        rb.add([[i, i, i]], [[i + 1] * 3], [[0.5]], [float(i + seed)], [0.0])  # rewards differ by seed
    batch = rb.sample(4)
    fm.update_critic(batch, actor, critic, target, opts[1], 0.99, 0.005, 4, 2)
    fm.update_actor(batch[0], actor, critic, opts[0], log_alpha, opts[2], log_beta, opts[3], 4, 2, 2.0, torch.tensor(0.0))
    learner = {"actor": actor, "critic": critic, "target_critic": target, "log_alpha": log_alpha, "log_beta": log_beta}
    return learner, opts, rb, lr


def test_a_saved_state_restores_every_part_and_keeps_the_runs_lr_tensor(tmp_path):
    learner, opts, rb, _ = trained_parts(0)
    args = fm.Args(env_id="Pendulum-v1")
    extra = {"optimizers": [o.state_dict() for o in opts], "replay_buffer": rb.state_dict()}
    fm.save(str(tmp_path / "state.pt"), args, learner, **extra, counters={"global_step": 7}, device="cpu")
    fresh, fresh_opts, fresh_rb, lr = trained_parts(1)  # other weights, other Adam moments
    fm.restore_state(fm.load_state(str(tmp_path / "state.pt"), torch.device("cpu")), fresh, fresh_opts, fresh_rb)
    for name, part in learner.items():
        if isinstance(part, torch.Tensor):
            assert torch.equal(part, fresh[name]), name
        else:
            for (key, a), b in zip(part.state_dict().items(), fresh[name].state_dict().values()):
                assert torch.equal(a, b), (name, key)
    for a, b in zip(opts, fresh_opts):
        for pa, pb in zip(a.state.values(), b.state.values()):
            assert all(torch.equal(pa[k], pb[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert fresh_opts[0].param_groups[0]["lr"] is lr  # the tensor the loop fills, not the loaded one
    assert (fresh_rb.pos, fresh_rb.size) == (3, 10) and torch.equal(fresh_rb.rewards, rb.rewards)
    assert rb.state_dict()["obs"].untyped_storage().nbytes() == 10 * 3 * 4  # the filled rows only


def test_a_buffer_resumed_into_a_larger_one_appends_after_its_rows():
    """A longer --total-timesteps on resume makes a larger buffer: a full one that had wrapped must not leave unwritten
    rows inside the sampled range (they would be garbage: NaN losses)."""
    small = fm.ReplayBuffer(3, 2, 1, torch.device("cpu"))
    for i in range(4):  # wrapped: pos 1, size 3
        small.add([[i, i]], [[i, i]], [[0.0]], [float(i)], [0.0])
    bigger = fm.ReplayBuffer(6, 2, 1, torch.device("cpu"))
    bigger.load_state_dict(small.state_dict())
    bigger.add([[9, 9]], [[9, 9]], [[0.0]], [9.0], [0.0])
    assert bigger.rewards[:4].tolist() == [3.0, 1.0, 2.0, 9.0] and bigger.size == 4  # rows past size are never read


def test_non_finite_weights_are_never_saved(tmp_path, capsys):
    learner, *_ = trained_parts(0)
    with torch.no_grad():
        learner["actor"].obs_layer.weight[0, 0] = float("nan")
    fm.save(str(tmp_path / "model"), fm.Args(), learner)
    assert not (tmp_path / "model").exists() and "not finite" in capsys.readouterr().err


def test_bad_state_files_exit_with_one_line(tmp_path):
    learner, *_ = trained_parts(0)
    good = tmp_path / "state.pt"
    fm.save(str(good), fm.Args(), learner, counters={}, device="cpu")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    state = torch.load(good, weights_only=True)
    torch.save({**state, "script": "fmer_kitchen.py"}, tmp_path / "kitchen.pt")
    torch.save({**state, "device": "cuda"}, tmp_path / "cuda.pt")
    cases = {"cut.pt": "cannot read", "kitchen.pt": "not a training state", "cuda.pt": "not a training state"}
    cases[str(ROOT / "README.md")] = "cannot read"
    for name, message in cases.items():
        with pytest.raises(SystemExit) as stop:
            fm.load_state(str(tmp_path / name), torch.device("cpu"))
        assert str(stop.value).startswith("error:") and message in str(stop.value) and "\n" not in str(stop.value), name


def test_resume_without_run_name_is_one_line():
    with pytest.raises(SystemExit, match=r"^error: --resume needs --run-name NAME: the run's folder under runs/$"):
        fm.check_args(fm.Args(env_id="Pendulum-v1", resume=True, ess_target=4.0), torch.device("cpu"))


def test_sigkill_during_a_state_write_keeps_the_previous_state(tmp_path):
    """save writes a temporary file and renames it: killed mid-write, the old file stays whole. The second write stops
    halfway (torch.save writes half the file, then waits), so the kill lands mid-write on any machine."""
    writer = f"""
import os, sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
import fmer_continuous as fm
learner = {{"actor": torch.nn.Linear(2, 2), "critic": torch.nn.Linear(2, 2)}}
fm.save({str(tmp_path / "state.pt")!r}, fm.Args(), learner, blob=torch.full((1_000_000,), 0.0))
real_save = torch.save
def half_save(obj, path):
    real_save(obj, path)
    os.truncate(path, os.path.getsize(path) // 2)
    print("mid-write", flush=True)
    time.sleep(600)
torch.save = half_save
fm.save({str(tmp_path / "state.pt")!r}, fm.Args(), learner, blob=torch.full((1_000_000,), 1.0))
"""
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mid-write"
    assert (tmp_path / "state.pt.tmp").exists()
    proc.kill()
    proc.wait()
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert torch.equal(loaded["blob"], torch.zeros(1_000_000))


def test_the_resume_seed_depends_on_seed_and_step():
    seeds = {int(np.random.SeedSequence([seed, step]).generate_state(1)[0]) for seed in (1, 2) for step in (0, 150)}
    assert len(seeds) == 4
