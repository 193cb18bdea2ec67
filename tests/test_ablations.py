"""The paper's ablations in ablations/: each is a copy of fmer_continuous.py (fmer_kitchen.py for the kitchen
copy) that differs from it only in the idea under study (the diff-size test keeps them in step with the
parent), and really changes it."""

import ast
import copy
import dataclasses
import difflib
import importlib.util
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

import fmer_continuous as fm
import fmer_kitchen as fk

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = [
    "no_entropy",
    "uniform_weights",
    "clip",
    "exact_divergence",
    "fixed_beta",
    "top1",
    "ode_solver",
    "kitchen_fixed_beta",
]
OWN_ARGS = {
    "no_entropy": {"entropy_off_step": 0},
    "fixed_beta": {"beta": 0.5},
    "ode_solver": {"solver": "euler"},
    "kitchen_fixed_beta": {"beta": 0.5},
}
PARENTS = {"kitchen_fixed_beta": ("fmer_kitchen.py", fk)}  # the others: fmer_continuous.py


def parent_of(name: str):
    """(file name, module) of the script an ablation copies."""
    return PARENTS.get(name, ("fmer_continuous.py", fm))


# Changed lines (added + removed) against the parent, header included.
MAX_CHANGED_LINES = 40
DIFF_EXCEPTIONS = {
    # the solver has to reach all four sampler calls (acting, evaluation, critic target, actor candidates)
    "ode_solver": 64,
}


def load(name: str):
    """ablations/fmer_<name>.py as a module (ablations/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"fmer_{name}", ROOT / "ablations" / f"fmer_{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (torch.compile looks the module up there)
    spec.loader.exec_module(module)
    return module


AB = {name: load(name) for name in ABLATIONS}


def changed_lines(name: str) -> int:
    parent = (ROOT / parent_of(name)[0]).read_text().splitlines()
    child = (ROOT / "ablations" / f"fmer_{name}.py").read_text().splitlines()
    diff = list(difflib.unified_diff(parent, child, lineterm="", n=0))[2:]  # past the ---/+++ header
    return sum(1 for line in diff if line.startswith(("+", "-")))


# ---------------------------------------------------------------- every ablation: a small diff of the parent


@pytest.mark.parametrize("name", ABLATIONS)
def test_diff_against_parent_stays_small(name, record_property):
    size = changed_lines(name)
    record_property("changed_lines", size)
    print(f"fmer_{name}.py: {size} changed lines against {parent_of(name)[0]}")
    bound = DIFF_EXCEPTIONS.get(name, MAX_CHANGED_LINES)
    assert size <= bound, f"fmer_{name}.py differs from its parent in {size} lines (bound {bound})"
    assert size > 4, "only the header differs: the ablation is missing"
    if name in DIFF_EXCEPTIONS:  # an exception that is no longer needed goes
        assert size > MAX_CHANGED_LINES


# What each ablation changes, and only that; every other function and class, and the main block ("__main__"), is its
# parent's, text for text.
CHANGES = {
    "no_entropy": ["Args", "update_actor", "check_args", "__main__"],
    "uniform_weights": ["advantage_weights", "update_actor"],
    "clip": [
        "sample_candidates",
        "best_of_k_actions",
        "tanh_corrected_divergence",
        "tanh_gaussian_entropy_per_dim",
        "flow_losses",
        "update_critic",
        "update_actor",
        "check_args",
    ],
    "exact_divergence": ["hutchinson_divergence", "flow_losses"],
    "fixed_beta": ["Args", "update_actor", "check_args", "__main__"],
    "top1": ["advantage_weights", "update_actor"],
    "ode_solver": [
        "Args",
        "sample_candidates",
        "best_of_k_actions",
        "update_critic",
        "update_actor",
        "evaluate",
        "__main__",
    ],
    "kitchen_fixed_beta": ["Args", "update_actor", "check_args", "__main__"],
}


@pytest.mark.parametrize("name", ABLATIONS)
def test_what_an_ablation_does_not_change_is_its_parents_text(name):
    """Drift held by a test: a copy that keeps text its parent dropped (a docstring, a comment), or misses a fix to a
    function it does not study, fails here. The list is exact: a listed function that is the parent's fails too."""
    parent_file, parent = parent_of(name)
    parent_text, text = (ROOT / parent_file).read_text(), (ROOT / "ablations" / f"fmer_{name}.py").read_text()
    tree = ast.parse(parent_text)
    drifted = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and (
            not hasattr(AB[name], node.name)
            or inspect.getsource(getattr(AB[name], node.name)) != inspect.getsource(getattr(parent, node.name))
        )
    ]
    main = '\nif __name__ == "__main__":'  # the last block of every script
    drifted += ["__main__"] if parent_text[parent_text.index(main) :] != text[text.index(main) :] else []
    assert sorted(drifted) == sorted(CHANGES[name])


@pytest.mark.parametrize("name", ABLATIONS)
def test_header_and_args(name):
    lines = (ROOT / "ablations" / f"fmer_{name}.py").read_text().splitlines()
    assert lines[0].startswith("# FMER ablation, paper ") and ("Fig." in lines[0] or "Table" in lines[0])
    parent_file, parent_module = parent_of(name)
    assert f"`diff {parent_file} ablations/fmer_{name}.py`" in lines[1]
    module = AB[name]
    assert module.Args().exp_name == f"fmer_{name}"
    parent = {f.name: f.default for f in dataclasses.fields(parent_module.Args)}
    child = {f.name: f.default for f in dataclasses.fields(module.Args)}
    # every flag of the parent, with its default, plus the ablation's own
    assert {k: v for k, v in child.items() if k in parent and k != "exp_name"} == {
        k: v for k, v in parent.items() if k != "exp_name"
    }
    assert {k: v for k, v in child.items() if k not in parent} == OWN_ARGS.get(name, {})


# ---------------------------------------------------------------- helpers


class ClosedFormField(nn.Module):
    """A hand-written velocity with VelocityField's interface; the state plays no part."""

    def __init__(self, act_dim, velocity, jvp=None):
        super().__init__()
        self.act_dim, self.velocity, self.jvp = act_dim, velocity, jvp

    def embed_obs(self, obs):
        return obs

    def forward(self, obs_embedding, x, t):
        return self.velocity(x, t)

    def forward_with_jvp(self, obs_embedding, x, t, probe):
        return self.velocity(x, t), self.jvp(x, t, probe)


def small_learner(module, obs_dim=3, act_dim=2, hidden=32, seed=0):
    torch.manual_seed(seed)
    actor, critic = module.VelocityField(obs_dim, act_dim, hidden), module.TwinQ(obs_dim, act_dim, hidden)
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    log_beta = torch.tensor(math.log(0.5), requires_grad=True)
    optimizers = (
        torch.optim.Adam(actor.parameters(), lr=1e-3),
        torch.optim.Adam([log_alpha], lr=0.1),
        torch.optim.Adam([log_beta], lr=0.1),
    )
    return actor, critic, log_alpha, log_beta, optimizers


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def autograd_trace(net, obs_embedding, x, t):
    """tr(dv/dx) by d backward passes (create_graph: differentiable in theta), and v."""
    x = x.detach().requires_grad_(True)
    v = net(obs_embedding, x, t)
    trace = sum(torch.autograd.grad(v[..., j].sum(), x, create_graph=True)[0][..., j] for j in range(x.shape[-1]))
    return trace, v


# ---------------------------------------------------------------- uniform weights, top-1, fixed beta


def test_uniform_weights_are_exactly_one_over_k():
    ab = AB["uniform_weights"]
    torch.manual_seed(0)
    q = torch.randn(6, 8) * 3
    for beta in (0.01, 0.5, 100.0):
        w, ess = ab.advantage_weights(q, torch.tensor(beta))
        assert torch.equal(w, torch.full((6, 8), 1 / 8))
        torch.testing.assert_close(ess, torch.full((6,), 8.0))
    assert not torch.allclose(fm.advantage_weights(q, torch.tensor(0.5))[0], w)


def test_top1_puts_all_weight_on_the_best_candidate():
    ab = AB["top1"]
    torch.manual_seed(0)
    q = torch.randn(6, 8) * 3
    w, ess = ab.advantage_weights(q, torch.tensor(0.5))
    best = q.argmax(dim=1)
    assert torch.equal(w[torch.arange(6), best], torch.ones(6))
    w_rest = w.clone()
    w_rest[torch.arange(6), best] = 0.0
    assert torch.equal(w_rest, torch.zeros(6, 8))
    torch.testing.assert_close(ess, torch.ones(6))
    # the parent's softmax spreads weight over the others
    assert (fm.advantage_weights(q, torch.tensor(0.5))[0][torch.arange(6), best] < 0.999).any()


@pytest.mark.parametrize("name", ["fixed_beta", "uniform_weights", "top1", "kitchen_fixed_beta"])
def test_beta_stays_constant_where_the_parent_tunes_it(name):
    ab = AB[name]
    obs = torch.randn(32, 3)
    betas = {}
    for label, module in (("parent", parent_of(name)[1]), ("ablation", ab)):
        actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(module)
        before = log_beta.item()
        for _ in range(5):
            out = module.update_actor(obs, actor, critic, opt, log_alpha, alpha_opt, log_beta, beta_opt, 8, 5, 4.0, -2.0)
        betas[label] = (before, log_beta.item(), out)
    before, after, out = betas["ablation"]
    assert after == before and out["losses/beta"].item() == pytest.approx(0.5)
    assert "losses/beta_loss" not in out
    assert betas["parent"][1] != betas["parent"][0]  # the parent's beta moves on the same updates


# ---------------------------------------------------------------- exact divergence


def test_exact_divergence_equals_the_jacobian_trace(float64):
    ab = AB["exact_divergence"]
    torch.manual_seed(0)
    B, K, d = 6, 4, 5
    net = ab.VelocityField(3, d, 32)
    obs_embedding = net.embed_obs(torch.randn(B, 3)).unsqueeze(1)
    x, t = torch.randn(B, K, d) * 1.5, torch.rand(B, K, 1)
    probe = torch.eye(d)[:, None, None, :]  # as flow_losses builds it
    v, jvp = net.forward_with_jvp(obs_embedding, x, t, probe)
    exact = ab.exact_divergence(jvp, probe)
    reference, v_ref = autograd_trace(net, obs_embedding, x, t)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(exact, reference, atol=1e-12, rtol=1e-10)
    # and differentiable in theta: the same gradient as the double-backward trace
    params = [p for p in net.parameters() if p is not net.layers[-1].bias]  # the last bias does not enter
    grads = torch.autograd.grad(exact.sum(), params, retain_graph=True)
    for g, r in zip(grads, torch.autograd.grad(reference.sum(), params)):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-9)
    # the parent's one-probe Hutchinson estimate is not the trace
    rademacher = torch.randint(0, 2, (B, K, d)) * 2.0 - 1.0
    hutchinson = fm.hutchinson_divergence(net.forward_with_jvp(obs_embedding, x, t, rademacher)[1], rademacher)
    assert (hutchinson - reference).abs().max() > 1e-2


def test_exact_divergence_flow_losses_entropy(float64):
    ab = AB["exact_divergence"]
    torch.manual_seed(0)
    B, K, d = 8, 4, 3
    net = ab.VelocityField(3, d, 32)
    with torch.no_grad():  # large off-diagonal Jacobian terms, which Hutchinson's estimate picks up as noise
        for layer in net.layers:
            layer.weight.mul_(4.0)
    obs, u, weights = torch.randn(B, 3), torch.randn(B, K, d), torch.full((B, K), 1 / K)
    torch.manual_seed(2)
    _, entropy = ab.flow_losses(net, obs, u, weights)
    torch.manual_seed(2)  # the same draws of t and x0
    t = torch.rand(B, K, 1)
    x_t = (1 - t) * torch.randn_like(u) + t * u
    trace, v = autograd_trace(net, net.embed_obs(obs).unsqueeze(1), x_t, t)
    expected = d * fm.H_A0_PER_DIM + fm.tanh_corrected_divergence(trace, x_t, v).mean()
    torch.testing.assert_close(entropy, expected, atol=1e-12, rtol=1e-10)
    torch.manual_seed(2)
    assert abs(fm.flow_losses(net, obs, u, weights)[1].item() - expected.item()) > 0.05  # Hutchinson's noise


# ---------------------------------------------------------------- clip instead of tanh


def test_clip_entropy_is_gaussian_base_plus_plain_divergence():
    ab = AB["clip"]
    assert not hasattr(ab, "tanh_corrected_divergence")
    assert ab.H_A0_PER_DIM == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    torch.manual_seed(0)
    B, K, d = 16, 8, 3
    net = ab.VelocityField(4, d, 32)
    obs, u, weights = torch.randn(B, 4), torch.randn(B, K, d) * 2, torch.full((B, K), 1 / K)
    torch.manual_seed(1)
    _, entropy = ab.flow_losses(net, obs, u, weights)
    torch.manual_seed(1)  # the same draws of t, x0 and the probe
    t = torch.rand(B, K, 1)
    x_t = (1 - t) * torch.randn_like(u) + t * u
    probe = torch.randint(0, 2, u.shape, dtype=u.dtype) * 2.0 - 1.0
    _, jvp = net.forward_with_jvp(net.embed_obs(obs).unsqueeze(1), x_t, t, probe)
    expected = d * 0.5 * math.log(2 * math.pi * math.e) + (probe * jvp).sum(-1).mean()
    torch.testing.assert_close(entropy, expected)
    torch.manual_seed(1)
    assert abs(fm.flow_losses(net, obs, u, weights)[1].item() - entropy.item()) > 0.5  # the parent's tanh terms


def test_clip_entropy_estimates_the_unclipped_gaussian():
    # the exact OT field from N(0, I) to N(m, sigma^2 I): its samples' entropy is the Gaussian's
    m, sigma, d, B, K = torch.tensor([0.5, -1.0, 0.0]), 0.6, 3, 4096, 8

    def slope(t):
        return (t * sigma**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * sigma**2)

    field = ClosedFormField(d, lambda x, t: m + slope(t) * (x - t * m), lambda x, t, probe: slope(t) * probe)
    torch.manual_seed(0)
    u = m + sigma * torch.randn(B, K, d)
    _, entropy = AB["clip"].flow_losses(field, torch.zeros(B, 1), u, torch.full((B, K), 1 / K))
    assert abs(entropy.item() - d * 0.5 * math.log(2 * math.pi * math.e * sigma**2)) < 0.05


def test_clip_acts_scores_and_trains_on_clipped_actions(monkeypatch):
    ab = AB["clip"]
    actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(ab)
    with torch.no_grad():  # a flow whose samples lie mostly outside [-1, 1]
        actor.layers[-1].bias.copy_(torch.tensor([6.0, -6.0]))
    seen = []
    original_forward = critic.forward
    monkeypatch.setattr(
        critic, "forward", lambda obs, action: seen.append(action.abs().max().item()) or original_forward(obs, action)
    )
    obs = torch.randn(64, 3)
    actions = ab.best_of_k_actions(actor, critic, obs, 8, 5)
    assert actions.abs().max() <= 1.0 and (actions.abs() == 1.0).any()
    batch = (obs, actions, torch.randn(64), torch.randn(64, 3), torch.zeros(64))
    ab.update_critic(batch, actor, critic, critic, torch.optim.Adam(critic.parameters()), 0.99, 0.005, 8, 5)
    assert len(seen) == 3 and max(seen) == 1.0  # acting, critic target and critic loss
    # the parent squashes instead: the same flow gives actions strictly inside the box
    assert (fm.best_of_k_actions(actor, critic, obs, 8, 5).abs() < 1.0).float().mean() > 0.5


def test_clip_flow_targets_are_exactly_the_clipped_actions(monkeypatch):
    """App. D.1: "use the environment actions directly as the flow targets". Trained on the raw samples
    instead, the entropy would be that of an unbounded u, and mass beyond +-1 would meet the entropy
    constraint for free while the actions pile up on the box edges."""
    ab = AB["clip"]
    actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(ab)
    with torch.no_grad():  # samples both inside and outside [-1, 1]
        actor.layers[-1].bias.copy_(torch.tensor([1.5, 0.0]))
    obs = torch.randn(64, 3)
    torch.manual_seed(5)
    raw = ab.sample_candidates(actor, obs, 8, 5)  # the candidates update_actor draws next, from the same seed
    assert raw.abs().max() > 2.0 and (raw.abs() < 0.9).float().mean() > 0.2
    targets, scored = [], []
    original_flow_losses, original_forward = ab.flow_losses, critic.forward
    monkeypatch.setattr(ab, "flow_losses", lambda v, o, u, w: targets.append(u) or original_flow_losses(v, o, u, w))
    monkeypatch.setattr(critic, "forward", lambda o, a: scored.append(a) or original_forward(o, a))
    torch.manual_seed(5)
    ab.update_actor(obs, actor, critic, opt, log_alpha, alpha_opt, log_beta, beta_opt, 8, 5, 4.0, -2.0)
    assert torch.equal(targets[0], raw.clamp(-1.0, 1.0))  # the env actions, not the raw samples
    assert torch.equal(scored[0], targets[0])  # and they are what the critic scored


# ---------------------------------------------------------------- ODE solvers


def solve(ab, field, solver, num_steps=10, shape=(3, 4)):
    torch.manual_seed(0)
    u = ab.sample_candidates(field, torch.zeros(shape[0], 1), shape[1], num_steps, solver)
    torch.manual_seed(0)
    return u, torch.randn(*shape, field.act_dim)


def test_midpoint_and_rk4_exact_on_a_field_linear_in_t():
    ab = AB["ode_solver"]
    c, slope = torch.tensor([0.7, -1.3]), 1.5
    field = ClosedFormField(2, lambda x, t: c + slope * t + 0.0 * x)
    for solver in ("midpoint", "rk4"):
        u, x0 = solve(ab, field, solver)
        torch.testing.assert_close(u, x0 + c + slope / 2, atol=1e-6, rtol=0)  # exact flow: x0 + c + slope / 2
    u, x0 = solve(ab, field, "euler")
    torch.testing.assert_close(u, x0 + c + slope * 9 / 20, atol=1e-6, rtol=0)  # left points: (N - 1) / 2N


def test_rk4_exact_on_a_cubic_in_t_where_midpoint_is_not():
    ab = AB["ode_solver"]
    field = ClosedFormField(2, lambda x, t: 4 * t**3 + 0.0 * x)  # exact flow: x0 + 1
    u, x0 = solve(ab, field, "rk4")
    torch.testing.assert_close(u, x0 + 1.0, atol=1e-6, rtol=0)
    u, x0 = solve(ab, field, "midpoint")
    assert (u - x0 - 1.0).abs().min() > 1e-3


def test_solvers_step_the_state_as_their_stages_say():
    # v = lam x: one step multiplies x by the solver's Taylor polynomial of exp(lam h)
    ab = AB["ode_solver"]
    lam, n = -1.7, 10
    z = lam / n
    growth = {"euler": 1 + z, "midpoint": 1 + z + z**2 / 2, "rk4": 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24}
    field = ClosedFormField(2, lambda x, t: lam * x)
    for solver, g in growth.items():
        u, x0 = solve(ab, field, solver, n)
        torch.testing.assert_close(u, g**n * x0, atol=1e-6, rtol=1e-6)
    assert abs(growth["rk4"] ** n - math.exp(lam)) < 1e-5 < abs(growth["midpoint"] ** n - math.exp(lam))
    with pytest.raises(ValueError, match="unknown ODE solver"):
        ab.sample_candidates(field, torch.zeros(1, 1), 2, n, "heun")


def test_euler_solver_matches_the_parent_sampler():
    ab = AB["ode_solver"]
    torch.manual_seed(0)
    net = fm.VelocityField(3, 2, 32)
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    ours = ab.sample_candidates(net, obs, 8, 10, "euler")
    torch.manual_seed(1)
    torch.testing.assert_close(ours, fm.sample_candidates(net, obs, 8, 10), atol=1e-6, rtol=1e-6)


def test_solver_reaches_every_sampler_call(monkeypatch):
    ab = AB["ode_solver"]
    actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(ab, obs_dim=3, act_dim=1)
    solvers = []
    original = ab.sample_candidates
    monkeypatch.setattr(ab, "sample_candidates", lambda *a: solvers.append(a[-1]) or original(*a))
    obs = torch.randn(8, 3)
    batch = (obs, torch.rand(8, 1) * 2 - 1, torch.randn(8), torch.randn(8, 3), torch.zeros(8))
    envs = ab.make_vector_env("Pendulum-v1", 1)
    envs.reset(seed=0)
    calls = {
        "acting": lambda solver: ab.best_of_k_actions(actor, critic, obs, 4, 3, solver),
        "critic target": lambda solver: ab.update_critic(
            batch, actor, critic, critic, torch.optim.Adam(critic.parameters()), 0.99, 0.005, 4, 3, solver
        ),
        "actor candidates": lambda solver: ab.update_actor(
            obs, actor, critic, opt, log_alpha, alpha_opt, log_beta, beta_opt, 4, 3, 2.0, -1.0, solver
        ),
        "evaluation": lambda solver: ab.evaluate(actor, critic, envs, 2.0, 0.0, 4, 3, torch.device("cpu"), solver),
    }
    for name, call in calls.items():
        for solver in ("midpoint", "rk4"):
            solvers.clear()
            call(solver)
            assert solvers and set(solvers) == {solver}, name
    envs.close()


# ---------------------------------------------------------------- no entropy


def actor_update_with_gate(gate: float, steps=1, seed=0):
    ab = AB["no_entropy"]
    actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(ab, seed=seed)
    start = copy.deepcopy(actor)
    obs = torch.randn(32, 3)
    log_alphas = [log_alpha.item()]
    torch.manual_seed(1)
    for _ in range(steps):
        # a target far above the entropy, so the parent's alpha would rise
        out = ab.update_actor(
            obs, actor, critic, opt, log_alpha, alpha_opt, log_beta, beta_opt, 8, 5, 4.0, 20.0, torch.tensor(gate)
        )
        log_alphas.append(log_alpha.item())
    return start, actor, critic, obs, out, log_alphas


def wcfm_only_gradient(start, critic, obs):
    """The gradient of L_WCFM alone, from the same random draws as the first update."""
    ab = AB["no_entropy"]
    torch.manual_seed(1)
    u = ab.sample_candidates(start, obs, 8, 5)
    beta = torch.tensor(math.log(0.5)).exp()  # as update_actor computes it
    weights, _ = ab.advantage_weights(ab.score_candidates(critic, obs, torch.tanh(u)), beta)
    wcfm, _ = ab.flow_losses(start, obs, u, weights)
    return torch.autograd.grad(wcfm, list(start.parameters()))


def test_no_entropy_gate_off_alpha_zero_and_frozen():
    start, actor, critic, obs, out, log_alphas = actor_update_with_gate(0.0)
    assert out["losses/alpha"].item() == 0.0
    assert out["losses/actor_loss"].item() == out["losses/wcfm_loss"].item()
    for g, ref in zip([p.grad for p in actor.parameters()], wcfm_only_gradient(start, critic, obs)):
        torch.testing.assert_close(g, ref)  # no entropy in the actor's gradient
    *_, log_alphas = actor_update_with_gate(0.0, steps=5)
    assert log_alphas == [log_alphas[0]] * 6  # log alpha untouched, Adam momentum or not


def test_no_entropy_gate_on_entropy_active_and_alpha_tuned():
    start, actor, critic, obs, out, log_alphas = actor_update_with_gate(1.0)
    assert out["losses/alpha"].item() == pytest.approx(0.5)
    assert out["losses/actor_loss"].item() != out["losses/wcfm_loss"].item()
    grads = [p.grad for p in actor.parameters()]
    assert any(not torch.allclose(g, ref) for g, ref in zip(grads, wcfm_only_gradient(start, critic, obs)))
    assert log_alphas[1] > log_alphas[0]  # entropy far below target: alpha rises


@pytest.mark.slow
def test_no_entropy_gate_switches_inside_one_compiled_graph():
    # the gate is a tensor changed in place: flipping it must not recompile (a Python constant would)
    import torch._dynamo

    ab = AB["no_entropy"]
    actor, critic, log_alpha, log_beta, (opt, alpha_opt, beta_opt) = small_learner(ab)
    gate, target = torch.tensor(1.0), torch.tensor(20.0)

    def actor_step(obs, target_entropy, entropy_on):
        return ab.update_actor(
            obs, actor, critic, opt, log_alpha, alpha_opt, log_beta, beta_opt, 4, 3, 2.0, target_entropy, entropy_on
        )

    torch._dynamo.reset()
    step = torch.compile(actor_step, backend="eager")
    obs = torch.randn(16, 3)
    for _ in range(2):
        assert step(obs, target, gate)["losses/alpha"].item() > 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    gate.fill_(0.0)
    frozen = log_alpha.item()
    for _ in range(2):
        out = step(obs, target, gate)
        assert out["losses/alpha"].item() == 0.0 and log_alpha.item() == frozen
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the same graphs ran
    torch._dynamo.reset()


# ---------------------------------------------------------------- runs, as a user runs them

# Tiny: the smoke run checks that each copy's main block runs and its own flag takes effect, not learning.
SMOKE = "--env-id Pendulum-v1 --total-timesteps 100 --learning-starts 60 --num-envs 2 --eval-frequency 100"
SMOKE = [*SMOKE.split(), *"--eval-episodes 2 --log-frequency 10 --hidden-dim 16 --batch-size 16 --num-candidates 4".split()]
SMOKE += ["--ode-steps", "2", "--seed", "3"]
OWN_FLAGS = {
    "no_entropy": ["--entropy-off-step", "80"],
    "fixed_beta": ["--beta", "0.3"],
    "ode_solver": ["--solver", "rk4"],
    "kitchen_fixed_beta": ["--num-tasks", "1", "--beta", "0.3"],
}


def run_ablation(name, args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "ablations" / f"fmer_{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def read_scalars(run_root: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = list((run_root / "runs").iterdir())
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return run_dir.name, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# Run only the copies whose main block is their own: the others' is the parent's (held to it above), which
# tests/test_fmer_runs.py runs, and their changed functions are tested above.
@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in ABLATIONS if "__main__" in CHANGES[name]])
def test_smoke_run(name, tmp_path):
    smoke = SMOKE[2:] if name.startswith("kitchen") else SMOKE  # the kitchen copy has no --env-id
    proc = run_ablation(name, smoke + OWN_FLAGS.get(name, []), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_name, scalars = read_scalars(tmp_path)
    assert f"__fmer_{name}__" in run_name
    assert min(step for step, _ in scalars["losses/wcfm_loss"]) >= 60  # the updates ran
    assert "eval/episodic_return" in scalars
    if name == "no_entropy":  # alpha is 0 from step 80 on, and was not before
        assert all(value == 0.0 for step, value in scalars["losses/alpha"] if step >= 80)
        assert all(value > 0.0 for step, value in scalars["losses/alpha"] if step < 80)
        alpha_steps = [step for step, _ in scalars["losses/alpha"]]
        assert any(step < 80 for step in alpha_steps) and any(step >= 80 for step in alpha_steps)
    if name.endswith("fixed_beta"):
        assert all(value == pytest.approx(0.3) for _, value in scalars["losses/beta"])
        assert "losses/beta_loss" not in scalars


@pytest.mark.parametrize("name", ["fixed_beta", "kitchen_fixed_beta"])
def test_fixed_beta_refuses_a_non_positive_beta(name):
    with pytest.raises(SystemExit, match=r"^error: --beta must be positive, got 0.0$"):
        AB[name].check_args(AB[name].Args(beta=0.0, ess_target=4.0), torch.device("cpu"))


def test_clip_refuses_unbounded_actions():
    gym.register("FmerAblationUnbounded-v0", entry_point=lambda **kwargs: _UnboundedEnv())
    args = AB["clip"].Args(env_id="FmerAblationUnbounded-v0", ess_target=4.0)
    with pytest.raises(SystemExit, match="clips actions to finite Box bounds"):
        AB["clip"].check_args(args, torch.device("cpu"))


class _UnboundedEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
