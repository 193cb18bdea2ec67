"""The pictures of fmer_multigoal.py (the paper's Fig. 3 and Fig. 7), drawn from its saved checkpoints.

    python docs/multigoal/pictures.py runs/NAME [--out DIR]        (from the repository root)

A run folder stands for the checkpoints that `fmer_multigoal.py --save-model` keeps, one per evaluation
({exp_name}_{step}.fmer_model); checkpoint files may be given instead, oldest first. Of the latest one it draws
(a) its evaluation episodes from the start state, best-of-K and with one flow sample per step, (b) the K candidate
actions at four probe states and the ones best-of-K picks, and (c) the chosen action at the states of the
nearest-goal fraction; (d) shows (b) for the first, middle and latest checkpoint side by side. The episodes start
as benchmark/evaluate.py's do (eval envs seeded with the run's seed + 10000). PNGs go to --out, by default the folder of the
latest checkpoint. matplotlib's object API: no display needed.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import fmer_multigoal as mg

PROBE_STATES = np.array([[0.0, 0.0], [2.5, 2.5], [-2.5, -2.5], [0.0, 3.0]])  # start, between goals, on a path


def draw_landscape(ax) -> None:
    """Contours of the reward's state part, -min_g |s - g|^2, and the four goal discs."""
    xs = np.linspace(-mg.WALL, mg.WALL, 141)
    grid = np.stack(np.meshgrid(xs, xs), axis=-1)
    ax.contourf(xs, xs, -((grid[..., None, :] - mg.GOALS) ** 2).sum(-1).min(-1), levels=20, cmap="viridis")
    for goal in mg.GOALS:
        ax.add_patch(Circle(goal, mg.GOAL_RADIUS, fill=False, color="red", linewidth=1.5))
    ax.set_xlim(-mg.WALL, mg.WALL)
    ax.set_ylim(-mg.WALL, mg.WALL)
    ax.set_aspect("equal")


def plot_trajectories(paths: list[np.ndarray], step: int, how: str = "best-of-K") -> Figure:
    """(a) The evaluation episodes from the start state on the reward landscape."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    draw_landscape(ax)
    for path in paths:
        ax.plot(path[:, 0], path[:, 1], color="white", linewidth=0.8, alpha=0.7)
    ax.set_title(
        f"(a) {len(paths)} evaluation episodes, {how}, step {step}:\n{mg.goals_reached(paths)} goals reached "
        f"(episodes right/left/up/down: {mg.per_goal(paths)})",
        fontsize=10,
    )
    return fig


@torch.no_grad()
def candidate_snapshot(actor, critic, num_candidates, num_steps, draws, device) -> tuple[np.ndarray, np.ndarray]:
    """For each probe state, `draws` sets of K candidate actions and the one chosen from each set:
    ([S, draws * K, 2], [S, draws, 2])."""
    obs = torch.as_tensor(np.repeat(PROBE_STATES, draws, axis=0), dtype=torch.float32, device=device)
    candidates = torch.tanh(mg.sample_candidates(actor, obs, num_candidates, num_steps))  # [S * draws, K, 2]
    chosen = candidates[torch.arange(len(obs)), mg.score_candidates(critic, obs, candidates).argmax(dim=1)]
    S = len(PROBE_STATES)
    return candidates.reshape(S, -1, 2).cpu().numpy(), chosen.reshape(S, draws, 2).cpu().numpy()


def draw_candidates(ax, state: np.ndarray, candidates: np.ndarray, chosen: np.ndarray) -> None:
    """Action space at one state: the candidates (grey), the chosen ones (red), and the direction
    of each goal (dotted)."""
    for goal in mg.GOALS:
        direction = (goal - state) / np.linalg.norm(goal - state)
        ax.plot([0, direction[0]], [0, direction[1]], color="black", linestyle=":", linewidth=0.8)
    ax.scatter(candidates[:, 0], candidates[:, 1], s=3, color="grey", alpha=0.4)
    ax.scatter(chosen[:, 0], chosen[:, 1], s=10, color="red")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")


def plot_candidates(snapshot, step: int) -> Figure:
    """(b) Where the K candidates land at the probe states, and which one best-of-K picks."""
    fig = Figure(figsize=(3 * len(PROBE_STATES), 3.4))
    for ax, state, candidates, chosen in zip(fig.subplots(1, len(PROBE_STATES)), PROBE_STATES, *snapshot):
        draw_candidates(ax, state, candidates, chosen)
        ax.set_title(f"s = ({state[0]:g}, {state[1]:g})")
    fig.suptitle(f"(b) candidate actions (grey) and the chosen ones (red), step {step}")
    return fig


def plot_evolution(snapshots: list) -> Figure:
    """(d) Picture (b) early, midway and at the latest step of training, side by side (Fig. 7)."""
    picked = [snapshots[0], snapshots[len(snapshots) // 2], snapshots[-1]]
    fig = Figure(figsize=(9, 3 * len(PROBE_STATES)))
    axes = fig.subplots(len(PROBE_STATES), 3, squeeze=False)
    for col, (step, (candidates, chosen)) in enumerate(picked):
        for row, state in enumerate(PROBE_STATES):
            draw_candidates(axes[row, col], state, candidates[row], chosen[row])
            axes[row, col].set_title(f"s = ({state[0]:g}, {state[1]:g}), step {step}", fontsize=9)
    fig.suptitle("(d) candidates over training: early, middle, latest")
    return fig


def plot_arrow_field(states: np.ndarray, actions: np.ndarray, step: int) -> Figure:
    """(c) The chosen (best-of-K) action at the states of field_states(), as in Fig. 3: red where it
    points toward the nearest goal (within 45 deg), white where not."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    draw_landscape(ax)
    ok = mg.points_to_nearest_goal(states, actions)
    ax.quiver(
        states[:, 0],
        states[:, 1],
        actions[:, 0],
        actions[:, 1],
        color=np.where(ok, "red", "white"),
        angles="xy",
        scale_units="xy",
        scale=1.0,
        width=0.004,
    )
    ax.set_title(
        f"(c) chosen action at each state, step {step}:\n{ok.mean():.2f} of {len(ok)} states point to the nearest goal",
        fontsize=10,
    )
    return fig


def mode_pictures(result: dict, snapshots: list, step: int) -> dict:
    """The pictures of one evaluate_modes() result and the candidate snapshots so far."""
    return {
        "trajectories": plot_trajectories(result["paths"], step),
        "trajectories_samples": plot_trajectories(result["sample_paths"], step, "one flow sample per step"),
        "candidates": plot_candidates(snapshots[-1][1], step),
        "arrow_field": plot_arrow_field(result["field_states"], result["field_actions"], step),
        "evolution": plot_evolution(snapshots),
    }


def checkpoint_files(paths: list[str]) -> list[str]:
    """The checkpoints the arguments name, oldest first: a run folder gives its per-evaluation copies (or, with none,
    its one model file)."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        names = sorted(os.listdir(path))
        steps = [name for name in names if name.endswith(".fmer_model") and name[: -len(".fmer_model")][-7:].isdigit()]
        files += [os.path.join(path, name) for name in (steps or [n for n in names if n.endswith(".fmer_model")])]
    return files


def load(path: str, device: torch.device):
    """(actor, critic, args, step) of one fmer_multigoal.py checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a missing, truncated or foreign file
        sys.exit(f"error: cannot read checkpoint {path} ({type(e).__name__})")
    if not (isinstance(checkpoint, dict) and checkpoint.get("script") == "fmer_multigoal.py"):
        sys.exit(f"error: {path} is not a checkpoint of fmer_multigoal.py")
    saved = checkpoint["args"]
    actor = mg.VelocityField(2, 2, saved["hidden_dim"]).to(device)
    critic = mg.TwinQ(2, 2, saved["hidden_dim"]).to(device)
    actor.load_state_dict(checkpoint["actor"])
    critic.load_state_dict(checkpoint["critic"])
    return actor, critic, saved, checkpoint.get("step", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a run folder, or checkpoint files oldest first")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: that of the latest checkpoint)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes of picture (a) (default: the run's)")
    parser.add_argument("--draws", type=int, default=32, help="sets of K candidates per probe state in (b) and (d)")
    args = parser.parse_args()
    files = checkpoint_files(args.paths)
    if not files:
        sys.exit(f"error: no fmer_multigoal.py checkpoints in {' '.join(args.paths)} (train with --save-model)")
    device = torch.device("cpu")
    snapshots = []
    for path in files:
        actor, critic, saved, step = load(path, device)
        torch.manual_seed(saved["seed"])
        snapshots.append(
            (step, candidate_snapshot(actor, critic, saved["num_candidates"], saved["ode_steps"], args.draws, device))
        )
    episodes = args.eval_episodes or saved["eval_episodes"]  # the latest checkpoint's episodes, as evaluate.py runs them
    envs = [mg.make_vector_env(saved["max_episode_steps"], episodes) for _ in range(2)]
    for env in envs:
        env.reset(seed=saved["seed"] + 10_000)
    K, N = saved["num_candidates"], saved["ode_steps"]
    space = mg.MultiGoalEnv().action_space
    scale, bias = (space.high - space.low) / 2.0, (space.high + space.low) / 2.0
    result = mg.evaluate_modes(actor, critic, *envs, scale, bias, K, N, device)
    figures = mode_pictures(result, snapshots, step)
    if len(snapshots) < 2:
        del figures["evolution"]  # one checkpoint has no history
    out = args.out or os.path.dirname(files[-1]) or "."
    os.makedirs(out, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(os.path.join(out, f"{name}_{step:07d}.png"), dpi=90)
    print(f"{files[-1]} (step {step}): {mg.describe_modes(result)}; {len(figures)} pictures in {out}")


if __name__ == "__main__":
    main()
