"""Unit tests of the algorithm's pieces in fmer_continuous.py, each able to fail on the bug it names.
The sibling scripts carry the same pieces line for line (the last test), so these tests cover them too."""

import ast
import importlib
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fmer_continuous as fm

torch.set_default_dtype(torch.float32)


class ClosedFormField(nn.Module):
    """A hand-written velocity field with VelocityField's interface: velocity(x, t) and its
    x-Jacobian applied to a probe, jvp(x, t, probe). The state plays no part."""

    def embed_obs(self, obs):
        return obs

    def forward(self, obs_embedding, x, t):
        return self.velocity(x, t)

    def forward_with_jvp(self, obs_embedding, x, t, probe):
        return self.velocity(x, t), self.jvp(x, t, probe)


class ConstantField(ClosedFormField):
    """v(x, t, s) = c + slope * t, independent of x and s."""

    def __init__(self, c, slope=0.0):
        super().__init__()
        self.act_dim = c.shape[-1]
        self.c, self.slope = c, slope

    def velocity(self, x, t):
        return self.c + self.slope * t + 0.0 * x


def test_euler_sampler_exact_for_constant_field():
    c = torch.tensor([0.7, -1.3, 2.0])
    obs = torch.randn(5, 4)
    torch.manual_seed(0)
    u = fm.sample_candidates(ConstantField(c), obs, num_candidates=8, num_steps=10)
    torch.manual_seed(0)
    x0 = torch.randn(5, 8, 3)
    assert u.shape == (5, 8, 3)
    torch.testing.assert_close(u, x0 + c, atol=1e-5, rtol=0)


def test_euler_sampler_uses_left_time_points():
    # v = t: Euler with t_k = k/N gives sum_k (k/N) / N = (N - 1) / (2N), not the exact 1/2.
    c = torch.zeros(2)
    torch.manual_seed(0)
    u = fm.sample_candidates(ConstantField(c, slope=1.0), torch.zeros(3, 1), 4, num_steps=10)
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 2)
    torch.testing.assert_close(u - x0, torch.full_like(u, 9 / 20), atol=1e-5, rtol=0)


class LinearField(ClosedFormField):
    """v(x) = lam * x: Euler gives x_N = (1 + lam / N)^N x0, which needs v evaluated at each x_k."""

    def __init__(self, act_dim, lam):
        super().__init__()
        self.act_dim, self.lam = act_dim, lam

    def velocity(self, x, t):
        return self.lam * x


def test_euler_sampler_follows_the_state():
    torch.manual_seed(0)
    u = fm.sample_candidates(LinearField(2, -0.7), torch.zeros(3, 1), 4, num_steps=10)
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 2)
    torch.testing.assert_close(u, (1 - 0.07) ** 10 * x0, atol=1e-5, rtol=1e-5)


def test_advantage_weights_per_state_softmax_and_ess():
    torch.manual_seed(0)
    q = torch.randn(6, 8) * 3
    beta = torch.tensor(0.7)
    w, ess = fm.advantage_weights(q, beta)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(6))
    # higher Q, higher weight (a flipped sign would invert this order)
    assert torch.equal(w.argsort(dim=1), q.argsort(dim=1))
    torch.testing.assert_close(w, torch.softmax(q / 0.7, dim=1))
    # invariant to a per-state shift of Q (V(s) cancels), and per state only
    shift = torch.randn(6, 1) * 100
    w2, ess2 = fm.advantage_weights(q + shift, beta)
    torch.testing.assert_close(w2, w, atol=1e-5, rtol=1e-4)
    q3 = q.clone()
    q3[1:] = torch.randn(5, 8)
    assert torch.allclose(fm.advantage_weights(q3, beta)[0][0], w[0])
    assert ((ess >= 1 - 1e-5) & (ess <= 8 + 1e-5)).all()
    torch.testing.assert_close(fm.advantage_weights(torch.full((3, 8), 2.5), beta)[1], torch.full((3,), 8.0))
    one_dominant = torch.zeros(1, 8)
    one_dominant[0, 3] = 100.0
    w4, ess4 = fm.advantage_weights(one_dominant, torch.tensor(0.5))
    assert w4[0, 3] > 0.999 and abs(ess4.item() - 1.0) < 1e-3
    # a larger beta flattens the weights: ESS grows with beta
    assert (fm.advantage_weights(q, torch.tensor(5.0))[1] > ess).all()


def test_dual_update_directions():
    def step(measured, target):
        log_p = torch.tensor(0.0, requires_grad=True)
        opt = torch.optim.Adam([log_p], lr=0.1)
        fm.dual_update(log_p, opt, torch.tensor(measured), target)
        return log_p.item()

    # beta: ESS above target -> weights too uniform -> beta falls; below -> rises
    assert step(6.0, 4.0) < 0.0
    assert step(2.0, 4.0) > 0.0
    # alpha: entropy above target -> alpha falls; below -> rises
    assert step(-0.5, -1.0) < 0.0
    assert step(-3.0, -1.0) > 0.0


def test_dual_update_clamps():
    log_p = torch.tensor(9.99, requires_grad=True)
    opt = torch.optim.SGD([log_p], lr=100.0)
    fm.dual_update(log_p, opt, torch.tensor(-5.0), 0.0)
    assert log_p.item() == 10.0


def candidate_q_values(gen: torch.Generator, B: int, K: int, act_dim: int = 6) -> torch.Tensor:
    """Q values [B, K] of K candidates per state, drawn like a critic's: quadratic around its best action,
    candidates from a unit-Gaussian policy near it, a curvature that varies by state (per-state Q spreads of
    a few hundredths to a few tenths; the short Pendulum runs' beta settled at 0.03-0.05), any offset V(s)."""
    actions = torch.randn(B, K, act_dim, generator=gen)
    best = 0.5 * torch.randn(B, 1, act_dim, generator=gen)
    curvature = torch.empty(B, 1).uniform_(math.log(0.02), math.log(0.5), generator=gen).exp()
    return 100.0 * torch.randn(B, 1, generator=gen) - curvature * (actions - best).pow(2).mean(dim=-1)


@pytest.mark.parametrize("K", [4, 8, 16, 32])
def test_beta_controller_settles_at_the_default_ess_target(K):
    """Table 13 runs K = 4, 8, 16, 32. ESS <= K, with equality only for uniform weights: the old fixed
    target of 4 was unreachable at K = 4, so every step read "too sharp" and beta rose without end
    (toward its clamp, weights uniform: silently the uniform-weights ablation). With the default
    target K / 2 beta settles on the scale of the candidates' Q spread, at its default rate."""
    args = fm.Args(num_candidates=K)
    args.ess_target = fm.default_ess_target(K)
    gen = torch.Generator().manual_seed(0)
    log_beta = torch.tensor(math.log(args.beta_init), requires_grad=True)
    optimizer = torch.optim.Adam([log_beta], lr=args.beta_lr)
    ess, log_betas, spread = [], [], []
    for _ in range(1000):
        q = candidate_q_values(gen, 128, K)
        _, ess_now = fm.advantage_weights(q, log_beta.detach().exp())
        fm.dual_update(log_beta, optimizer, ess_now.mean(), args.ess_target)
        ess.append(ess_now.mean().item())
        log_betas.append(log_beta.item())
        spread.append(q.std(dim=1).median().item())
    last, before = np.array(log_betas[-300:]), np.array(log_betas[-600:-300])
    assert abs(np.mean(ess[-300:]) - args.ess_target) < 0.1 * args.ess_target, (np.mean(ess[-300:]), args.ess_target)
    assert abs(last.mean() - before.mean()) < 0.05, (before.mean(), last.mean())  # settled, not drifting
    # away from both clamps: beta on the scale of the Q spread (far above it the weights are uniform, at
    # K = 4 with a target of 4 about 200 times it and rising; far below, one-hot)
    ratio = math.exp(last.mean()) / np.median(spread[-300:])
    assert 0.1 < ratio < 10.0, ratio
    assert -9.0 < last.min() and last.max() < 9.0


def test_update_actor_moves_beta_and_alpha_toward_targets():
    torch.manual_seed(0)
    obs_dim, act_dim = 3, 2
    actor = fm.VelocityField(obs_dim, act_dim, 32)
    critic = fm.TwinQ(obs_dim, act_dim, 32)
    with torch.no_grad():  # a critic that cannot tell candidates apart: ESS = K > target
        for w in critic.weights:
            w.zero_()
    log_alpha = torch.tensor(0.0, requires_grad=True)
    log_beta = torch.tensor(0.0, requires_grad=True)
    a_opt, b_opt = torch.optim.Adam([log_alpha], lr=0.1), torch.optim.Adam([log_beta], lr=0.1)
    out = fm.update_actor(
        torch.randn(16, obs_dim),
        actor,
        critic,
        torch.optim.Adam(actor.parameters()),
        log_alpha,
        a_opt,
        log_beta,
        b_opt,
        8,
        10,
        ess_target=4.0,
        target_entropy=50.0,
    )
    assert abs(out["charts/ess"].item() - 8.0) < 1e-4
    assert log_beta.item() < 0.0  # ESS 8 > 4: beta must fall
    assert log_alpha.item() > 0.0  # entropy far below a target of 50 nats: alpha must rise


def test_replay_buffer_wraps_around():
    rb = fm.ReplayBuffer(4, 1, 1, torch.device("cpu"))
    for start in (0, 3):  # 3 then 3 more transitions: the last 4 stay, the oldest 2 are overwritten
        vals = np.arange(start, start + 3, dtype=np.float32)[:, None]
        rb.add(vals, vals + 100, vals, vals[:, 0], np.zeros(3))
    assert rb.size == 4 and rb.pos == 2
    assert sorted(rb.obs[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0]
    torch.testing.assert_close(rb.next_obs, rb.obs + 100)
    obs, actions, rewards, next_obs, terminations = rb.sample(64)
    assert set(obs[:, 0].tolist()) <= {2.0, 3.0, 4.0, 5.0}
    torch.testing.assert_close(rewards, obs[:, 0])


def test_replay_buffer_stores_each_field_in_its_own_rows():
    # one staged copy of all five fields per add: each must come back whole, in order, from any input type
    rb = fm.ReplayBuffer(3, 3, 2, torch.device("cpu"))
    for i in range(4):  # the fourth add wraps to row 0
        rb.add(
            np.full((1, 3), i, dtype=np.float64),
            [[i + 10] * 3],
            np.full((1, 2), i + 20, dtype=np.float32),
            np.array([i + 30.0]),
            np.array([i % 2 == 1]),
        )
    assert rb.obs[:, 0].tolist() == [3.0, 1.0, 2.0] and rb.obs.shape == (3, 3)
    assert torch.equal(rb.next_obs, rb.obs + 10) and torch.equal(rb.actions, rb.obs[:, :2] + 20)
    assert torch.equal(rb.rewards, rb.obs[:, 0] + 30) and rb.terminations.tolist() == [1.0, 1.0, 0.0]
    assert rb.rewards.dtype == rb.terminations.dtype == torch.float32 and (rb.pos, rb.size) == (1, 3)


def test_actor_step_with_large_alpha_raises_entropy():
    torch.manual_seed(0)
    obs_dim, act_dim, B = 3, 2, 256
    actor, critic = fm.VelocityField(obs_dim, act_dim, 32), fm.TwinQ(obs_dim, act_dim, 32)
    obs = torch.randn(B, obs_dim)

    def entropy_now():
        torch.manual_seed(123)
        u = fm.sample_candidates(actor, obs, 8, 10)
        return fm.flow_losses(actor, obs, u, torch.full((B, 8), 1 / 8))[1].item()

    with torch.no_grad():  # start from a narrow policy: shrink the last layer and bias it away from 0
        actor.layers[-1].weight.mul_(0.1)
        actor.layers[-1].bias.fill_(1.5)
    before = entropy_now()
    log_alpha = torch.tensor(math.log(100.0), requires_grad=True)
    log_beta = torch.tensor(0.0, requires_grad=True)
    frozen = torch.optim.SGD([log_alpha, log_beta], lr=0.0)
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for _ in range(30):
        fm.update_actor(obs, actor, critic, opt, log_alpha, frozen, log_beta, frozen, 8, 10, 4.0, 0.0)
    assert entropy_now() > before + 0.3


@pytest.mark.slow
def test_alpha_and_beta_track_their_targets():
    """FMER_SPEC 4b: at the default controller rates the ESS and the entropy settle at their targets."""
    torch.manual_seed(0)
    obs_dim, act_dim, B = 4, 2, 32
    actor, critic = fm.VelocityField(obs_dim, act_dim, 64), fm.TwinQ(obs_dim, act_dim, 64)
    with torch.no_grad():  # a fixed critic with clear preferences among candidates
        for w in critic.weights:
            w.mul_(3)
    args = fm.Args()
    args.ess_target = fm.default_ess_target(args.num_candidates)  # K / 2 = 4
    log_alpha = torch.tensor(math.log(args.alpha_init), requires_grad=True)
    log_beta = torch.tensor(math.log(args.beta_init), requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    beta_opt = torch.optim.Adam([log_beta], lr=args.beta_lr)
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    target = -1.0 * act_dim
    ess, entropy = [], []
    for _ in range(300):
        out = fm.update_actor(
            torch.randn(B, obs_dim),
            actor,
            critic,
            opt,
            log_alpha,
            alpha_opt,
            log_beta,
            beta_opt,
            8,
            4,  # ODE steps: the controllers do not need the default 10
            args.ess_target,
            target,
        )
        ess.append(out["charts/ess"].item())
        entropy.append(out["charts/entropy"].item())
    assert entropy[0] > target + 2.0  # it started far above the target
    assert abs(np.mean(ess[-100:]) - args.ess_target) < 0.4, np.mean(ess[-100:])
    assert abs(np.mean(entropy[-100:]) - target) < 0.6, np.mean(entropy[-100:])


@pytest.mark.slow
def test_policy_improves_on_a_one_step_bandit():
    """End to end: critic and actor updates on r(a) = -4 (a - 0.5)^2 with one-step episodes move the
    policy from around 0 to the optimum. Softmax(-Q / beta) or uniform weights would not."""
    torch.manual_seed(0)
    obs_dim, act_dim, B, H, N = 2, 1, 64, 64, 4
    actor = fm.VelocityField(obs_dim, act_dim, H)
    critic, target_critic = fm.TwinQ(obs_dim, act_dim, H), fm.TwinQ(obs_dim, act_dim, H)
    target_critic.load_state_dict(critic.state_dict())
    actor_opt, critic_opt = torch.optim.Adam(actor.parameters(), lr=1e-3), torch.optim.Adam(critic.parameters(), lr=1e-3)
    log_alpha, log_beta = torch.tensor(math.log(0.5), requires_grad=True), torch.tensor(math.log(0.5), requires_grad=True)
    alpha_opt, beta_opt = torch.optim.Adam([log_alpha], lr=3e-3), torch.optim.Adam([log_beta], lr=3e-2)
    obs = torch.zeros(B, obs_dim)
    for _ in range(250):
        actions = torch.rand(B, act_dim) * 2 - 1
        rewards = -4 * ((actions - 0.5) ** 2).sum(-1)
        batch = (obs, actions, rewards, obs, torch.ones(B))
        fm.update_critic(batch, actor, critic, target_critic, critic_opt, 0.99, 0.005, 8, N)
        fm.update_actor(obs, actor, critic, actor_opt, log_alpha, alpha_opt, log_beta, beta_opt, 8, N, 4.0, -2.0)
    a = torch.tanh(fm.sample_candidates(actor, obs[:1], 1000, N)).flatten()
    assert abs(a.mean().item() - 0.5) < 0.15, a.mean().item()
    assert a.std().item() < 0.35


def test_wcfm_one_hot_equals_plain_cfm():
    torch.manual_seed(0)
    v, u, x0 = torch.randn(4, 8, 3), torch.randn(4, 8, 3), torch.randn(4, 8, 3)
    weights = torch.zeros(4, 8)
    pick = torch.tensor([0, 5, 7, 2])
    weights[torch.arange(4), pick] = 1.0
    plain = ((v[torch.arange(4), pick] - (u[torch.arange(4), pick] - x0[torch.arange(4), pick])) ** 2).sum(-1).mean()
    torch.testing.assert_close(fm.weighted_cfm_loss(v, u, x0, weights), plain)
    # uniform weights give a different (behaviour-cloning) loss
    assert not torch.allclose(fm.weighted_cfm_loss(v, u, x0, torch.full((4, 8), 1 / 8)), plain)


def _exact_divergence(fn, x):
    """Trace of d fn / d x for each row of x [B, d], by autograd."""
    jac = torch.func.vmap(torch.func.jacrev(fn))(x)
    return jac.diagonal(dim1=-2, dim2=-1).sum(-1)


def test_prop1_tanh_correction_matches_autograd_divergence():
    torch.manual_seed(0)
    obs_dim, d, B = 5, 4, 64
    net = fm.VelocityField(obs_dim, d, 64).double()
    obs = torch.randn(B, obs_dim, dtype=torch.float64)
    t = torch.rand(B, 1, dtype=torch.float64)
    x = torch.randn(B, d, dtype=torch.float64) * 1.5

    def latent_field(xi, oi, ti):
        return net(net.embed_obs(oi), xi, ti)

    def action_field(ai, oi, ti):  # the induced field in action space, as a function of a = tanh(x)
        return (1 - ai**2) * latent_field(torch.atanh(ai), oi, ti)

    div_x = torch.func.vmap(lambda xi, oi, ti: torch.func.jacrev(latent_field)(xi, oi, ti).trace())(x, obs, t)
    div_a = torch.func.vmap(lambda ai, oi, ti: torch.func.jacrev(action_field)(ai, oi, ti).trace())(torch.tanh(x), obs, t)
    v = net(net.embed_obs(obs), x, t)
    torch.testing.assert_close(fm.tanh_corrected_divergence(div_x, x, v), div_a, atol=1e-8, rtol=1e-6)
    # the correction is not negligible here, so a flipped sign would fail
    assert (div_x - div_a).abs().mean() > 0.1


def test_one_exp_mish_matches_torch_including_its_tails():
    x = torch.cat([torch.linspace(-100, 100, 2001), torch.tensor([-1e4, -30.0, 19.99, 20.0, 20.01, 30.0, 1e4])])
    x = x.double().requires_grad_(True)
    ours, slope = fm.mish_with_derivative(x)
    ref = F.mish(x)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    (ref_slope,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    torch.testing.assert_close(slope, ref_slope, atol=1e-9, rtol=1e-9)
    # autograd through our form gives the same first and second derivatives as through F.mish
    (our_grad,) = torch.autograd.grad(fm.mish_with_derivative(x)[0].sum(), x, create_graph=True)
    torch.testing.assert_close(our_grad, ref_slope, atol=1e-9, rtol=1e-9)
    (our_curv,) = torch.autograd.grad(slope.sum(), x)
    (ref_curv,) = torch.autograd.grad(ref_slope.sum(), x)
    inner = x.abs() <= 100  # F.mish's own second derivative overflows to nan at 1e4
    torch.testing.assert_close(our_curv[inner], ref_curv[inner], atol=1e-9, rtol=1e-7)
    assert torch.isfinite(our_curv).all()
    assert all(torch.isfinite(y).all() for y in fm.mish_with_derivative(torch.tensor([-1e4, 1e4])))  # float32


def _divergence_by_double_backward(net, obs, x, t, probe):
    """The textbook Hutchinson estimate e^T (dv/dx) e through a vector-Jacobian product."""
    x = x.detach().requires_grad_(True)
    v = net(net.embed_obs(obs), x, t)
    (vjp,) = torch.autograd.grad(v, x, grad_outputs=probe, create_graph=True)
    return (vjp * probe).sum(-1)


def test_velocity_jvp_matches_autograd_jacobian():
    torch.manual_seed(0)
    obs_dim, d, B = 4, 3, 32
    net = fm.VelocityField(obs_dim, d, 32).double()
    with torch.no_grad():  # spread the pre-activations over Mish's clamp and its negative tail
        for layer in net.layers:
            layer.weight.mul_(6.0)
    obs, t = torch.randn(B, obs_dim, dtype=torch.float64), torch.rand(B, 1, dtype=torch.float64)
    x, probe = torch.randn(B, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64)
    v, jvp = net.forward_with_jvp(net.embed_obs(obs), x, t, probe)
    jac = torch.func.vmap(torch.func.jacrev(lambda xi, oi, ti: net(net.embed_obs(oi), xi, ti)))(x, obs, t)
    torch.testing.assert_close(v, net(net.embed_obs(obs), x, t))
    torch.testing.assert_close(jvp, torch.einsum("bij,bj->bi", jac, probe), atol=1e-10, rtol=1e-8)


def test_hutchinson_divergence_gradient_matches_double_backward():
    # the forward-mode estimate must give the actor the same gradient as the vjp one would
    torch.manual_seed(0)
    net = fm.VelocityField(3, 2, 16).double()
    obs, x, t = torch.randn(8, 3).double(), torch.randn(8, 2).double(), torch.rand(8, 1).double()
    probe = torch.randint(0, 2, (8, 2)).double() * 2 - 1
    _, jvp = net.forward_with_jvp(net.embed_obs(obs), x, t, probe)
    div = fm.hutchinson_divergence(jvp, probe)
    ref = _divergence_by_double_backward(net, obs, x, t, probe)
    torch.testing.assert_close(div, ref)
    params = list(net.parameters())[:-1]  # the last bias does not enter the divergence
    grads = torch.autograd.grad(div.sum(), params)
    ref_grads = torch.autograd.grad(ref.sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert all(g.abs().sum() > 0 for g in grads[2:])  # the hidden layers shape div_x v


def test_hutchinson_mean_matches_exact_trace():
    torch.manual_seed(0)
    obs_dim, d, B, M = 3, 6, 4, 5000  # 5 sem is about a fifth of |trace| here: a flipped sign fails
    net = fm.VelocityField(obs_dim, d, 64).double().requires_grad_(False)
    obs, t = torch.randn(B, obs_dim, dtype=torch.float64), torch.rand(B, 1, dtype=torch.float64)
    x = torch.randn(B, d, dtype=torch.float64)

    def trace(xi, oi, ti):
        return torch.func.jacrev(lambda z: net(net.embed_obs(oi), z, ti))(xi).trace()

    exact = torch.func.vmap(trace)(x, obs, t)
    probe = torch.randint(0, 2, (M * B, d), dtype=torch.float64) * 2 - 1
    _, jvp = net.forward_with_jvp(net.embed_obs(obs.repeat(M, 1)), x.repeat(M, 1), t.repeat(M, 1), probe)
    est = fm.hutchinson_divergence(jvp, probe).view(M, B)
    sem = est.std(0) / math.sqrt(M)
    assert ((est.mean(0) - exact).abs() < 5 * sem + 1e-6).all()
    assert est.std(0).max() > 0  # one probe per sample is noisy; the mean is what is unbiased


class GaussianOTField(ClosedFormField):
    """The exact marginal velocity of the OT path from N(0, I) to N(m, sigma^2 I):
    v(x, t) = m + c_t (x - t m), c_t = (t sigma^2 - (1 - t)) / ((1 - t)^2 + t^2 sigma^2)."""

    def __init__(self, m, sigma):
        super().__init__()
        self.act_dim = m.shape[-1]
        self.m, self.sigma = m, sigma

    def slope(self, t):
        return (t * self.sigma**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * self.sigma**2)

    def velocity(self, x, t):
        return self.m + self.slope(t) * (x - t * self.m)

    def jvp(self, x, t, probe):
        return self.slope(t) * probe


def test_entropy_estimate_matches_gaussian_closed_form():
    torch.manual_seed(0)
    B, K = 4096, 8
    m, sigma = torch.tensor([0.5, -1.0, 0.0]), 0.6
    d = 3
    field = GaussianOTField(m, sigma)
    obs = torch.zeros(B, 1)
    # Euler samples of the exact field are N(m, sigma^2) up to discretisation; draw them exactly
    u = m + sigma * torch.randn(B, K, d)
    latent_true = d * 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    # action-space entropy of tanh(u): H(u) + E[sum log(1 - tanh(u)^2)], by Monte Carlo
    u_ref = m + sigma * torch.randn(2_000_000, d, dtype=torch.float64)
    log_jacobian = 2 * (math.log(2) - u_ref.abs() - torch.log1p(torch.exp(-2 * u_ref.abs())))
    action_true = latent_true + log_jacobian.sum(-1).mean().item()

    # weights play no part in the entropy: it is the policy's own, over all its candidates
    # (here they favour candidates far from 0, where the tanh correction is largest)
    weights = torch.softmax(5 * u.abs().sum(-1), dim=1)
    _, entropy = fm.flow_losses(field, obs, u, weights)
    assert abs(entropy.item() - action_true) < 0.05, (entropy.item(), action_true)

    # the latent estimate H(x0) + E[div_x v] of Theorem 2, from the same pieces
    t = torch.rand(B, K, 1)
    x0 = torch.randn_like(u)
    x_t = (1 - t) * x0 + t * u
    probe = torch.randint(0, 2, u.shape).float() * 2 - 1
    _, jvp = field.forward_with_jvp(obs, x_t, t, probe)
    latent = d * 0.5 * math.log(2 * math.pi * math.e) + fm.hutchinson_divergence(jvp, probe).mean()
    assert abs(latent.item() - latent_true) < 0.05, (latent.item(), latent_true)
    # the two differ by more than the tolerance, so dropping the tanh correction would fail
    assert abs(action_true - latent_true) > 0.5


def test_linear_schedule():
    assert fm.linear_schedule(3e-4, 3e-5, 0.0) == 3e-4
    assert fm.linear_schedule(3e-4, 3e-5, 1.0) == pytest.approx(3e-5)
    assert fm.linear_schedule(0.0, -1.0, 0.25) == pytest.approx(-0.25)
    assert fm.linear_schedule(0.0, -1.0, 1.7) == pytest.approx(-1.0)


def test_h_a0_constant():
    # exact value (mpmath quadrature): 0.6698041182; the spec's 1.4189 - 0.7484 = 0.6705 is rounded
    assert abs(fm.H_A0_PER_DIM - 0.6698041182) < 1e-7
    assert abs(fm.H_A0_PER_DIM - 0.6705) < 1e-3
    torch.manual_seed(0)
    z = torch.randn(2_000_000, dtype=torch.float64)
    mc = 0.5 * math.log(2 * math.pi * math.e) + torch.log(1 - torch.tanh(z) ** 2).mean().item()
    assert abs(mc - fm.H_A0_PER_DIM) < 3e-3


def test_bellman_target_terminations_and_best_candidate():
    rewards = torch.tensor([1.0, 1.0, -2.0])
    terminations = torch.tensor([0.0, 1.0, 0.0])
    next_q = torch.tensor([[1.0, 5.0, 3.0], [7.0, 8.0, 9.0], [-4.0, -1.0, -3.0]])
    y = fm.bellman_target(rewards, terminations, next_q, gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 5.0, 1.0, -2.0 + 0.9 * -1.0]))


def test_update_critic_target_uses_target_critic_best_candidate():
    # With lr 0 nothing moves; the loss then tells us which target was used.
    torch.manual_seed(0)
    obs_dim, act_dim, B = 3, 2, 32
    actor, critic = fm.VelocityField(obs_dim, act_dim, 16), fm.TwinQ(obs_dim, act_dim, 16)
    target_critic = fm.TwinQ(obs_dim, act_dim, 16)
    batch = (
        torch.randn(B, obs_dim),
        torch.rand(B, act_dim) * 2 - 1,
        torch.randn(B),
        torch.randn(B, obs_dim),
        (torch.rand(B) < 0.3).float(),
    )
    before = [p.detach().clone() for p in target_critic.parameters()]
    torch.manual_seed(1)
    out = fm.update_critic(batch, actor, critic, target_critic, torch.optim.SGD(critic.parameters(), lr=0.0), 0.99, 0.3, 8, 10)
    # then the Polyak step: target <- target + tau (critic - target)
    for old, new, online in zip(before, target_critic.parameters(), critic.parameters()):
        torch.testing.assert_close(new, old + 0.3 * (online - old))
        with torch.no_grad():
            new.copy_(old)  # restore, to recompute the target below
    torch.manual_seed(1)
    next_a = torch.tanh(fm.sample_candidates(actor, batch[3], 8, 10))
    with torch.no_grad():
        next_q = target_critic(batch[3], next_a).min(0).values
        y = batch[2] + 0.99 * (1 - batch[4]) * next_q.max(1).values
        q = critic(batch[0], batch[1])
    torch.testing.assert_close(out["losses/qf_loss"], ((q - y) ** 2).mean(1).sum())
    with torch.no_grad():
        y_mean = batch[2] + 0.99 * (1 - batch[4]) * next_q.mean(1)
    assert not torch.allclose(out["losses/qf_loss"], ((q - y_mean) ** 2).mean(1).sum())


def test_twin_q_matches_two_separate_mlps():
    torch.manual_seed(0)
    critic = fm.TwinQ(3, 2, 8)
    obs, act = torch.randn(5, 3), torch.rand(5, 4, 2)
    out = critic(obs, act)
    assert out.shape == (2, 5, 4)
    for j in range(2):  # critic j as a plain MLP on [s, a]
        layers = [(torch.cat([critic.obs_weight[j], critic.action_weight[j]]), critic.input_bias[j, 0])]
        layers += [(w[j], b[j, 0]) for w, b in zip(critic.weights, critic.biases)]
        h = torch.cat([obs.unsqueeze(1).expand(-1, 4, -1), act], -1)
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < 3:
                h = F.mish(h)
        torch.testing.assert_close(out[j], h.squeeze(-1))
    assert not torch.allclose(out[0], out[1])  # independent initialisations
    # one action per state: [B, act_dim] -> [2, B], the same values as K = 1
    torch.testing.assert_close(critic(obs, act[:, 0]), out[:, :, 0])


def test_best_of_k_picks_highest_min_q():
    torch.manual_seed(0)
    actor = fm.VelocityField(2, 1, 16)

    class OpposedTwins(nn.Module):  # min(Q1, Q2) = -|a|: the best candidate is the one nearest 0
        def forward(self, obs, action):
            q = action.sum(-1)
            return torch.stack([q, -q])

    obs = torch.randn(64, 2)
    torch.manual_seed(3)
    a = fm.best_of_k_actions(actor, OpposedTwins(), obs, 8, 10)
    torch.manual_seed(3)
    cands = torch.tanh(fm.sample_candidates(actor, obs, 8, 10))
    torch.testing.assert_close(a, cands[torch.arange(64), cands.abs().squeeze(-1).argmin(dim=1)])


def top_level_definitions(path) -> list[str]:
    """The names of a script's module-level functions and classes, in file order."""
    return [node.name for node in ast.parse(Path(path).read_text()).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]


def drifted(copy, parent, parent_path) -> list[str]:
    """The parent's functions and classes that `copy` lacks or defines with other source text."""
    return [
        name
        for name in top_level_definitions(parent_path)
        if not hasattr(copy, name) or inspect.getsource(getattr(copy, name)) != inspect.getsource(getattr(parent, name))
    ]


# What each sibling changes, and only that: its env and what follows from it (observation, metrics, run name).
SIBLING_CHANGES = {
    "fmer_kitchen": ["Args", "make_env", "make_vector_env", "evaluate", "check_args"],
    "fmer_multigoal": ["Args", "make_env", "make_vector_env", "evaluate", "add_vector_step", "check_args"],
}


@pytest.mark.parametrize("script", ["fmer_multigoal", "fmer_kitchen"])
def test_sibling_scripts_carry_the_parents_code_line_for_line(script):
    """Every function and class of the parent that a sibling does not change is the parent's, text for text: a fix to
    the parent that misses a sibling (or a sibling's own edit) fails here, not silently in its runs. The list of
    changes is exact, so the math tests above cover the siblings too."""
    sibling = importlib.import_module(script)
    assert sorted(drifted(sibling, fm, fm.__file__)) == sorted(SIBLING_CHANGES[script])


def test_drift_check_sees_a_changed_docstring():
    copy = type(fm)("copy")
    copy.__dict__.update(fm.__dict__)

    def bellman_target(rewards, terminations, next_q, gamma):
        """Eq. 20, with a docstring the parent dropped."""

    copy.bellman_target = bellman_target
    assert drifted(copy, fm, fm.__file__) == ["bellman_target"]
