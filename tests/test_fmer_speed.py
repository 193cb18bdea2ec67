"""The fast paths (--compile, --cudagraphs) compute what the eager path computes."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fmer_continuous as fm

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM, HIDDEN, BATCH, K, N = 3, 2, 32, 16, 4, 3
CUDA = torch.cuda.is_available()


def learner(device: torch.device):
    """A small learner set up as the script sets it up, and its two update steps."""
    torch.manual_seed(0)
    actor = fm.VelocityField(OBS_DIM, ACT_DIM, HIDDEN).to(device)
    critic = fm.TwinQ(OBS_DIM, ACT_DIM, HIDDEN).to(device)
    target_critic = fm.TwinQ(OBS_DIM, ACT_DIM, HIDDEN).to(device)
    target_critic.load_state_dict(critic.state_dict())
    capturable = device.type == "cuda"
    actor_opt = torch.optim.Adam(actor.parameters(), lr=torch.tensor(1e-3, device=device), capturable=capturable)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-3, capturable=capturable)
    log_alpha = torch.tensor(-0.7, device=device, requires_grad=True)
    log_beta = torch.tensor(-0.7, device=device, requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=3e-3, capturable=capturable)
    beta_opt = torch.optim.Adam([log_beta], lr=3e-2, capturable=capturable)

    def critic_step(*batch):  # as in the script: tensors in, a dict of tensors out
        return fm.update_critic(batch, actor, critic, target_critic, critic_opt, 0.99, 0.005, K, N)

    def actor_step(obs, target_entropy):
        return fm.update_actor(
            obs, actor, critic, actor_opt, log_alpha, alpha_opt, log_beta, beta_opt, K, N, 2.0, target_entropy
        )

    modules = [actor, critic, target_critic]
    return critic_step, actor_step, modules


def batches(device, count):
    g = torch.Generator().manual_seed(7)
    for _ in range(count):
        obs, next_obs = torch.randn(BATCH, OBS_DIM, generator=g), torch.randn(BATCH, OBS_DIM, generator=g)
        yield tuple(
            x.to(device)
            for x in (
                obs,
                torch.rand(BATCH, ACT_DIM, generator=g) * 2 - 1,
                torch.randn(BATCH, generator=g),
                next_obs,
                (torch.rand(BATCH, generator=g) < 0.2).float(),
            )
        )


def fast_path(fn, compile, cudagraphs):
    """fn as the script's main block runs it with --compile and --cudagraphs."""
    fn = torch.compile(fn) if compile else fn
    return fm.CudaGraphFunction(fn) if cudagraphs else fn


def run_updates(device, compile=False, cudagraphs=False, count=5, seed=1):
    """count critic + actor updates; returns every logged value and the final weights."""
    critic_step, actor_step, modules = learner(device)
    critic_step = fast_path(critic_step, compile, cudagraphs)
    actor_step = fast_path(actor_step, compile, cudagraphs)
    target_entropy = torch.tensor(-1.0, device=device)
    torch.manual_seed(seed)
    logged = []
    for batch in batches(device, count):
        for out in (critic_step(*batch), actor_step(batch[0], target_entropy)):
            logged.append({name: value.detach().clone() for name, value in out.items()})
    weights = torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])
    return logged, weights


def assert_same_run(a, b, rtol, atol):
    (logged_a, weights_a), (logged_b, weights_b) = a, b
    for step_a, step_b in zip(logged_a, logged_b, strict=True):
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], rtol=rtol, atol=atol, msg=name)
    torch.testing.assert_close(weights_a, weights_b, rtol=rtol, atol=atol)


@pytest.fixture
def inductor_uses_eager_random_numbers():
    # Inductor draws its own random numbers unless told to call torch's, and the updates sample.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield


# One compile in the session, of the script's own run: a cold torch.compile on a CPU builds a C++ kernel per fused op
# (minutes on 2 cores); the run is as small as the comparison allows (4 candidates, 2 ODE steps, 11 updates).
COMPARED = "--env-id Pendulum-v1 --total-timesteps 110 --learning-starts 100 --log-frequency 1 --eval-frequency 110"
COMPARED = [*COMPARED.split(), *"--eval-episodes 1 --hidden-dim 32 --batch-size 16 --num-candidates 4 --ode-steps 2".split()]
# the script run with Inductor drawing its random numbers through torch's generator, as eager code draws them
EAGER_RANDOM = "import runpy, sys, torch._inductor.config as c; c.fallback_random = True; sys.argv = sys.argv[1:]; "
EAGER_RANDOM += "runpy.run_path(sys.argv[0], run_name='__main__')"


def logged_run(tmp_path, name, *flags) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cwd = tmp_path / name
    cwd.mkdir()
    command = [sys.executable, "-c", EAGER_RANDOM, str(ROOT / "fmer_continuous.py"), *COMPARED, *flags]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval return" in proc.stdout
    (run_dir,) = (cwd / "runs").iterdir()
    acc = EventAccumulator(str(run_dir)).Reload()
    tags = [tag for tag in acc.Tags()["scalars"] if tag.startswith(("losses/", "eval/", "charts/ess", "charts/entropy"))]
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags}


@pytest.mark.slow
def test_compile_flag_runs_the_same_training_as_eager_on_cpu(tmp_path):
    """--compile end to end (the updates and the acting, as main wires them) against eager, the same seed: every loss,
    temperature and the evaluation agree to float tolerance over 11 updates; another seed does not."""
    eager, compiled = logged_run(tmp_path, "eager"), logged_run(tmp_path, "compiled", "--compile")
    assert "losses/wcfm_loss" in eager and len(eager["losses/qf_loss"]) == 11 and "eval/episodic_return" in eager
    assert eager.keys() == compiled.keys()
    for tag in eager:
        steps, values = zip(*eager[tag])
        assert [step for step, _ in compiled[tag]] == list(steps), tag
        torch.testing.assert_close([v for _, v in compiled[tag]], list(values), rtol=1e-3, atol=1e-4, msg=tag)
    other = logged_run(tmp_path, "seed2", "--seed", "2")["losses/qf_loss"]
    assert not all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4) for (_, a), (_, b) in zip(other, eager["losses/qf_loss"]))


def test_cudagraphs_without_cuda_is_one_line_error(tmp_path):
    if CUDA:
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fmer_continuous.py"), "--env-id", "Pendulum-v1", "--cudagraphs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "error: --cudagraphs needs a CUDA device (try --compile alone)"
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not CUDA, reason="--cudagraphs needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("compile", [False, True], ids=["cudagraphs", "compile+cudagraphs"])
def test_cudagraphs_match_eager_on_cuda(compile, inductor_uses_eager_random_numbers):
    # 5 calls: 3 eager warm-up calls, the capture, and a replay with new inputs
    device = torch.device("cuda")
    eager = run_updates(device)
    assert_same_run(eager, run_updates(device, compile=compile, cudagraphs=True), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU; this machine has none")
def test_compiled_updates_match_eager_on_cuda(inductor_uses_eager_random_numbers):
    device = torch.device("cuda")
    assert_same_run(run_updates(device), run_updates(device, compile=True), rtol=1e-3, atol=1e-4)
