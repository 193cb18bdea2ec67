"""benchmark/evaluate.py: a checkpoint is evaluated by the script that saved it, with that script's own evaluate."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fmer_continuous as fm

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "benchmark" / "evaluate.py"
sys.path.insert(0, str(ROOT / "ablations"))
import fmer_ode_solver as ode  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts the tool as a process


def evaluate(*args, cwd):
    return subprocess.run(
        [sys.executable, str(EVALUATE), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def save(module, path, **flags):
    """A checkpoint of random weights, as module's --save-model writes it."""
    args = module.Args(env_id="Pendulum-v1", hidden_dim=16, eval_episodes=2, **flags)
    actor, critic = module.VelocityField(3, 1, 16), module.TwinQ(3, 1, 16)
    duals = torch.zeros(()), torch.zeros(())
    assert module.save_checkpoint(str(path), actor, critic, *duals, args)
    return path


def result(proc) -> str:
    """The evaluation line without its head (path and script)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().split(": ", 1)[1]


def test_the_same_command_prints_the_same_line_and_the_seed_changes_it(tmp_path):
    path = save(fm, tmp_path / "m.fmer_model")
    first, again = evaluate(path, cwd=tmp_path), evaluate(path, cwd=tmp_path)
    assert re.fullmatch(
        r"\S+ \(fmer_continuous.py\) on Pendulum-v1: eval return -?\d+\.\d+ \+- \d+\.\d+ over 2 episodes \(mean length 200\)",
        first.stdout.strip(),
    ), first.stdout
    assert first.stdout == again.stdout
    assert result(evaluate(path, "--seed", "7", cwd=tmp_path)) != result(first)
    assert "over 3 episodes" in evaluate(path, "--eval-episodes", "3", cwd=tmp_path).stdout


def test_an_ablation_is_evaluated_by_its_own_code(tmp_path):
    # fmer_ode_solver.py samples with the checkpoint's solver: rk4 differs from Euler, and its Euler is the parent's
    weights = save(ode, tmp_path / "rk4.fmer_model", solver="rk4")
    checkpoint = torch.load(weights, weights_only=True)
    rk4 = evaluate(weights, cwd=tmp_path)
    assert "(fmer_ode_solver.py)" in rk4.stdout
    checkpoint["args"]["solver"] = "euler"
    torch.save(checkpoint, tmp_path / "euler.fmer_model")
    euler = evaluate(tmp_path / "euler.fmer_model", cwd=tmp_path)
    checkpoint["script"] = "fmer_continuous.py"
    torch.save(checkpoint, tmp_path / "parent.fmer_model")
    parent = evaluate(tmp_path / "parent.fmer_model", cwd=tmp_path)
    assert result(rk4) != result(euler) and result(euler) == result(parent)


def test_a_file_saved_before_the_script_was_named_is_found_by_its_exp_name_or_its_args(tmp_path):
    # benchmark/run.py names the solver rows fmer_ode_solver_rk4 and so on: the longest script name that prefixes it
    checkpoint = torch.load(save(ode, tmp_path / "new.fmer_model", solver="rk4"), weights_only=True)
    del checkpoint["script"]
    checkpoint["args"]["exp_name"] = "fmer_ode_solver_rk4"
    torch.save(checkpoint, tmp_path / "old.fmer_model")
    old, new = evaluate(tmp_path / "old.fmer_model", cwd=tmp_path), evaluate(tmp_path / "new.fmer_model", cwd=tmp_path)
    assert "(fmer_ode_solver.py)" in old.stdout and result(old) == result(new)
    # a committed multi-goal checkpoint of 2026-11-30: no script name, an exp_name that starts with fmer_multigoal
    committed = ROOT / "docs" / "multigoal" / "paperbudget_w64_seed1_45k.fmer_model"
    assert "script" not in torch.load(committed, weights_only=True)
    line = evaluate(committed, "--eval-episodes", "4", cwd=tmp_path)
    assert "(fmer_multigoal.py) on the multi-goal env: eval return" in line.stdout and "nearest-goal fraction" in line.stdout


def test_the_episodes_are_those_of_the_eval_envs_seeded_as_in_training(tmp_path):
    # the order the training run (and the old --eval-only) makes things in: seeds, env check, eval envs reset with
    # seed + 10000, the networks' init, the weights
    path = save(fm, tmp_path / "m.fmer_model")
    checkpoint = torch.load(path, weights_only=True)
    torch.manual_seed(5)
    np.random.seed(5)
    action_space, observation_space = fm.check_env("Pendulum-v1")
    envs = fm.make_vector_env("Pendulum-v1", 2)
    envs.reset(seed=5 + 10_000)
    actor, critic = fm.VelocityField(3, 1, 16), fm.TwinQ(3, 1, 16)
    actor.load_state_dict(checkpoint["actor"])
    critic.load_state_dict(checkpoint["critic"])
    returns, _ = fm.evaluate(actor, critic, envs, action_space.high, 0.0, 8, 10, torch.device("cpu"))
    expected = f"eval return {returns.mean():.2f} +- {returns.std():.2f} over 2 episodes"
    assert expected in evaluate(path, "--seed", "5", "--no-cuda", cwd=tmp_path).stdout


def test_the_weights_are_loaded(tmp_path):
    checkpoint = torch.load(save(fm, tmp_path / "m.fmer_model"), weights_only=True)
    checkpoint["actor"]["layers.2.bias"] += 2.0
    torch.save(checkpoint, tmp_path / "shifted.fmer_model")
    assert result(evaluate(tmp_path / "shifted.fmer_model", cwd=tmp_path)) != result(
        evaluate(tmp_path / "m.fmer_model", cwd=tmp_path)
    )


def test_a_checkpoint_that_cannot_be_evaluated_gets_one_line(tmp_path):
    good = torch.load(save(fm, tmp_path / "m.fmer_model"), weights_only=True)
    torch.save({"actor": {}}, tmp_path / "partial.pt")
    no_seed = {name: value for name, value in good["args"].items() if name != "seed"}
    no_env = {name: value for name, value in good["args"].items() if name != "env_id"}
    torch.save({**good, "args": no_seed}, tmp_path / "no_seed.fmer_model")
    torch.save({**good, "args": no_env}, tmp_path / "no_env.fmer_model")
    torch.save({**good, "script": "../../../tmp/x.py"}, tmp_path / "elsewhere.fmer_model")
    torch.save({**good, "actor": {}}, tmp_path / "empty.fmer_model")
    cases = [
        ("nowhere.fmer_model", "checkpoint not found: nowhere.fmer_model"),
        (ROOT / "README.md", "cannot read checkpoint"),
        ("partial.pt", "partial.pt is not a checkpoint saved with --save-model"),
        ("no_seed.fmer_model", "no_seed.fmer_model is not a checkpoint saved with --save-model"),
        ("no_env.fmer_model", "has no env_id in its args, which fmer_continuous.py needs"),
        ("elsewhere.fmer_model", "which is not a script of this repository"),
        ("empty.fmer_model", "empty.fmer_model does not fit Pendulum-v1: Error(s) in loading state_dict"),
    ]
    for path, expect in cases:
        assert expect in one_line_error(evaluate(path, cwd=tmp_path)), path
    assert "--eval-episodes must be at least 1" in one_line_error(
        evaluate("m.fmer_model", "--eval-episodes", "0", cwd=tmp_path)
    )
    # one bad file among good ones: its line, the others' evaluations, exit status 1
    proc = evaluate("m.fmer_model", "partial.pt", "m.fmer_model", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: partial.pt is not a checkpoint")
    assert proc.stdout.count("eval return") == 2
