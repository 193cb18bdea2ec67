"""What exact resume costs: the size of runs/NAME/state.pt and the time to write and read it.

    python benchmark/state_cost.py --env-id Humanoid-v5 --filled 1000000
    python benchmark/state_cost.py --env-id Hopper-v5 --filled 100000 --repeats 3

Builds the learner of fmer_continuous.py at its defaults (networks, the four Adam optimizers after
one step, so their moments exist) and a replay buffer with `--filled` transitions, then times
`save_atomically` (the script's own writer) and `torch.load` of the file. The size grows linearly
with the filled part of the buffer; the networks and optimizers add a constant (about 6 MB at
width 256). The overhead on SPS of one write every C env steps at S steps/s is write_s / (C / S).
"""

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fmer_continuous as fm  # noqa: E402


@dataclass
class Args:
    env_id: str = "Humanoid-v5"
    """the env whose observation and action sizes set the buffer's row size"""
    filled: int = 1_000_000
    """transitions in the replay buffer (1M: a full default buffer)"""
    hidden_dim: int = 256
    """network width (the default)"""
    repeats: int = 1
    """time each write and read this many times; the best is reported"""
    directory: str = tempfile.gettempdir()
    """where the file is written (the disk of the runs/ folder is what matters)"""


def main(args: Args) -> None:
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    actor, critic = fm.VelocityField(obs_dim, act_dim, args.hidden_dim), fm.TwinQ(obs_dim, act_dim, args.hidden_dim)
    target = fm.TwinQ(obs_dim, act_dim, args.hidden_dim)
    log_alpha, log_beta = torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)
    optimizers = [torch.optim.Adam(p, lr=1e-3) for p in (actor.parameters(), critic.parameters(), [log_alpha], [log_beta])]
    for model, opt in zip((actor, critic), optimizers):  # one step, so that Adam's moments exist
        sum(p.sum() for p in model.parameters()).backward()
        opt.step()
    rb = fm.ReplayBuffer(args.filled, obs_dim, act_dim, torch.device("cpu"))
    for name in rb.FIELDS:
        getattr(rb, name).normal_()
    rb.size, rb.pos = args.filled, 0
    state = {
        "script": fm.SCRIPT,
        "args": {},
        "actor": actor.state_dict(),
        "critic": critic.state_dict(),
        "target_critic": target.state_dict(),
        "log_alpha": log_alpha.detach(),
        "log_beta": log_beta.detach(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "replay_buffer": rb.state_dict(),
        "counters": {},
    }
    path = os.path.join(args.directory, "state_cost.pt")
    writes, reads = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fm.save_atomically(state, path)
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=True)
        reads.append(time.perf_counter() - start)
    size = os.path.getsize(path)
    os.remove(path)
    per_row = sum(getattr(rb, name)[0].numel() for name in rb.FIELDS) * 4
    print(
        f"{args.env_id}: obs {obs_dim}, act {act_dim}, {args.filled} transitions ({per_row} bytes each): "
        f"state.pt {size / 2**20:.1f} MiB, write {min(writes):.2f} s, read {min(reads):.2f} s"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
