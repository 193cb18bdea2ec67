"""fmer_multigoal.py: the environment against hand-computed steps, the pictures, and a smoke run."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fmer_multigoal as mg

ROOT = Path(__file__).resolve().parents[1]


def env_at(position):
    env = mg.MultiGoalEnv()
    env.reset(seed=0)
    env.position = np.array(position, dtype=np.float64)
    return env


def test_reset_is_seeded_and_near_the_origin():
    env = mg.MultiGoalEnv()
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    starts = np.array([env.reset(seed=s)[0] for s in range(2000)])
    assert abs(starts.std() - 0.1) < 0.01 and np.abs(starts.mean(0)).max() < 0.01


def test_step_moves_and_pays_by_hand():
    env = env_at([1.0, 2.0])
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.25]))
    np.testing.assert_allclose(obs, [1.5, 1.75])
    # nearest goal (0, 5) or (5, 0): |(1.5, 1.75) - (0, 5)|^2 = 2.25 + 10.5625 = 12.8125
    assert reward == pytest.approx(-(30 * (0.25 + 0.0625) + 12.8125))
    assert not terminated and not truncated


def test_action_is_clipped_in_motion_and_cost():
    env = env_at([0.0, 0.0])
    obs, reward, _, _, _ = env.step(np.array([3.0, -0.5]))
    np.testing.assert_allclose(obs, [1.0, -0.5])
    # nearest goal (5, 0): 16 + 0.25; the cost uses the clipped action, 30 * (1 + 0.25)
    assert reward == pytest.approx(-(30 * 1.25 + 16.25))


def test_wall_at_seven():
    env = env_at([6.8, -6.5])
    obs, reward, terminated, _, _ = env.step(np.array([1.0, -1.0]))
    np.testing.assert_allclose(obs, [7.0, -7.0])
    # nearest goal of (7, -7): (5, 0) and (0, -5) are both at 4 + 49 = 53
    assert reward == pytest.approx(-(30 * 2 + 53.0))
    assert not terminated


def test_goal_pays_ten_and_terminates_within_distance_one():
    env = env_at([3.5, 0.0])
    obs, reward, terminated, _, _ = env.step(np.array([0.6, 0.0]))  # at (4.1, 0): distance 0.9
    assert terminated
    assert reward == pytest.approx(-(30 * 0.36 + 0.81) + 10.0)
    env = env_at([3.5, 0.0])
    _, reward, terminated, _, _ = env.step(np.array([0.4, 0.0]))  # at (3.9, 0): distance 1.1
    assert not terminated
    assert reward == pytest.approx(-(30 * 0.16 + 1.21))


def test_time_limit_truncates():
    env = mg.make_env(max_episode_steps=3, seed=0)()
    env.reset(seed=0)
    flags = [env.step(np.zeros(2))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_goals_reached_counts_distinct_goals():
    paths = [np.array([[0, 0], [4.5, 0.2]]), np.array([[0, 0], [4.8, -0.3]]), np.array([[0, 0], [0.1, -4.4]]),
             np.array([[0, 0], [2.0, 2.0]])]
    assert mg.goals_reached(paths) == 2
    assert mg.episodes_per_goal(paths).tolist() == [2, 0, 0, 1]
    assert mg.goals_reached([np.array([[0, 0], g]) for g in mg.GOALS]) == 4
    assert mg.goals_reached([np.array([[0, 0], [3.0, 3.0]])]) == 0


def test_pictures_draw_headless(tmp_path):
    torch.manual_seed(0)
    actor, critic = mg.VelocityField(2, 2, 16), mg.TwinQ(2, 2, 16)
    snap = mg.candidate_snapshot(actor, critic, 8, 3, draws=4, device=torch.device("cpu"))
    assert snap[0].shape == (len(mg.PROBE_STATES), 32, 2) and snap[1].shape == (len(mg.PROBE_STATES), 4, 2)
    assert np.abs(snap[0]).max() <= 1.0
    # each chosen action is one of the candidates of its state
    assert all(any(np.allclose(c, k) for k in snap[0][s]) for s in range(len(mg.PROBE_STATES)) for c in snap[1][s])
    paths = [np.array([[0.0, 0.0], [1.0, 0.0], [4.5, 0.0]])]
    figures = {"trajectories": mg.plot_trajectories(paths, 10), "candidates": mg.plot_candidates(snap, 10),
               "arrow_field": mg.plot_arrow_field(actor, critic, 8, 3, 10, torch.device("cpu")),
               "evolution": mg.plot_evolution([(0, snap), (5, snap), (10, snap)])}
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert "1 goals reached (episodes right/left/up/down: 1/0/0/0)" in figures["trajectories"].axes[0].get_title()


@pytest.mark.slow
def test_smoke_run_writes_pictures_and_goal_metric(tmp_path):
    args = ["--total-timesteps", "240", "--learning-starts", "200", "--eval-frequency", "120", "--plot-frequency", "120",
            "--eval-episodes", "6", "--hidden-dim", "32", "--batch-size", "32", "--log-frequency", "20"]
    proc = subprocess.run([sys.executable, str(ROOT / "fmer_multigoal.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    for name in ("trajectories", "candidates", "arrow_field", "evolution"):
        # a picture before learning (step 120) and one at the end (240)
        assert f"{name}_0000240.png" in pngs and f"{name}_0000120.png" in pngs, pngs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    goals = acc.Scalars("eval/goals_reached")
    assert [e.step for e in goals] == [120, 240] and all(0 <= e.value <= 4 for e in goals)
    assert {"images/trajectories", "images/candidates", "images/arrow_field", "images/evolution"} <= set(acc.Tags()["images"])
    assert "goals reached" in proc.stdout
