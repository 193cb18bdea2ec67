"""End-to-end tests: fmer_continuous.py run as a user runs it, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import fmer_continuous as fm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fmer_continuous.py"
# Small enough for CI: learning_starts < total_timesteps, so updates (critic and actor) do run, and the two envs end
# their first 200-step episodes at step 400.
SMOKE = "--env-id Pendulum-v1 --total-timesteps 400 --learning-starts 360 --num-envs 2 --eval-frequency 200"
SMOKE = [*SMOKE.split(), *"--eval-episodes 2 --log-frequency 20 --hidden-dim 16 --batch-size 16 --num-candidates 4".split()]
SMOKE += ["--ode-steps", "2", "--seed", "3"]


def run_script(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def read_scalars(run_root: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = list((run_root / "runs").iterdir())
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def documented_tags() -> set:
    text = (ROOT / "docs" / "flags_and_logs.md").read_text()
    section = text.split("## Tensorboard tags", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-zA-Z_]+/[a-zA-Z_]+)` \|", section, flags=re.M))


@pytest.fixture(scope="module")
def two_smoke_runs(tmp_path_factory):
    results = []
    for name in ("a", "b"):
        cwd = tmp_path_factory.mktemp(name)
        proc = run_script(SMOKE, cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append((proc, read_scalars(cwd)))
    return results


@pytest.mark.slow
def test_smoke_run_logs_every_documented_tag(two_smoke_runs):
    proc, scalars = two_smoke_runs[0]
    tags = documented_tags()
    assert len(tags) >= 18
    assert tags <= set(scalars), f"missing tags: {sorted(tags - set(scalars))}"
    assert set(scalars) <= tags, f"undocumented tags: {sorted(set(scalars) - tags)}"
    # the updates ran: losses were logged after learning_starts, and the controllers moved
    assert min(step for step, _ in scalars["losses/wcfm_loss"]) >= 360
    assert scalars["losses/beta"][-1][1] != pytest.approx(0.5)
    assert "eval return" in proc.stdout
    # the annealed actor lr and entropy target (Pendulum: 1 action dimension) follow their schedules
    for step, lr in scalars["charts/learning_rate"]:
        assert lr == pytest.approx(fm.linear_schedule(3e-4, 3e-5, step / 400), rel=1e-5)
    for step, target in scalars["charts/target_entropy"]:
        assert target == pytest.approx(fm.linear_schedule(0.0, -1.0, step / 400), abs=1e-6)


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(two_smoke_runs):
    (_, a), (_, b) = two_smoke_runs
    compared = [t for t in a if t.startswith(("losses/", "eval/", "charts/e"))]
    assert "losses/qf_loss" in compared and "losses/wcfm_loss" in compared
    for tag in compared:
        assert a[tag] == b[tag], tag


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_bad_input_one_line(tmp_path):
    assert "FMER needs bounded Box actions and flat Box observations" in one_line_error(
        run_script(["--env-id", "CartPole-v1"], tmp_path)
    )
    assert not (tmp_path / "runs").exists()  # it stops before the run starts


@pytest.mark.parametrize(
    "flags, expect",
    [
        ({"env_id": "NoSuchEnv-v0"}, "cannot make env"),
        ({"ess_target": 9.0}, "--ess-target"),
        ({"beta_init": 0.0}, "--beta-init must be positive"),
        ({"policy_frequency": 0}, "--policy-frequency must be at least 1"),
    ],
)
def test_bad_flags_one_line(flags, expect):  # the checks the command above runs, without a process each
    with pytest.raises(SystemExit) as stop:
        fm.check_args(fm.Args(**{"ess_target": 4.0, **flags}), torch.device("cpu"))
    assert str(stop.value).startswith("error:") and expect in str(stop.value) and "\n" not in str(stop.value)


@pytest.mark.slow
def test_non_finite_loss_stops_and_names_it(tmp_path):
    # gamma = 1e38 overflows the Bellman target, so the critic loss is inf on the first update
    proc = run_script(
        [
            "--env-id",
            "Pendulum-v1",
            "--total-timesteps",
            "200",
            "--learning-starts",
            "50",
            "--log-frequency",
            "10",
            "--hidden-dim",
            "32",
            "--gamma",
            "1e38",
        ],
        tmp_path,
    )
    assert re.match(r"error: qf_loss is (inf|nan) at step \d+; stopping", one_line_error(proc))


def test_infinite_action_bound_is_refused():
    gym.register("FmerTestUnbounded-v0", entry_point=lambda **kwargs: _UnboundedEnv())
    with pytest.raises(SystemExit, match="bounded Box actions"):
        fm.check_args(fm.Args(env_id="FmerTestUnbounded-v0", ess_target=4.0), torch.device("cpu"))


class _UnboundedEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)


@pytest.mark.slow
def test_save_model_writes_a_model_that_benchmark_evaluate_loads(tmp_path):
    args = ["--env-id", "Pendulum-v1", "--total-timesteps", "60", "--learning-starts", "20", "--eval-frequency", "30"]
    args += ["--num-candidates", "4", "--ode-steps", "2", "--eval-episodes", "1", "--hidden-dim", "32"]
    proc = run_script([*args, "--save-model", "--run-name", "m"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "runs/m/fmer_continuous.fmer_model"
    assert sorted(p.name.split(".")[0] for p in model.parent.iterdir()) == ["events", "fmer_continuous"]  # no state.pt
    ckpt = torch.load(model, weights_only=True)
    assert {"actor", "critic", "log_alpha", "log_beta", "args"} <= set(ckpt)
    # benchmark/evaluate.py takes the env and width from the checkpoint (tests/test_evaluate.py has the rest)
    command = [sys.executable, str(ROOT / "benchmark" / "evaluate.py"), str(model), "--eval-episodes", "2"]
    ev = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    assert re.search(r"on Pendulum-v1: eval return -?\d+\.\d+ \+- \d+\.\d+ over 2 episodes", ev.stdout), ev.stdout
    # the "in your own code" snippet of docs/errors_and_checkpoints.md runs as written
    snippet = (ROOT / "docs" / "errors_and_checkpoints.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {"path": str(model)}
    exec(snippet, namespace)
    assert np.isfinite(namespace["reward"])


def test_vector_step_stores_true_final_obs_and_bootstraps_truncation():
    envs = fm.make_vector_env("Pendulum-v1", 2)  # 200-step time limit, never terminates
    rb = fm.ReplayBuffer(512, 3, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    actions = np.zeros((2, 1), np.float32)
    for step in range(201):
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        fm.add_vector_step(rb, obs, actions, next_obs, rewards, terminations, infos)
        if step == 199:  # the time limit: truncated, not terminated
            assert truncations.all() and not terminations.any()
            final = np.stack(infos["final_obs"])
            stored = rb.next_obs[398:400].numpy()
            np.testing.assert_allclose(stored, final, rtol=1e-6)
            assert not np.allclose(stored, next_obs)  # not the reset observation
            assert [e[2] for e in fm.finished_episodes(infos)] == [200, 200]
            reset_obs = next_obs.copy()
        obs = next_obs
    assert (rb.terminations[:402] == 0).all()  # truncation bootstraps
    # the transition after the reset starts from the reset observation: none spans two episodes
    np.testing.assert_allclose(rb.obs[400:402].numpy(), reset_obs, rtol=1e-6)


def test_vector_step_stores_termination():
    envs = fm.make_vector_env("InvertedPendulum-v5", 1)  # falls over within a few steps
    rb = fm.ReplayBuffer(64, 4, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    episode_return = 0.0
    for step in range(64):
        actions = np.full((1, 1), 3.0, np.float32)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        episode_return += float(rewards[0])
        fm.add_vector_step(rb, obs, actions, next_obs, rewards, terminations, infos)
        if terminations[0]:
            break
        obs = next_obs
    assert terminations[0] and rb.terminations[step] == 1.0 and (rb.terminations[:step] == 0).all()
    np.testing.assert_allclose(rb.next_obs[step].numpy(), infos["final_obs"][0], rtol=1e-6)
    assert not np.allclose(rb.next_obs[step].numpy(), next_obs[0])
    assert fm.finished_episodes(infos) == [(0, episode_return, step + 1)]
