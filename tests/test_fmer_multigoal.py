"""fmer_multigoal.py: the environment against hand-computed steps, its pictures (docs/multigoal/pictures.py), and a
smoke run."""

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fmer_multigoal as mg

ROOT = Path(__file__).resolve().parents[1]
PICTURES = ROOT / "docs" / "multigoal" / "pictures.py"  # draws the pictures from saved checkpoints
_spec = importlib.util.spec_from_file_location("multigoal_pictures", PICTURES)
pic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pic)


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
    env = mg.make_env(max_episode_steps=3)()
    env.reset(seed=0)
    flags = [env.step(np.zeros(2))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_goals_reached_counts_distinct_goals():
    paths = [
        np.array([[0, 0], [4.5, 0.2]]),
        np.array([[0, 0], [4.8, -0.3]]),
        np.array([[0, 0], [0.1, -4.4]]),
        np.array([[0, 0], [2.0, 2.0]]),
    ]
    assert mg.goals_reached(paths) == 2
    assert mg.episodes_per_goal(paths).tolist() == [2, 0, 0, 1]
    assert mg.goals_reached([np.array([[0, 0], g]) for g in mg.GOALS]) == 4
    assert mg.goals_reached([np.array([[0, 0], [3.0, 3.0]])]) == 0


def test_pictures_draw_headless(tmp_path):
    torch.manual_seed(0)
    actor, critic = mg.VelocityField(2, 2, 16), mg.TwinQ(2, 2, 16)
    snap = pic.candidate_snapshot(actor, critic, 8, 3, draws=4, device=torch.device("cpu"))
    assert snap[0].shape == (len(pic.PROBE_STATES), 32, 2) and snap[1].shape == (len(pic.PROBE_STATES), 4, 2)
    assert np.abs(snap[0]).max() <= 1.0
    # each chosen action is one of the candidates of its state
    assert all(any(np.allclose(c, k) for k in snap[0][s]) for s in range(len(pic.PROBE_STATES)) for c in snap[1][s])
    paths = [np.array([[0.0, 0.0], [1.0, 0.0], [4.5, 0.0]])]
    states = mg.field_states()
    figures = {
        "trajectories": pic.plot_trajectories(paths, 10),
        "candidates": pic.plot_candidates(snap, 10),
        "arrow_field": pic.plot_arrow_field(states, nearest_goal_directions(states), 10),
        "evolution": pic.plot_evolution([(0, snap), (5, snap), (10, snap)]),
    }
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    assert "1 goals reached (episodes right/left/up/down: 1/0/0/0)" in figures["trajectories"].axes[0].get_title()
    assert "1.00 of 165 states point to the nearest goal" in figures["arrow_field"].axes[0].get_title()


def nearest_goal_directions(states, rotate_deg=0.0):
    """The oracle of Fig. 3: a unit action toward the (first) nearest goal, optionally rotated."""
    offsets = mg.GOALS[np.linalg.norm(states[:, None] - mg.GOALS[None], axis=-1).argmin(axis=1)] - states
    angle = np.arctan2(offsets[:, 1], offsets[:, 0]) + np.radians(rotate_deg)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def test_field_states_are_the_grid_less_the_goal_discs():
    states = mg.field_states()
    assert states.shape == (13 * 13 - 4, 2)  # the 4 goal centres are the only grid points within distance 1
    assert np.linalg.norm(states[:, None] - mg.GOALS[None], axis=-1).min() >= mg.GOAL_RADIUS
    assert np.abs(states).max() == 6.0 and [0.0, 0.0] in states.tolist()


def test_nearest_goal_fraction_oracle_one_goal_and_angle():
    states = mg.field_states()
    assert mg.nearest_goal_fraction(states, 0.3 * nearest_goal_directions(states)) == 1.0  # length does not matter
    assert mg.nearest_goal_fraction(states, nearest_goal_directions(states, 40.0)) == 1.0
    assert mg.nearest_goal_fraction(states, nearest_goal_directions(states, 60.0)) <= 0.05  # the origin ties 4 ways
    for goal in mg.GOALS:  # a policy that always heads the same way, as SAC in Fig. 3
        assert mg.nearest_goal_fraction(states, np.tile(goal / 5.0, (len(states), 1))) < 0.26  # 42 of 165
    assert not mg.points_to_nearest_goal(states[:1], np.zeros((1, 2)))[0]


def test_nearest_goal_ties_accept_either_goal():
    states = np.array([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [0.0, 0.0]])
    actions = np.array([[1.0, -0.7], [-0.7, 1.0], [1.0, 1.0], [0.0, -1.0]])  # (5, 0), (0, 5), between, (0, -5)
    assert mg.points_to_nearest_goal(states, actions).tolist() == [True, True, False, True]


class PrefersDirection(torch.nn.Module):
    """A stand-in twin critic whose Q is the action's component along one direction."""

    def __init__(self, direction):
        super().__init__()
        self.direction = torch.tensor(direction)

    def forward(self, obs, action):
        q = (action * self.direction).sum(-1)
        return torch.stack([q, q])


def first_steps(actor, critic, num_candidates):
    envs = mg.make_vector_env(50, 16)
    envs.reset(seed=0)
    torch.manual_seed(0)
    _, _, paths = mg.evaluate(actor, critic, envs, np.ones(2), np.zeros(2), num_candidates, 3, torch.device("cpu"))
    return np.array([p[0] for p in paths]), np.array([p[1] - p[0] for p in paths])


def test_sample_evaluation_is_one_flow_sample_not_best_of_k():
    torch.manual_seed(1)
    actor = mg.VelocityField(2, 2, 16)
    right, left = PrefersDirection([1.0, 0.0]), PrefersDirection([-1.0, 0.0])
    # best-of-K follows the critic ...
    assert first_steps(actor, right, 8)[1][:, 0].mean() > first_steps(actor, left, 8)[1][:, 0].mean() + 0.3
    # ... the policy's samples do not, and each is tanh of one latent of the flow
    starts, samples = first_steps(actor, right, 1)
    np.testing.assert_array_equal(samples, first_steps(actor, left, 1)[1])
    torch.manual_seed(0)
    expected = torch.tanh(mg.sample_candidates(actor, torch.as_tensor(starts), 1, 3))[:, 0].numpy()
    np.testing.assert_allclose(samples, expected, atol=1e-5)


def test_evaluate_modes_starts_both_evaluations_alike_and_samples_ignore_the_critic():
    torch.manual_seed(0)
    actor, critic = mg.VelocityField(2, 2, 16), PrefersDirection([1.0, 0.0])
    eval_envs, sample_envs = mg.make_vector_env(5, 32), mg.make_vector_env(5, 32)
    eval_envs.reset(seed=7)
    sample_envs.reset(seed=7)
    result = mg.evaluate_modes(actor, critic, eval_envs, sample_envs, np.ones(2), np.zeros(2), 8, 3, torch.device("cpu"))
    assert len(result["paths"]) == len(result["sample_paths"]) == 32
    np.testing.assert_array_equal([p[0] for p in result["paths"]], [p[0] for p in result["sample_paths"]])
    first_x = [np.mean([p[1, 0] - p[0, 0] for p in result[key]]) for key in ("paths", "sample_paths")]
    assert first_x[0] > first_x[1] + 0.3  # best of 8 by a critic that likes +x; one sample does not
    assert (result["field_actions"][:, 0] > 0.0).mean() > 0.9
    assert result["field_actions"].shape == (165, 2)
    line = mg.describe_modes(result)
    assert "goals reached best-of-K" in line and "by the policy's samples" in line and "nearest-goal fraction" in line


@pytest.fixture(scope="module")
def two_smoke_runs(tmp_path_factory):
    args = "--total-timesteps 240 --learning-starts 200 --eval-frequency 120 --eval-episodes 6 --hidden-dim 32 --no-cuda"
    args = [*args.split(), *"--batch-size 32 --num-candidates 4 --ode-steps 2 --log-frequency 20 --save-model".split()]
    runs = []
    for name in ("a", "b"):
        cwd = tmp_path_factory.mktemp(name)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "fmer_multigoal.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append((cwd, proc))
    return runs


@pytest.mark.slow
def test_smoke_run_writes_goal_metrics_and_checkpoints_that_draw(two_smoke_runs):
    tmp_path, proc = two_smoke_runs[0]
    (run_dir,) = (tmp_path / "runs").iterdir()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir)).Reload()
    for tag in ("eval/goals_reached", "eval/goals_reached_samples"):
        goals = acc.Scalars(tag)
        assert [e.step for e in goals] == [120, 240] and all(0 <= e.value <= 4 for e in goals)
    fractions = acc.Scalars("eval/nearest_goal_fraction")
    assert [e.step for e in fractions] == [120, 240] and all(0.0 <= e.value <= 1.0 for e in fractions)
    assert "goals reached best-of-K" in proc.stdout and "nearest-goal fraction" in proc.stdout
    # --save-model keeps one checkpoint per evaluation beside the latest, for the pictures
    names = sorted(p.name for p in run_dir.glob("*.fmer_model"))
    assert names == ["fmer_multigoal.fmer_model", "fmer_multigoal_0000120.fmer_model", "fmer_multigoal_0000240.fmer_model"]
    assert torch.load(run_dir / names[1], weights_only=True)["step"] == 120
    assert not (run_dir / "state.pt").exists()  # a plain run writes no training state

    # the companion draws the run's pictures from them: (a)-(c) of the latest, (d) over the two
    proc = subprocess.run(
        [sys.executable, str(PICTURES), str(run_dir), "--out", "pics", "--eval-episodes", "4", "--draws", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pictures = ("arrow_field", "candidates", "evolution", "trajectories", "trajectories_samples")
    assert sorted(p.name for p in (tmp_path / "pics").glob("*.png")) == [f"{name}_0000240.png" for name in pictures]
    assert "(step 240)" in proc.stdout and "nearest-goal fraction" in proc.stdout

    # benchmark/evaluate.py prints the three numbers of the saved checkpoint
    command = [sys.executable, str(ROOT / "benchmark" / "evaluate.py"), str(run_dir / names[0])]
    proc = subprocess.run([*command, "--eval-episodes", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "goals reached best-of-K" in proc.stdout and "by the policy's samples" in proc.stdout
    assert "nearest-goal fraction" in proc.stdout


def test_pictures_of_a_folder_without_checkpoints_fail_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(PICTURES), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: no fmer_multigoal.py checkpoints in")


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(two_smoke_runs):
    """Both evaluations draw from the torch RNG that training uses: the same seed must still give the same run."""
    lines = [[line for line in proc.stdout.splitlines() if ": eval return" in line] for _, proc in two_smoke_runs]
    assert len(lines[0]) == 2 and lines[0] == lines[1]


@pytest.mark.slow
def test_a_stopped_job_continues_to_the_end_with_every_evaluation_once(tmp_path):
    """The parent's resume (tests/test_resume.py) here: SIGTERM at step 150 saves the state, and the same command
    continues it to the end."""
    from test_resume import DRIVER  # runs a script and signals it after a chosen number of training vector steps

    job = "--total-timesteps 200 --learning-starts 100 --eval-frequency 100 --eval-episodes 4 --hidden-dim 16"
    job = [*job.split(), *"--num-candidates 4 --ode-steps 2 --batch-size 16 --log-frequency 25 --run-name job".split()]
    job += ["--resume", "--checkpoint-frequency", "1000"]
    script = str(ROOT / "fmer_multigoal.py")
    driver = [sys.executable, "-c", DRIVER, "150", str(int(signal.SIGTERM)), script]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopped = subprocess.run([*driver, *job], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == "SIGTERM: stopped at step 150"
    assert torch.load(tmp_path / "runs/job/state.pt", weights_only=True)["counters"]["global_step"] == 150
    resumed = subprocess.run([sys.executable, script, *job], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resumed at step 150" in resumed.stdout, resumed.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "runs/job"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("eval/goals_reached")] == [100, 200]  # each once: 100 before the stop
    assert [e.step for e in acc.Scalars("losses/qf_loss")] == [100, 125, 150, 175, 200]  # no step twice, none lost


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_committed_45k_checkpoints_keep_four_modes_at_the_start(seed):
    """The result of docs/multigoal_modes.md, held to the code: the 45k checkpoints (width 64, the
    paper's warm-up and budget) sample all four goal directions at the origin (11-39% each when
    measured) and point to the nearest goal from the grid states (1.00). A change to the sampler,
    the tanh squash or best-of-K that loses either fails here."""
    path = ROOT / "docs" / "multigoal" / f"paperbudget_w64_seed{seed}_45k.fmer_model"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    a = checkpoint["args"]
    actor, critic = mg.VelocityField(2, 2, a["hidden_dim"]), mg.TwinQ(2, 2, a["hidden_dim"])
    actor.load_state_dict(checkpoint["actor"])
    critic.load_state_dict(checkpoint["critic"])
    torch.manual_seed(0)
    with torch.no_grad():
        samples = torch.tanh(mg.sample_candidates(actor, torch.zeros(1, 2), 2000, a["ode_steps"]))[0].numpy()
    directions = mg.GOALS / np.linalg.norm(mg.GOALS, axis=1, keepdims=True)
    cosines = samples @ directions.T / np.maximum(np.linalg.norm(samples, axis=1, keepdims=True), 1e-12)
    shares = (cosines >= np.cos(np.radians(45.0))).mean(axis=0)
    assert (shares > 0.08).all(), shares
    states = mg.field_states()
    actions = mg.best_of_k_actions(
        actor, critic, torch.as_tensor(states, dtype=torch.float32), a["num_candidates"], a["ode_steps"]
    ).numpy()
    assert mg.nearest_goal_fraction(states, actions) >= 0.98
