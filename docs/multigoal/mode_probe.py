"""Where do the start state's modes go? For each fmer_multigoal.py checkpoint given, one line:

- the flow's own samples at the origin: the share within 45 deg of each goal direction (right/left/up/down);
- the critic there: max over step lengths of min(Q1, Q2)(0, m * direction) for each goal direction,
  and the spread of those four values divided by beta (the log of the largest weight ratio that
  the softmax of Eq. 13 would give two candidates toward different goals);
- the entropy estimate H_hat (Eq. 15-17) at the origin alone, and its mean over the states that
  one-sample episodes visit (a stand-in for the replayed states, over which the constraint holds);
- alpha and beta as saved.

python docs/multigoal/mode_probe.py CHECKPOINT [CHECKPOINT ...]   (run from the repository root)
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import fmer_multigoal as mg


@torch.no_grad()
def origin_samples(actor, num_samples: int, ode_steps: int) -> np.ndarray:
    obs = torch.zeros(1, 2)
    return torch.tanh(mg.sample_candidates(actor, obs, num_samples, ode_steps))[0].numpy()


def share_per_goal(actions: np.ndarray) -> np.ndarray:
    """Share of actions within 45 deg of the direction of each goal, seen from the origin."""
    directions = mg.GOALS / np.linalg.norm(mg.GOALS, axis=1, keepdims=True)
    cosines = actions @ directions.T / np.maximum(np.linalg.norm(actions, axis=1, keepdims=True), 1e-12)
    return (cosines >= math.cos(math.radians(45.0))).mean(axis=0)


@torch.no_grad()
def q_per_goal(critic) -> np.ndarray:
    lengths = torch.linspace(0.05, 1.0, 20)
    directions = torch.as_tensor(mg.GOALS / 5.0, dtype=torch.float32)
    actions = (lengths[None, :, None] * directions[:, None, :]).reshape(1, -1, 2)  # [1, 4 * 20, 2]
    return mg.score_candidates(critic, torch.zeros(1, 2), actions).reshape(4, 20).max(dim=1).values.numpy()


def entropy_at(actor, states: np.ndarray, num_candidates: int, ode_steps: int, repeats: int = 8) -> float:
    """H_hat of Eq. 15-17 averaged over the given states, with num_candidates samples each (as in training)."""
    obs = torch.as_tensor(np.repeat(states, repeats, axis=0), dtype=torch.float32)
    u = mg.sample_candidates(actor, obs, num_candidates, ode_steps).clone()
    weights = torch.full(u.shape[:2], 1.0 / num_candidates)
    return mg.flow_losses(actor, obs, u, weights)[1].item()


def main(paths: list[str]) -> None:
    print(
        "checkpoint | step | samples at origin r/l/u/d | Q at origin r/l/u/d | Q spread / beta | "
        "H_hat origin | H_hat visited states | alpha | beta"
    )
    for path in paths:
        torch.manual_seed(0)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        a = checkpoint["args"]
        actor, critic = mg.VelocityField(2, 2, a["hidden_dim"]), mg.TwinQ(2, 2, a["hidden_dim"])
        actor.load_state_dict(checkpoint["actor"])
        critic.load_state_dict(checkpoint["critic"])
        beta, alpha = checkpoint["log_beta"].exp().item(), checkpoint["log_alpha"].exp().item()
        shares = share_per_goal(origin_samples(actor, 4000, a["ode_steps"]))
        q = q_per_goal(critic)
        envs = mg.make_vector_env(50, 20)
        envs.reset(seed=12345)
        _, _, sample_paths = mg.evaluate(actor, critic, envs, np.ones(2), np.zeros(2), 1, a["ode_steps"], torch.device("cpu"))
        visited = np.concatenate([p[:-1] for p in sample_paths])
        h_origin = entropy_at(actor, np.zeros((64, 2)), a["num_candidates"], a["ode_steps"])
        h_visited = entropy_at(actor, visited, a["num_candidates"], a["ode_steps"], repeats=1)
        print(
            f"{path} | {checkpoint.get('step', '?')} | {'/'.join(f'{s:.2f}' for s in shares)} | "
            f"{'/'.join(f'{v:.1f}' for v in q)} | {(q.max() - q.min()) / beta:.1f} | {h_origin:.2f} | {h_visited:.2f} | "
            f"{alpha:.3f} | {beta:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
