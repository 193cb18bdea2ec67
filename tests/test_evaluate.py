"""benchmark/evaluate.py: a checkpoint is evaluated by the script that saved it, with that script's own evaluate."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fmer_continuous as fm
from benchmark import evaluate as tool  # benchmark/ is a namespace package under the repo root (pytest.ini)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ablations"))
import fmer_ode_solver as ode  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def keep_imported_scripts():
    """The tool imports each checkpoint's script under its own name: give the other tests their modules back."""
    names = [path.stem for path in tool.SCRIPTS.values()]
    before = {name: sys.modules.get(name) for name in names}
    yield
    for name, module in before.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def save(module, path, **flags):
    """A checkpoint of random weights, as module's --save-model writes it."""
    args = module.Args(env_id="Pendulum-v1", hidden_dim=16, eval_episodes=2, num_candidates=4, ode_steps=2, **flags)
    learner = {"actor": module.VelocityField(3, 1, 16), "critic": module.TwinQ(3, 1, 16)}
    module.save(str(path), args, {**learner, "log_alpha": torch.zeros(()), "log_beta": torch.zeros(())})
    return path


def line(path, episodes=None, seed=None) -> str:
    return tool.evaluate_checkpoint(str(path), episodes, seed, CPU)


def result(text: str) -> str:
    """The evaluation line without its head (path and script)."""
    return text.split(": ", 1)[1]


def error(path, episodes=None) -> str:
    with pytest.raises(SystemExit) as stop:
        line(path, episodes)
    message = str(stop.value.code)
    assert message.startswith("error:") and "\n" not in message, message
    return message


def test_the_line_is_the_scripts_own_evaluation_on_eval_envs_seeded_as_in_training(tmp_path):
    # the order the training run makes things in: seeds, env check, eval envs reset with seed + 10000, the networks'
    # init, the weights
    path = save(fm, tmp_path / "m.fmer_model")
    checkpoint = torch.load(path, weights_only=True)
    torch.manual_seed(5)
    np.random.seed(5)
    envs = fm.make_vector_env("Pendulum-v1", 2)
    action_space = envs.single_action_space
    envs.reset(seed=5 + 10_000)
    actor, critic = fm.VelocityField(3, 1, 16), fm.TwinQ(3, 1, 16)
    actor.load_state_dict(checkpoint["actor"])
    critic.load_state_dict(checkpoint["critic"])
    returns, _ = fm.evaluate(actor, critic, envs, action_space.high, 0.0, 4, 2, CPU)
    seeded = line(path, seed=5)
    assert re.fullmatch(
        r"\S+ \(fmer_continuous.py\) on Pendulum-v1: eval return -?\d+\.\d+ \+- \d+\.\d+ over 2 episodes \(mean length 200\)",
        seeded,
    ), seeded
    assert f"eval return {returns.mean():.2f} +- {returns.std():.2f} over 2 episodes" in seeded
    assert line(path, seed=5) == seeded and result(line(path)) != result(seeded)  # the checkpoint's own seed is 1
    assert "over 3 episodes" in line(path, episodes=3)


def test_an_ablation_is_evaluated_by_its_own_code(tmp_path):
    # fmer_ode_solver.py samples with the checkpoint's solver: rk4 differs from Euler, and its Euler is the parent's
    checkpoint = torch.load(save(ode, tmp_path / "rk4.fmer_model", solver="rk4"), weights_only=True)
    rk4 = line(tmp_path / "rk4.fmer_model")
    assert "(fmer_ode_solver.py)" in rk4
    checkpoint["args"]["solver"] = "euler"
    torch.save(checkpoint, tmp_path / "euler.fmer_model")
    torch.save({**checkpoint, "script": "fmer_continuous.py"}, tmp_path / "parent.fmer_model")
    euler, parent = line(tmp_path / "euler.fmer_model"), line(tmp_path / "parent.fmer_model")
    assert result(rk4) != result(euler) and result(euler) == result(parent)


def test_the_weights_are_loaded(tmp_path):
    checkpoint = torch.load(save(fm, tmp_path / "m.fmer_model"), weights_only=True)
    checkpoint["actor"]["layers.2.bias"] += 2.0
    torch.save(checkpoint, tmp_path / "shifted.fmer_model")
    assert result(line(tmp_path / "shifted.fmer_model")) != result(line(tmp_path / "m.fmer_model"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_committed_checkpoints_name_their_script(seed):
    path = ROOT / "docs" / "multigoal" / f"paperbudget_w64_seed{seed}_45k.fmer_model"
    assert torch.load(path, weights_only=True)["script"] == "fmer_multigoal.py"
    text = line(path, episodes=2)
    assert "(fmer_multigoal.py) on the multi-goal env: eval return" in text and "nearest-goal fraction" in text


def test_a_checkpoint_that_cannot_be_evaluated_gets_one_line(tmp_path):
    good = torch.load(save(fm, tmp_path / "m.fmer_model"), weights_only=True)
    no_seed = {name: value for name, value in good["args"].items() if name != "seed"}
    no_env = {name: value for name, value in good["args"].items() if name != "env_id"}
    no_script = {name: value for name, value in good.items() if name != "script"}
    files = {
        "partial.pt": {"actor": {}},
        "no_seed.fmer_model": {**good, "args": no_seed},
        "no_env.fmer_model": {**good, "args": no_env},
        "no_script.fmer_model": no_script,
        "elsewhere.fmer_model": {**good, "script": "../../../tmp/x.py"},
        "empty.fmer_model": {**good, "actor": {}},
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    cases = [
        ("nowhere.fmer_model", "checkpoint not found: "),
        (ROOT / "README.md", "cannot read checkpoint"),
        ("partial.pt", "partial.pt is not a checkpoint saved with --save-model"),
        ("no_seed.fmer_model", "no_seed.fmer_model is not a checkpoint saved with --save-model"),
        ("no_env.fmer_model", "has no env_id in its args, which fmer_continuous.py needs"),
        ("no_script.fmer_model", "no_script.fmer_model does not name the script that saved it (no 'script' key)"),
        ("elsewhere.fmer_model", "'../../../tmp/x.py', which is not a script of this repository"),
        ("empty.fmer_model", "empty.fmer_model does not fit Pendulum-v1: Error(s) in loading state_dict"),
    ]
    for name, expect in cases:
        assert expect in error(tmp_path / name), name


@pytest.mark.slow  # starts the tool as a process
def test_the_command_evaluates_every_file_and_says_one_line_per_bad_one(tmp_path):
    save(fm, tmp_path / "m.fmer_model")
    torch.save({"actor": {}}, tmp_path / "partial.pt")

    def evaluate(*args):
        command = [sys.executable, str(ROOT / "benchmark" / "evaluate.py"), *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    proc = evaluate("m.fmer_model", "partial.pt", "m.fmer_model", "--no-cuda")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: partial.pt is not a checkpoint saved with --save-model"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and "(fmer_continuous.py) on Pendulum-v1: eval return" in lines[0]
    proc = evaluate("m.fmer_model", "--eval-episodes", "0")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --eval-episodes must be at least 1, got 0", proc.stderr
