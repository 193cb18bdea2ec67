"""--capture-video and --track as a user runs them: a real headless MuJoCo render (OSMesa) read back from the
MP4, one line on stderr for a missing OpenGL back end, and an offline W&B run that holds the synced tensorboard
metrics and continues on --resume. .ci/run installs OSMesa (libosmesa6) and wandb; where one is missing, its test skips
(under CI=true, fails)."""

import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]
WANDB_PIN = "wandb==0.31.0"  # the version the docs name
TINY = [
    "--learning-starts",
    "50",
    "--total-timesteps",
    "60",
    "--eval-frequency",
    "60",
    "--eval-episodes",
    "1",
    "--hidden-dim",
    "32",
    "--batch-size",
    "16",
    "--num-candidates",
    "4",
    "--ode-steps",
    "2",
    "--log-frequency",
    "10",
    "--no-cuda",
]

RESUME = [*TINY[:2], "--total-timesteps", "80", *TINY[4:]]


def run(script: str, args: list[str], cwd: Path, **env_changes) -> subprocess.CompletedProcess:
    """Run a script as a user would; env_changes set (or, given None, remove) environment variables."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env, check=False
    )


@pytest.fixture(scope="module")
def osmesa():
    if ctypes.util.find_library("OSMesa") is None:
        unavailable("no OSMesa library for a headless render: apt-get install libosmesa6")


@pytest.fixture(scope="module")
def wandb_installed():
    if importlib.util.find_spec("wandb") is None:
        unavailable(f"wandb is not installed (not a requirement of the scripts): pip install {WANDB_PIN}")


@pytest.mark.slow
def test_capture_video_records_the_eval_episode_headless(tmp_path, osmesa):
    import imageio.v3 as iio
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run(
        "fmer_continuous.py",
        ["--env-id", "Hopper-v5", "--run-name", "video", "--capture-video", *TINY],
        tmp_path,
        MUJOCO_GL="osmesa",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "videos" / "video").iterdir()) == ["eval_step00000060.mp4"]
    frames = iio.imread(tmp_path / "videos" / "video" / "eval_step00000060.mp4").astype(np.float32)  # [T, H, W, 3]
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.shape[0] > 5
    # exactly the evaluation episode of env 0 (one frame before each of its steps)
    events = EventAccumulator(str(tmp_path / "runs" / "video"))
    events.Reload()
    assert frames.shape[0] == events.Scalars("eval/episodic_length")[-1].value
    assert frames.std(axis=(1, 2, 3)).min() > 10.0  # every frame holds a picture, none is blank
    assert np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)).min() > 0.01  # and the hopper moves between them


@pytest.mark.slow
@pytest.mark.parametrize("script", ["fmer_continuous.py", "fmer_kitchen.py"])
def test_capture_video_without_an_opengl_back_end_is_one_line(tmp_path, script):
    # GLFW, MuJoCo's default back end, needs a display
    args = ["--env-id", "Hopper-v5"] if script == "fmer_continuous.py" else []
    proc = run(script, [*args, "--capture-video", *TINY], tmp_path, MUJOCO_GL="glfw", DISPLAY=None, WAYLAND_DISPLAY=None)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr
    assert line.startswith("error: cannot make env") and "--capture-video: set MUJOCO_GL=egl on a GPU, osmesa on a CPU" in line
    assert not (tmp_path / "runs").exists()  # it stops before the run starts


@pytest.mark.slow
def test_track_offline_syncs_the_tensorboard_log_and_resumes_the_same_run(tmp_path, wandb_installed):
    proc = run(
        "fmer_continuous.py",
        ["--env-id", "Pendulum-v1", "--run-name", "tracked", "--track", "--checkpoint-frequency", "1000", *TINY],
        tmp_path,
        WANDB_MODE="offline",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (first,) = (tmp_path / "wandb").glob("offline-run-*-tracked")  # the W&B run id is the run name
    synced = b"".join(p.read_bytes() for p in first.glob("*.wandb"))
    for tag in (b"eval/episodic_return", b"losses/qf_loss", b"losses/wcfm_loss", b"charts/ess", b"charts/SPS"):
        assert tag in synced, tag
    assert b"Pendulum-v1" in synced and b"wandb_project_name" in synced  # config=vars(args)
    # the resumed process (here with a longer budget: a run continues with its command's flags) logs to the same W&B run
    proc = run(
        "fmer_continuous.py",
        ["--env-id", "Pendulum-v1", "--run-name", "tracked", "--track", "--checkpoint-frequency", "1000", "--resume", *RESUME],
        tmp_path,
        WANDB_MODE="offline",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*-tracked"))
    assert len(runs) == 2 and b"eval/episodic_return" in b"".join(p.read_bytes() for p in runs[1].glob("*.wandb"))
