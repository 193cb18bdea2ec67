"""Evaluate checkpoints saved with --save-model, as CleanRL's cleanrl_utils/evals do for its scripts.

    python benchmark/evaluate.py runs/NAME/fmer_continuous.fmer_model [more checkpoints] [--eval-episodes 10] [--seed 1]

The script that saved a checkpoint (fmer_continuous.py, fmer_kitchen.py, fmer_multigoal.py or an ablation; the
file names it) builds the eval envs and the networks and runs its own `evaluate`: best-of-K actions, on a separate
vector env of --eval-episodes envs, one episode each. The env (or the kitchen tasks), width, K and N, and by default
the seed and the number of episodes, come from the checkpoint. Torch is seeded with the seed and the eval envs with
seed + 10000, as in training, so one command prints the same line each time on one device. One line per checkpoint:
a file that cannot be evaluated gets one error line on stderr, the others are still evaluated, and the exit status is 1.
"""

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


SCRIPTS = {path.name: path for path in [*ROOT.glob("fmer_*.py"), *(ROOT / "ablations").glob("fmer_*.py")]}


def import_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing a script has no side effects: it runs nothing but definitions
    return module


def evaluate_checkpoint(path: str, episodes: int | None, seed: int | None, device: torch.device) -> str:
    """One checkpoint's evaluation line, made by the script that saved it, in the order its training run makes things."""
    if not Path(path).is_file():
        sys.exit(f"error: checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        sys.exit(f"error: cannot read checkpoint {path} ({type(e).__name__})")
    needed = {"seed", "eval_episodes", "hidden_dim", "num_candidates", "ode_steps"}  # and the env, below
    saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if not (isinstance(saved, dict) and needed <= set(saved) and {"actor", "critic"} <= set(checkpoint)):
        sys.exit(f"error: {path} is not a checkpoint saved with --save-model")
    if "script" not in checkpoint:
        sys.exit(f"error: {path} does not name the script that saved it (no 'script' key)")
    if checkpoint["script"] not in SCRIPTS:
        sys.exit(f"error: {path} was saved by {checkpoint['script']!r}, which is not a script of this repository")
    script = SCRIPTS[checkpoint["script"]]
    fm = import_script(script)
    family = "multigoal" if hasattr(fm, "evaluate_modes") else "kitchen" if hasattr(fm, "describe_successes") else "gym"
    env_key = {"multigoal": "max_episode_steps", "kitchen": "tasks", "gym": "env_id"}[family]
    if env_key not in saved:
        sys.exit(f"error: {path} has no {env_key} in its args, which {script.name} needs")
    episodes, seed = episodes or saved["eval_episodes"], saved["seed"] if seed is None else seed
    K, N = saved["num_candidates"], saved["ode_steps"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True

    if family == "multigoal":  # the multi-goal env: best-of-K and one-sample episodes from the same states
        envs, where = [fm.make_vector_env(saved["max_episode_steps"], episodes) for _ in range(2)], "the multi-goal env"
    elif family == "kitchen":  # FrankaKitchen: the run's tasks
        envs, where = [fm.make_vector_env(saved["tasks"], episodes)], str(saved["tasks"])
    else:
        envs, where = [fm.make_vector_env(saved["env_id"], episodes)], saved["env_id"]
    action_space, observation_space = envs[0].single_action_space, envs[0].single_observation_space
    for vector_env in envs:
        vector_env.reset(seed=seed + 10_000)
    obs_dim, act_dim = observation_space.shape[0], action_space.shape[0]
    scale, bias = (action_space.high - action_space.low) / 2.0, (action_space.high + action_space.low) / 2.0
    actor = fm.VelocityField(obs_dim, act_dim, saved["hidden_dim"]).to(device)
    critic = fm.TwinQ(obs_dim, act_dim, saved["hidden_dim"]).to(device)
    try:
        actor.load_state_dict(checkpoint["actor"])
        critic.load_state_dict(checkpoint["critic"])
    except RuntimeError as e:
        sys.exit(f"error: {path} does not fit {where}: {str(e).splitlines()[0]}")

    head = f"{path} ({script.name}) on {where}:"
    if family == "multigoal":
        result = fm.evaluate_modes(actor, critic, *envs, scale, bias, K, N, device)
        returns, lengths, modes = result["returns"], result["lengths"], f"; {fm.describe_modes(result)}"
    elif family == "kitchen":
        returns, _, completed = fm.evaluate(actor, critic, envs[0], scale, bias, K, N, device)
        return f"{head} completion rate {fm.describe_successes(saved['tasks'], completed)} over {len(returns)} episodes"
    else:  # the ODE-solver ablation samples with the checkpoint's solver (its parent's files: Euler)
        solver = [saved.get("solver", "euler")] if "solver" in fm.Args.__dataclass_fields__ else []
        returns, lengths = fm.evaluate(actor, critic, envs[0], scale, bias, K, N, device, *solver)
        modes = ""
    summary = f"eval return {returns.mean():.2f} +- {returns.std():.2f} over {len(returns)} episodes"
    return f"{head} {summary} (mean length {lengths.mean():.0f}){modes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="files saved with --save-model (*.fmer_model)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes (default: the checkpoint's)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of torch and of the eval envs (default: the checkpoint's)"
    )
    parser.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=True, help="use CUDA when available")
    args = parser.parse_args()
    if args.eval_episodes is not None and args.eval_episodes < 1:
        sys.exit(f"error: --eval-episodes must be at least 1, got {args.eval_episodes}")
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    failed = False
    for path in args.checkpoints:
        try:
            print(evaluate_checkpoint(path, args.eval_episodes, args.seed, device), flush=True)
        except SystemExit as e:  # a one-line error (ours or the script's): say it, go on with the next checkpoint
            print(e, file=sys.stderr, flush=True)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
