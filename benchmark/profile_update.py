"""Time one FMER update of fmer_continuous.py at its defaults, and split it into its parts.

    python benchmark/profile_update.py --env-id Hopper-v5

Parts (each timed on its own, median over --iters repeats):
  sampler      K candidates x N Euler steps for a batch of states (done twice per update: at s', at s)
  scoring      twin-critic forward on the B*K candidates (twice per update)
  critic       the critic regression step alone (forward, backward, Adam) on B replayed pairs
  wcfm         velocity forward + WCFM loss + backward + Adam (no divergence)
  divergence   what the Hutchinson divergence and tanh correction add on top of wcfm
An "update" is what one env step costs on average at the defaults: one critic update and one
actor/alpha/beta update (policy_frequency 2 runs 2 actor updates every 2 critic updates).
"""
import statistics
import sys
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
    env_id: str = "Hopper-v5"
    """env whose observation and action sizes set the network shapes"""
    batch_size: int = 256
    num_candidates: int = 8
    ode_steps: int = 10
    hidden_dim: int = 256
    iters: int = 20
    """timed repeats of each part"""
    cuda: bool = False
    """time on CUDA instead of the CPU"""


def timed(fn, iters, device):
    for _ in range(3):  # warm-up
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(args: Args):
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    B, K, N = args.batch_size, args.num_candidates, args.ode_steps
    actor = fm.VelocityField(obs_dim, act_dim, args.hidden_dim).to(device)
    critic = fm.TwinQ(obs_dim, act_dim, args.hidden_dim).to(device)
    target_critic = fm.TwinQ(obs_dim, act_dim, args.hidden_dim).to(device)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=3e-4)
    log_alpha = torch.zeros((), device=device, requires_grad=True)
    log_beta = torch.zeros((), device=device, requires_grad=True)
    alpha_opt, beta_opt = torch.optim.Adam([log_alpha], lr=3e-3), torch.optim.Adam([log_beta], lr=3e-2)
    obs = torch.randn(B, obs_dim, device=device)
    batch = (obs, torch.rand(B, act_dim, device=device) * 2 - 1, torch.randn(B, device=device),
             torch.randn(B, obs_dim, device=device), torch.zeros(B, device=device))
    u = fm.sample_candidates(actor, obs, K, N)
    weights = torch.softmax(torch.randn(B, K, device=device), dim=1)

    def critic_step():
        q = critic(obs, batch[1])
        loss = ((q - batch[2]) ** 2).mean(1).sum()
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()

    def wcfm_step():
        t = torch.rand(B, K, 1, device=device)
        x0 = torch.randn_like(u)
        v = actor(obs.unsqueeze(1).expand(-1, K, -1), (1 - t) * x0 + t * u, t)
        loss = fm.weighted_cfm_loss(v, u, x0, weights)
        actor_opt.zero_grad()
        loss.backward()
        actor_opt.step()

    def flow_step():
        wcfm, entropy = fm.flow_losses(actor, obs, u, weights)
        actor_opt.zero_grad()
        (wcfm - 0.1 * entropy).backward()
        actor_opt.step()

    @torch.no_grad()
    def scoring():
        return critic(obs.unsqueeze(1), torch.tanh(u)).min(dim=0).values

    parts = {
        "sampler": timed(lambda: fm.sample_candidates(actor, obs, K, N), args.iters, device),
        "scoring": timed(scoring, args.iters, device),
        "critic": timed(critic_step, args.iters, device),
        "wcfm": timed(wcfm_step, args.iters, device),
    }
    parts["divergence"] = timed(flow_step, args.iters, device) - parts["wcfm"]
    full_critic = timed(lambda: fm.update_critic(batch, actor, critic, target_critic, critic_opt, 0.99, K, N),
                        args.iters, device)
    full_actor = timed(lambda: fm.update_actor(obs, actor, critic, actor_opt, log_alpha, alpha_opt, log_beta,
                                               beta_opt, K, N, 4.0, -float(act_dim)), args.iters, device)
    update = full_critic + full_actor
    print(f"{args.env_id} (obs {obs_dim}, act {act_dim}), B={B}, K={K}, N={N}, hidden={args.hidden_dim}, "
          f"device={device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"update (1 critic + 1 actor update): {update * 1e3:.1f} ms -> {1 / update:.2f} updates/s "
          f"(critic update {full_critic * 1e3:.1f} ms, actor update {full_actor * 1e3:.1f} ms)")
    accounted = 2 * parts["sampler"] + 2 * parts["scoring"] + parts["critic"] + parts["wcfm"] + parts["divergence"]
    for name, sec in parts.items():
        times = 2 if name in ("sampler", "scoring") else 1
        print(f"  {name:<10} {sec * 1e3:7.1f} ms x{times}  {times * sec / update:6.1%} of the update")
    print(f"  accounted  {accounted * 1e3:7.1f} ms  {accounted / update:6.1%} (the rest: Adam on alpha/beta, "
          f"target lerp, weights, glue)")


if __name__ == "__main__":
    main(tyro.cli(Args))
