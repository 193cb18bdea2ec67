"""How fast FrankaKitchen-v1 and fmer_kitchen.py run on this machine: env steps/s with random actions and
with the best-of-K policy (one env, an untrained network of the default size: acting costs the same
trained or not), and the time of one update (a critic update plus an actor/alpha/beta update, what
one env step costs at the defaults), eager and with --compile.

    python benchmark/kitchen_speed.py --num-tasks 7
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fmer_kitchen as fk  # noqa: E402
from speed import timed  # noqa: E402  (benchmark/ is on the path: it holds this script)


@dataclass
class Args:
    num_tasks: int = 7
    """the paper's task set"""
    env_steps: int = 2800
    """env steps timed with random actions (10 episodes)"""
    policy_steps: int = 560
    """env steps timed with the best-of-K policy acting"""
    iters: int = 20
    """timed updates per mode (median)"""
    modes: tuple[str, ...] = ("eager", "compile")
    """update modes to time"""


def env_steps_per_second(tasks, steps: int, policy=None) -> float:
    env = fk.make_env(tasks)()
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        action = env.action_space.sample() if policy is None else policy(obs)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - start)


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.manual_seed(0)
    tasks = fk.TASK_SETS[args.num_tasks]
    action_space, observation_space = fk.check_env(tasks)
    obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
    d = fk.Args()  # the script's defaults: network width, K, N, batch size, gamma, tau
    d.ess_target = fk.default_ess_target(d.num_candidates)  # K / 2
    actor, critic = fk.VelocityField(obs_dim, act_dim, d.hidden_dim), fk.TwinQ(obs_dim, act_dim, d.hidden_dim)

    def policy(obs):
        obs_t = torch.as_tensor(obs, dtype=torch.float32)[None]
        return fk.best_of_k_actions(actor, critic, obs_t, d.num_candidates, d.ode_steps)[0].numpy()

    print(f"FrankaKitchen-v1 N={args.num_tasks}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"env steps/s, random actions: {env_steps_per_second(tasks, args.env_steps):.0f}")
    print(f"env steps/s, best-of-K policy acting (eager): {env_steps_per_second(tasks, args.policy_steps, policy):.1f}")

    target_critic = fk.TwinQ(obs_dim, act_dim, d.hidden_dim)
    target_critic.load_state_dict(critic.state_dict())
    log_alpha, log_beta = (torch.tensor(math.log(0.5), requires_grad=True) for _ in range(2))
    optimizers = [torch.optim.Adam(p, lr=3e-4) for p in (actor.parameters(), critic.parameters(), [log_alpha], [log_beta])]
    batch = (
        torch.randn(d.batch_size, obs_dim),
        torch.rand(d.batch_size, act_dim) * 2 - 1,
        torch.rand(d.batch_size),
        torch.randn(d.batch_size, obs_dim),
        torch.zeros(d.batch_size),
    )

    def critic_step():
        return fk.update_critic(
            batch, actor, critic, target_critic, optimizers[1], d.gamma, d.tau, d.num_candidates, d.ode_steps
        )

    def actor_step():
        return fk.update_actor(
            batch[0],
            actor,
            critic,
            optimizers[0],
            log_alpha,
            optimizers[2],
            log_beta,
            optimizers[3],
            d.num_candidates,
            d.ode_steps,
            d.ess_target,
            torch.tensor(-float(act_dim)),
        )

    for mode in args.modes:
        steps = [torch.compile(fn) if mode == "compile" else fn for fn in (critic_step, actor_step)]
        seconds = timed(lambda: [step() for step in steps], args.iters, warmup=5, device=torch.device("cpu"))
        print(f"update ({mode}): {1000 * seconds:.1f} ms, {1 / seconds:.2f} updates/s")
