"""Each structural speed-up of fmer_continuous.py against the plainer code it replaced, timed on one device.

    python benchmark/structural.py --env-id Humanoid-v5

Every row computes the same thing both ways (checked here with assert_close before timing); only
the cost differs. Shapes are the script's defaults: B = 256 states, K = 8 candidates, N = 10 Euler
steps, 3 hidden layers of 256. Times are medians of --iters calls after warm-up.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fmer_continuous as fm  # noqa: E402
from speed import publish, timed  # noqa: E402  (benchmark/ is on the path: it holds this script)


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """env whose observation and action sizes set the network shapes"""
    iters: int = 20
    """timed calls per variant"""
    cuda: bool = True
    """measure on CUDA when it is available"""
    output: str | None = None
    """also write the markdown table to this file"""


def seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


def main(args: Args):
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    B, K, N, H = 256, 8, 10, 256
    torch.manual_seed(0)
    actor = fm.VelocityField(obs_dim, act_dim, H).to(device)
    critic = fm.TwinQ(obs_dim, act_dim, H).to(device)
    obs = torch.randn(B, obs_dim, device=device)
    u = fm.sample_candidates(actor, obs, K, N).clone()
    weights = torch.softmax(torch.randn(B, K, device=device), dim=1)
    rows = []

    def compare(idea, chosen_name, chosen, other_name, other, check=True, iters=args.iters):
        if check:
            torch.testing.assert_close(seeded(chosen), seeded(other), rtol=1e-4, atol=1e-4)
        fast, slow = timed(chosen, iters, 3, device), timed(other, iters, 3, device)
        rows.append((idea, chosen_name, fast, other_name, slow))
        print(f"{idea}: {fast * 1e3:.2f} ms vs {slow * 1e3:.2f} ms", file=sys.stderr, flush=True)

    # 1. Divergence: (dv/dx) e pushed forward with v, against a vector-Jacobian product with
    #    create_graph=True that the loss then differentiates again (double backward).
    def flow_loss_forward_mode():
        loss, entropy = fm.flow_losses(actor, obs, u, weights)
        grads = torch.autograd.grad(loss - 0.1 * entropy, list(actor.parameters()))
        return torch.stack([g.norm() for g in grads])

    def flow_loss_double_backward():
        t = torch.rand(B, K, 1, device=device)
        x0 = torch.randn_like(u)
        probe = torch.randint(0, 2, u.shape, device=device, dtype=u.dtype) * 2.0 - 1.0
        x_t = ((1.0 - t) * x0 + t * u).requires_grad_(True)
        v = actor(actor.embed_obs(obs).unsqueeze(1), x_t, t)
        loss = fm.weighted_cfm_loss(v, u, x0, weights)
        (vjp,) = torch.autograd.grad(v, x_t, grad_outputs=probe, create_graph=True)
        div_a = fm.tanh_corrected_divergence((vjp * probe).sum(-1), x_t.detach(), v)
        entropy = act_dim * fm.H_A0_PER_DIM + div_a.mean()
        grads = torch.autograd.grad(loss - 0.1 * entropy, list(actor.parameters()))
        return torch.stack([g.norm() for g in grads])

    compare(
        "divergence: forward-mode JVP vs double backward (WCFM + entropy, fwd + bwd)",
        "forward-mode",
        flow_loss_forward_mode,
        "double backward",
        flow_loss_double_backward,
    )

    # 2. The state's part of the first layer once per state, against once per candidate and step.
    def sampler_full_first_layer():
        obs_k = obs.unsqueeze(1).expand(-1, K, -1)
        x = torch.randn(B, K, act_dim, device=device)
        t = torch.empty(B, K, 1, device=device)
        with torch.inference_mode():
            for k in range(N):
                x = x + actor(actor.embed_obs(obs_k), x, t.fill_(k / N)) / N
        return x

    compare(
        "first layer: state part once per state vs per candidate and step (sampler)",
        "once per state",
        lambda: fm.sample_candidates(actor, obs, K, N),
        "per row",
        sampler_full_first_layer,
    )

    def scoring_full_first_layer():  # the critics on [s, a] for every candidate
        actions = torch.tanh(u)
        w_in = torch.cat([critic.obs_weight, critic.action_weight], dim=1)
        h = torch.cat([obs.unsqueeze(1).expand(-1, K, -1), actions], -1).reshape(1, B * K, -1)
        h = torch.baddbmm(critic.input_bias, h.expand(2, -1, -1), w_in)
        for w, b in zip(critic.weights, critic.biases):
            h = torch.baddbmm(b, fm.mish(h), w)
        return h.reshape(2, B, K).min(0).values

    with torch.no_grad():
        compare(
            "first layer: state part once per state vs per candidate (critic scoring)",
            "once per state",
            lambda: fm.score_candidates(critic, obs, torch.tanh(u)),
            "per row",
            scoring_full_first_layer,
        )

    # 3. Twin critics as one batched module against two separate critics.
    def two_separate_critics():
        qs = []
        for j in range(2):
            h = (obs @ critic.obs_weight[j] + critic.input_bias[j]).unsqueeze(1) + torch.tanh(u) @ critic.action_weight[j]
            for w, b in zip(critic.weights, critic.biases):
                h = fm.mish(h) @ w[j] + b[j]
            qs.append(h.squeeze(-1))
        return torch.minimum(*qs)

    with torch.no_grad():
        compare(
            "twin critics: one batched module vs two critics (scoring)",
            "batched",
            lambda: fm.score_candidates(critic, obs, torch.tanh(u)),
            "two modules",
            two_separate_critics,
        )

    # 4. K candidates of B states in one [B*K] pass, against K passes over B states.
    def sampler_per_candidate():
        torch.manual_seed(0)
        x0 = torch.randn(B, K, act_dim, device=device)
        emb, t = actor.embed_obs(obs), torch.empty(B, 1, device=device)
        out = []
        with torch.inference_mode():
            for i in range(K):
                x = x0[:, i]
                for k in range(N):
                    x = x + actor(emb, x, t.fill_(k / N)) / N
                out.append(x)
        return torch.stack(out, 1)

    compare(
        "candidates: one pass over B*K rows vs K passes over B rows (sampler)",
        "one pass",
        lambda: seeded(lambda: fm.sample_candidates(actor, obs, K, N)),
        "K passes",
        sampler_per_candidate,
    )

    # 5. Sampling under no_grad (the scripts' choice: inference_mode breaks torch.compile in torch 2.11)
    #    against inference_mode, where per-op overhead shows: acting on one state.
    one_state = obs[:1]
    inference_sampler = torch.inference_mode()(fm.sample_candidates.__wrapped__)
    compare(
        "no_grad vs inference_mode (sampler, acting on 1 state)",
        "no_grad",
        lambda: seeded(lambda: fm.sample_candidates(actor, one_state, K, N)),
        "inference_mode",
        lambda: seeded(lambda: inference_sampler(actor, one_state, K, N)),
        iters=10 * args.iters,
    )
    compare(
        "no_grad vs inference_mode (sampler, 256 states)",
        "no_grad",
        lambda: seeded(lambda: fm.sample_candidates(actor, obs, K, N)),
        "inference_mode",
        lambda: seeded(lambda: inference_sampler(actor, obs, K, N)),
    )

    # 6. The Euler time input filled in place, against a new tensor each step.
    @torch.inference_mode()
    def sampler_new_time_tensor():
        emb = actor.embed_obs(obs).unsqueeze(1)
        x = torch.randn(B, K, act_dim, device=device)
        for k in range(N):
            x = x + actor(emb, x, torch.full((B, K, 1), k / N, device=device)) / N
        return x

    compare(
        "time input: filled in place vs torch.full per Euler step (sampler)",
        "fill_",
        lambda: seeded(lambda: fm.sample_candidates(actor, obs, K, N)),
        "torch.full",
        lambda: seeded(sampler_new_time_tensor),
    )

    # 7. Polyak step of the target critics: one fused in-place call against a loop over tensors.
    target = fm.TwinQ(obs_dim, act_dim, H).to(device)
    online, targets = list(critic.parameters()), list(target.parameters())

    @torch.no_grad()
    def polyak_foreach():
        torch._foreach_lerp_(targets, online, 0.005)

    @torch.no_grad()
    def polyak_loop():  # the common per-parameter form
        for p, tp in zip(online, targets):
            tp.data.copy_(0.005 * p.data + (1 - 0.005) * tp.data)

    compare(
        "target critics: _foreach_lerp_ vs per-parameter copy",
        "_foreach_lerp_",
        polyak_foreach,
        "per-parameter copy_",
        polyak_loop,
        check=False,
        iters=10 * args.iters,
    )

    # 8. Mish: fm.mish is the one-exp form when compiled and F.mish in eager; each against the other.
    h = torch.randn(B * K, H, device=device) * 3
    compare(
        "Mish, compiled: one-exp form vs F.mish",
        "one-exp form",
        torch.compile(lambda: fm.mish(h)),
        "F.mish",
        torch.compile(lambda: F.mish(h)),
    )
    compare(
        "Mish, eager: F.mish vs one-exp form",
        "F.mish",
        lambda: fm.mish(h),
        "one-exp form",
        lambda: fm.mish_with_derivative(h)[0],
    )

    lines = [
        f"Structural speed-ups on {args.env_id} (obs {obs_dim}, act {act_dim}); B={B}, K={K}, N={N}, hidden={H}; "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"command: python benchmark/structural.py {' '.join(sys.argv[1:])}".rstrip(),
        "",
        "| idea | chosen | ms | instead of | ms | speed-up |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for idea, chosen_name, fast, other_name, slow in rows:
        lines.append(f"| {idea} | {chosen_name} | {fast * 1e3:.2f} | {other_name} | {slow * 1e3:.2f} | {slow / fast:.2f}x |")
    publish(lines, args.output)


if __name__ == "__main__":
    main(tyro.cli(Args))
