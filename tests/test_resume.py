"""Exact resume (fmer_continuous.py and its copies): a run stopped and resumed is the same run.

The stop is made deterministic by a driver that runs the script in-process (runpy) and signals
itself after a chosen number of training vector steps; the script's own signal handling then
saves at the end of that step, exactly as it does for Slurm's SIGTERM/SIGUSR1 or Ctrl-C.
"""

import hashlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fmer_continuous as fm

ROOT = Path(__file__).resolve().parents[1]
# Pendulum-v1 episodes are exactly 200 steps: steps 200, 400, ... are episode boundaries.
TINY = [
    "--env-id",
    "Pendulum-v1",
    "--learning-starts",
    "100",
    "--hidden-dim",
    "16",
    "--num-candidates",
    "4",
    "--ode-steps",
    "2",
    "--batch-size",
    "16",
    "--log-frequency",
    "25",
    "--eval-frequency",
    "100",
    "--eval-episodes",
    "2",
    "--seed",
    "5",
]
DRIVER = """
import os, runpy, signal, sys
import gymnasium as gym
stop_at, signum, script = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
step, count = gym.vector.SyncVectorEnv.step, [0]
def counted_step(self, actions):
    result = step(self, actions)
    if self.num_envs == 1:  # the training env (the tests evaluate over 2 episodes, one env each)
        count[0] += 1
        if count[0] == stop_at:
            os.kill(os.getpid(), signum)
    return result
gym.vector.SyncVectorEnv.step = counted_step
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def run(args, cwd, script="fmer_continuous.py", stop_at=None, signum=signal.SIGTERM, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = (
        [sys.executable, str(ROOT / script), *args]
        if stop_at is None
        else [sys.executable, "-c", DRIVER, str(stop_at), str(int(signum)), str(ROOT / script), *args]
    )
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def scalars(run_dir: Path) -> dict:
    """Every (tag, step) TensorBoard shows, with the purge rule of a resumed run applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag != "charts/SPS"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same(a, b, where=""):
    """Bitwise equality of nested states (tensors, dicts, lists, numbers; NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("whole")
    proc = run([*TINY, "--total-timesteps", "600", "--run-name", "whole"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "runs" / "whole"


@pytest.fixture(scope="module")
def uninterrupted(whole_run):
    return scalars(whole_run)


def sps_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("charts/SPS")]


@pytest.mark.slow
def test_sigterm_at_episode_boundary_then_resume_is_the_same_run(tmp_path, uninterrupted):
    first = run([*TINY, "--total-timesteps", "600", "--run-name", "cut"], tmp_path, stop_at=400)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert "SIGTERM at step 400: state saved to runs/cut/state.pt" in first.stderr
    assert torch.load(tmp_path / "runs/cut/state.pt", weights_only=True)["counters"]["global_step"] == 400
    second = run(["--resume", "runs/cut"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming runs/cut at step 400" in second.stdout
    resumed = scalars(tmp_path / "runs" / "cut")
    assert resumed.keys() == uninterrupted.keys()
    for tag in uninterrupted:  # every step once, every value bitwise equal: losses, evaluations, episodes
        assert resumed[tag] == uninterrupted[tag], tag
    assert [s for s, _ in resumed["eval/episodic_return"]] == [100, 200, 300, 400, 500, 600]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_resumes_from_it_and_drops_the_lost_steps(tmp_path, uninterrupted):
    # Saved at 400 (--checkpoint-frequency), killed without warning at 500: what the killed run
    # logged for steps 401-500 must not show twice, and the continuation from 400 is exact.
    args = [*TINY, "--total-timesteps", "600", "--run-name", "killed", "--checkpoint-frequency", "400"]
    first = run(args, tmp_path, stop_at=500, signum=signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "runs/killed/state.pt", weights_only=True)["counters"]["global_step"] == 400
    second = run(["--resume", "auto", "--run-name", "killed"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = scalars(tmp_path / "runs" / "killed")
    for tag in uninterrupted:
        assert resumed[tag] == uninterrupted[tag], tag


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [
        "fmer_continuous.py",
        "fmer_kitchen.py",
        "fmer_multigoal.py",
        # the other copies differ from these only in the update (test_ablations.py)
        "ablations/fmer_no_entropy.py",
        "ablations/fmer_ode_solver.py",
    ],
)
def test_state_at_the_resume_point_is_the_saved_one(tmp_path, script):
    """Stopped mid-episode at step 150, resumed with nothing left to run: the resumed process
    writes back the state it loaded, bitwise (all but the observation, since the cut episode is
    replaced by a new one)."""
    if "kitchen" in script:
        args = [
            "--num-tasks",
            "1",
            "--learning-starts",
            "100",
            "--hidden-dim",
            "16",
            "--num-candidates",
            "4",
            "--ode-steps",
            "2",
            "--batch-size",
            "16",
            "--eval-frequency",
            "100",
            "--eval-episodes",
            "2",
        ]
    elif "multigoal" in script:
        args = [
            "--learning-starts",
            "100",
            "--hidden-dim",
            "16",
            "--num-candidates",
            "4",
            "--ode-steps",
            "2",
            "--batch-size",
            "16",
            "--eval-frequency",
            "100",
            "--eval-episodes",
            "2",
        ]
    else:
        args = TINY
    first = run([*args, "--total-timesteps", "150", "--run-name", "r"], tmp_path, script, stop_at=150)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    saved = torch.load(tmp_path / "runs/r/state.pt", weights_only=True)
    os.rename(tmp_path / "runs/r/state.pt", tmp_path / "saved.pt")
    second = run(["--resume", str(tmp_path / "saved.pt")], tmp_path, script)
    assert second.returncode == 0, second.stderr[-3000:]
    again = torch.load(tmp_path / "state.pt", weights_only=True)  # the run folder is where its state lies
    assert saved["counters"]["global_step"] == again["counters"]["global_step"] == 150
    del saved["args"]["resume"], again["args"]["resume"]
    assert_same(saved, again)
    assert saved["replay_buffer"]["size"] == 150 and saved["optimizers"][0]["state"]  # a learner that had learned


@pytest.mark.slow
def test_bad_resumes_give_one_line_and_overwrite_nothing(tmp_path):
    first = run([*TINY, "--total-timesteps", "150", "--run-name", "r"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    state = tmp_path / "runs/r/state.pt"
    (tmp_path / "truncated.pt").write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    foreign = torch.load(state, weights_only=True)
    foreign["script"] = "fmer_kitchen.py"
    torch.save(foreign, tmp_path / "kitchen.pt")
    before = digest(state)
    cases = [
        (["--resume", "truncated.pt"], "cannot read training state"),
        (["--resume", str(ROOT / "README.md")], "cannot read training state"),
        (["--resume", "missing.pt"], "training state not found"),
        (["--resume", "kitchen.pt"], "is a training state of fmer_kitchen.py, not of fmer_continuous.py"),
        (["--resume", "runs/r", "--hidden-dim", "64"], "--hidden-dim 64 conflicts with the resumed run's 16"),
        (["--resume", "runs/r", "--total-timesteps", "100"], "--total-timesteps can only rise"),
        (["--resume", "auto"], "--resume auto needs --run-name"),
        ([*TINY, "--run-name", "r"], "runs/r already holds a run"),
    ]
    for args, message in cases:
        proc = run(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), (args, proc.stderr[-2000:])
        assert message in lines[0], (args, lines[0])
    assert digest(state) == before


@pytest.mark.slow
def test_resume_auto_starts_then_continues_and_total_timesteps_can_rise(tmp_path):
    first = run([*TINY, "--total-timesteps", "150", "--resume", "auto", "--run-name", "job"], tmp_path)
    assert first.returncode == 0 and "resuming" not in first.stdout, first.stderr[-3000:]
    second = run(["--resume", "auto", "--run-name", "job", "--total-timesteps", "250"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming runs/job at step 150" in second.stdout
    steps = [s for s, _ in scalars(tmp_path / "runs/job")["eval/episodic_return"]]
    assert steps == [100, 150, 200, 250]


def test_sigkill_during_a_state_write_keeps_the_previous_state(tmp_path):
    """save_atomically writes a temporary file and renames it: killed mid-write, the old file stays whole. The second
    write stops halfway (torch.save writes half the file, then waits), so the kill lands mid-write on any machine."""
    writer = f"""
import os, sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
from fmer_continuous import save_atomically
state = {{"actor": {{"w": torch.ones(3)}}, "critic": {{}}, "log_alpha": torch.zeros(()), "log_beta": torch.zeros(())}}
save_atomically({{**state, "version": 0, "blob": torch.full((1_000_000,), 0.0)}}, {str(tmp_path / "state.pt")!r})
real_save = torch.save
def half_save(obj, path):
    real_save(obj, path)
    os.truncate(path, os.path.getsize(path) // 2)
    print("mid-write", flush=True)
    time.sleep(600)
torch.save = half_save
save_atomically({{**state, "version": 1, "blob": torch.full((1_000_000,), 1.0)}}, {str(tmp_path / "state.pt")!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mid-write"
    assert (tmp_path / "state.pt.tmp").exists()
    proc.kill()
    proc.wait()
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["version"] == 0 and torch.equal(loaded["blob"], torch.zeros(1_000_000))


def test_replay_buffer_state_round_trip_and_growth():
    rb = fm.ReplayBuffer(5, 2, 1, torch.device("cpu"))
    for i in range(7):  # wraps: pos 2, size 5
        rb.add([[i, i]], [[i + 1, i + 1]], [[0.5]], [float(i)], [0.0])
    again = fm.ReplayBuffer(5, 2, 1, torch.device("cpu"))
    again.load_state_dict(rb.state_dict())
    assert (again.pos, again.size) == (2, 5) and torch.equal(again.rewards, rb.rewards)
    # a buffer that never wrapped (capacity = the old --total-timesteps) continues after its end when enlarged
    small = fm.ReplayBuffer(3, 2, 1, torch.device("cpu"))
    for i in range(3):
        small.add([[i, i]], [[i, i]], [[0.0]], [float(i)], [0.0])
    bigger = fm.ReplayBuffer(6, 2, 1, torch.device("cpu"))
    bigger.load_state_dict(small.state_dict())
    bigger.add([[9, 9]], [[9, 9]], [[0.0]], [9.0], [0.0])
    assert bigger.rewards[:4].tolist() == [0.0, 1.0, 2.0, 9.0] and bigger.size == 4  # rows past size are never read
    # the saved tensors hold the filled part only, not the whole preallocated storage
    assert rb.state_dict()["obs"].untyped_storage().nbytes() == 5 * 2 * 4


@pytest.mark.slow
def test_sps_leaves_out_every_window_that_holds_the_first_updates(whole_run):
    # TINY: learning starts at 100, logs every 25; the fast path's first calls (compile, 3 warm-ups, capture) fall in
    # steps 100-107. The window (75, 100] holds the first update: a learning-starts that is a multiple of the log
    # frequency (the defaults) must not log it.
    assert sps_steps(whole_run) == [25, 50, 75, *range(150, 601, 25)]


def test_load_optimizer_keeps_the_runs_lr_tensor_and_fits_capturable_to_the_device():
    param = torch.nn.Parameter(torch.ones(3))
    saving = torch.optim.Adam([param], lr=torch.tensor(1e-3), capturable=False)
    param.grad = torch.ones(3)
    saving.step()
    saved = saving.state_dict()
    saved["param_groups"][0]["capturable"] = True  # as a CUDA run writes it
    saved["param_groups"][0]["lr"] = torch.tensor(2.5e-4)  # the decayed rate at the save
    lr = torch.tensor(3e-4)  # the run's own tensor, which its loop fills
    resumed = torch.optim.Adam([param], lr=lr, capturable=False)
    fm.load_optimizer(resumed, saved, capturable=False)
    group = resumed.param_groups[0]
    assert group["lr"] is lr and lr.item() == pytest.approx(2.5e-4) and lr.device == param.device
    assert group["capturable"] is False and resumed.state[param]["step"].device.type == "cpu"
    param.grad = torch.ones(3)
    resumed.step()  # a capturable group on the CPU would stop here: "params and state_steps must be on supported devices"
    assert resumed.state[param]["step"].item() == 2.0
    # the other way (a CPU state resumed on a GPU, for CUDA graphs): capturable, the step count on the parameters' device
    saved["param_groups"][0]["capturable"] = False
    graphed = torch.optim.Adam([param], lr=torch.tensor(3e-4), capturable=False)
    fm.load_optimizer(graphed, saved, capturable=True)
    step = graphed.state[param]["step"]
    assert graphed.param_groups[0]["capturable"] is True and step.device == param.device and step.dtype == torch.float32


@pytest.mark.slow
def test_a_state_written_as_a_cuda_run_writes_it_resumes_on_the_cpu_as_the_same_run(tmp_path, uninterrupted):
    # A CUDA run saves capturable param groups, a device learning rate (loaded to the CPU) and the CUDA generator's
    # state. On the CPU it must resume, and exactly as the CPU-written state does (= the uninterrupted run).
    first = run([*TINY, "--total-timesteps", "600", "--run-name", "gpu"], tmp_path, stop_at=400)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    state_file = tmp_path / "runs/gpu/state.pt"
    state = torch.load(state_file, weights_only=True)
    for saved in state["optimizers"]:
        for group in saved["param_groups"]:
            group["capturable"] = True
    state["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, state_file)
    second = run(["--resume", "runs/gpu"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = scalars(tmp_path / "runs" / "gpu")
    assert resumed.keys() == uninterrupted.keys()
    for tag in uninterrupted:
        assert resumed[tag] == uninterrupted[tag], tag
    assert [s for s in sps_steps(tmp_path / "runs" / "gpu") if s > 400][0] == 450  # (400, 425] holds the first updates


@pytest.mark.slow
def test_a_state_saved_before_the_named_counters_resumes_as_the_same_run(tmp_path, uninterrupted):
    # Until 2026-12-01, state.pt held the counters as a tuple (step, updates, next log, next eval, next checkpoint,
    # last return, model step) and the observations, and its args the --eval-only and --checkpoint flags, which
    # benchmark/evaluate.py has taken over; a requeued job that meets such a file must continue it exactly. A flag
    # added since the save takes its default.
    first = run([*TINY, "--total-timesteps", "600", "--run-name", "old"], tmp_path, stop_at=400)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    state_file = tmp_path / "runs/old/state.pt"
    state = torch.load(state_file, weights_only=True)
    c = state["counters"]
    state["counters"] = (c["global_step"], c["num_updates"], 425, 500, 100_000, c["last_return"], c["model_step"])
    state["obs"] = torch.zeros(1, 3)
    state["args"].update(eval_only=False, checkpoint=None)  # flags since dropped
    del state["args"]["wandb_entity"]  # as a flag added since would be missing (its default, None, is the run's)
    torch.save(state, state_file)
    second = run(["--resume", "auto", "--run-name", "old"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming runs/old at step 400" in second.stdout
    resumed = scalars(tmp_path / "runs" / "old")
    for tag in uninterrupted:
        assert resumed[tag] == uninterrupted[tag], tag
