# SAC baseline ("Soft Actor-Critic", Haarnoja et al., 2018) for FMER's benchmark: Stable-Baselines3's SAC, run with the
# FMER paper's protocol and logged as fmer_continuous.py logs. SB3's SAC defaults are the paper's SAC settings (App. C.1):
# 2 hidden layers of 256 ReLU units, batch 256, discount 0.99, target smoothing 0.005, reward scale 1, learnt entropy.
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
import tyro
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from torch.utils.tensorboard import SummaryWriter

SCRIPT = os.path.basename(__file__)
# SB3's names of the losses it records at each update -> our tensorboard tags, and the factor to our meaning: SB3's
# critic_loss is half the sum of the two critics' MSE, FMER's losses/qf_loss the sum, so the two curves overlay.
LOSS_TAGS = {
    "train/critic_loss": ("losses/qf_loss", 2.0),
    "train/actor_loss": ("losses/actor_loss", 1.0),
    "train/ent_coef": ("losses/alpha", 1.0),
    "train/ent_coef_loss": ("losses/alpha_loss", 1.0),
}
SB3_SETTINGS = ("learning_rate", "batch_size", "gamma", "tau", "ent_coef", "target_entropy", "gradient_steps")


@dataclass
class Args:
    exp_name: str = SCRIPT[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available (else the CPU; the start line names the device)"""
    run_name: str | None = None
    """the run's folder under runs/ (default: {env_id}__{exp_name}__{seed}__{unix time})"""
    resume: bool = False
    """continue runs/RUN_NAME from its saved state if it has one, else start the run there (needs --run-name)"""
    checkpoint_frequency: int = 0
    """save the training state to runs/RUN_NAME every this many env steps and on SIGTERM/SIGUSR1/Ctrl-C (0: never)"""
    log_frequency: int = 100
    """write the training losses and SPS to tensorboard every this many env steps"""
    progress_seconds: float = 30.0
    """print a progress line every this many seconds (0: at every --log-frequency step)"""

    # Algorithm specific arguments (every SAC setting is SB3's default: the paper's)
    env_id: str = "Hopper-v5"
    """the id of the environment (any gymnasium env with a Box action space)"""
    total_timesteps: int = 1_000_000
    """total env steps"""
    buffer_size: int = 1_000_000
    """the replay memory size"""
    learning_starts: int = 10_000
    """env steps of uniform random actions before acting and learning start"""
    eval_frequency: int = 10_000
    """evaluate the deterministic policy (the squashed mean action) every this many env steps"""
    eval_episodes: int = 10
    """the number of evaluation episodes, one on each of as many separate envs"""


def make_eval_envs(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    # As fmer_continuous.py's: envs.reset(seed=s) seeds env i with s + i; an ended episode's statistics are in final_info.
    thunks = [lambda: gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))] * num_envs
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def evaluate(model: SAC, envs: gym.vector.SyncVectorEnv) -> tuple[np.ndarray, np.ndarray]:
    """One episode per env with SAC's deterministic action -> (returns, lengths)."""
    obs, _ = envs.reset()
    returns, lengths = np.full(envs.num_envs, np.nan), np.zeros(envs.num_envs)
    while np.isnan(returns).any():
        obs, _, _, _, infos = envs.step(model.predict(obs, deterministic=True)[0])
        if "final_info" in infos and "_episode" in infos["final_info"]:
            episode = infos["final_info"]["episode"]
            for i in np.flatnonzero(infos["final_info"]["_episode"] & np.isnan(returns)):
                returns[i], lengths[i] = episode["r"][i], episode["l"][i]
    return returns, lengths


class Protocol(BaseCallback):
    """The paper's protocol and our logs around SB3's loop. SB3 collects one env step per rollout, then trains on it;
    so at a rollout's start the previous step is complete (stored and trained on), and end_of_step() runs there: the
    logs, the evaluation, the state save and a stop. Training episodes are logged as they end (_on_step)."""

    def __init__(self, args: Args, writer: SummaryWriter, eval_envs, run_dir: str, step: int, last_return: float):
        super().__init__()
        self.args, self.writer, self.eval_envs, self.run_dir = args, writer, eval_envs, run_dir
        self.done_step, self.last_return, self.stop_signal = step, last_return, []
        self.window_step, self.window_time = step, time.time()
        self.last_print = self.window_time - max(args.progress_seconds - 10.0, 0.0)  # the first progress line after 10 s

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:  # SB3's Monitor: the episode ended on this step
                self.last_return = float(info["episode"]["r"])
                self.writer.add_scalar("charts/episodic_return", self.last_return, self.model.num_timesteps)
                self.writer.add_scalar("charts/episodic_length", info["episode"]["l"], self.model.num_timesteps)
        return True

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps > self.done_step:
            self.end_of_step()

    _on_training_end = _on_rollout_start  # the last step

    def end_of_step(self) -> None:
        args, writer, step = self.args, self.writer, self.model.num_timesteps
        self.done_step = step
        if step % args.log_frequency == 0:
            now = time.time()
            sps = (step - self.window_step) / max(now - self.window_time, 1e-9)
            writer.add_scalar("charts/SPS", sps, step)
            self.window_step, self.window_time = step, now
            for name, value in self.model.logger.name_to_value.items():  # the latest update's (none before learning)
                if name in LOSS_TAGS:
                    tag, factor = LOSS_TAGS[name]
                    writer.add_scalar(tag, factor * value, step)
            if now - self.last_print >= args.progress_seconds:
                self.last_print = now
                print(f"step {step}/{args.total_timesteps}  SPS {sps:.1f}  last return {self.last_return:.1f}", flush=True)
        if step % args.eval_frequency == 0 or step >= args.total_timesteps:
            returns, lengths = evaluate(self.model, self.eval_envs)
            writer.add_scalar("eval/episodic_return", returns.mean(), step)
            writer.add_scalar("eval/episodic_length", lengths.mean(), step)
            print(f"step {step}: eval return {returns.mean():.1f} +- {returns.std():.1f}", flush=True)
        if args.checkpoint_frequency and (step % args.checkpoint_frequency == 0 or self.stop_signal):
            self.save_state(step)
        if self.stop_signal:
            print(f"{signal.Signals(self.stop_signal[0]).name}: stopped at step {step}", file=sys.stderr, flush=True)
            sys.exit(128 + self.stop_signal[0])

    def save_state(self, step: int) -> bool:
        """The model (networks, their optimizers, the entropy coefficient and its optimizer, SB3's counters) and the replay
        buffer, in files named by the step; then state.json, written to a temporary file and renamed, names them. So a
        kill mid-write leaves the previous state whole. Weights that are not finite are never saved."""
        if not all(torch.isfinite(p).all() for p in self.model.policy.parameters()):
            print(f"not saving at step {step}: the weights are not finite; the last good state is kept", file=sys.stderr)
            return False
        files = {"model": f"state_{step}.zip", "replay_buffer": f"state_{step}_buffer.pkl"}
        self.model.save(f"{self.run_dir}/{files['model']}", exclude=["_last_obs", "_last_original_obs"])  # see resume
        self.model.save_replay_buffer(f"{self.run_dir}/{files['replay_buffer']}")
        with open(f"{self.run_dir}/state.json.tmp", "w") as f:
            json.dump({"script": SCRIPT, "global_step": step, "last_return": self.last_return, **files}, f)
        os.replace(f"{self.run_dir}/state.json.tmp", f"{self.run_dir}/state.json")
        for name in os.listdir(self.run_dir):  # the previous state's files, and those of a write that was cut
            if name.startswith("state_") and name not in files.values():
                os.remove(f"{self.run_dir}/{name}")
        return True


# ==== Run management: argument and env checks, reading a saved state ====


def grow_buffer(model: SAC, size: int) -> None:
    """A run resumed with a longer --total-timesteps gets a buffer of the new size, the saved rows first and the next
    appended after them, as our scripts' buffers do (SB3 would keep the saved size and wrap around)."""
    old = model.replay_buffer
    if size <= old.buffer_size:
        return
    new = type(old)(size, old.observation_space, old.action_space, old.device, n_envs=old.n_envs)
    rows = old.buffer_size if old.full else old.pos
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        getattr(new, name)[:rows] = getattr(old, name)[:rows]
    new.pos, model.replay_buffer = rows, new


def check_args(args: Args) -> None:
    """Exit with one line on a bad number or flag."""
    minimum = {"learning_starts": 0, "checkpoint_frequency": 0, "progress_seconds": 0}
    for name, value in vars(args).items():
        if type(value) in (int, float) and name != "seed" and not value >= minimum.get(name, 1):
            sys.exit(f"error: --{name.replace('_', '-')} must be at least {minimum.get(name, 1)}, got {value}")
    if args.resume and args.run_name is None:
        sys.exit("error: --resume needs --run-name NAME (the run's folder under runs/)")


def check_env(env_id: str) -> None:
    """Exit with one line unless env_id names a gymnasium env with finite Box actions and Box observations."""
    try:
        env = gym.make(env_id)
    except Exception as e:  # an unknown id, or a module of "module:Env-v0" that does not import
        sys.exit(f"error: cannot make env {env_id!r}: {type(e).__name__}: {e}")
    action_space, observation_space = env.action_space, env.observation_space
    env.close()
    if not isinstance(action_space, gym.spaces.Box) or not np.isfinite([action_space.low, action_space.high]).all():
        sys.exit(f"error: SAC needs a continuous (Box) action space with finite bounds; {env_id} has {action_space}")
    if not isinstance(observation_space, gym.spaces.Box):
        sys.exit(f"error: SB3's MlpPolicy needs a Box observation space; {env_id} has {observation_space}")


def read_state(run_dir: str) -> dict:
    """runs/NAME/state.json; exits with one line on a broken or foreign one."""
    path = f"{run_dir}/state.json"
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read {path} ({type(e).__name__}: {e})")
    if not isinstance(state, dict) or state.get("script") != SCRIPT or not {"model", "replay_buffer"} <= set(state):
        sys.exit(f"error: {path} is not a training state of {SCRIPT}")
    for part in ("model", "replay_buffer"):
        if not os.path.isfile(f"{run_dir}/{state[part]}"):
            sys.exit(f"error: {path} names {state[part]}, which is missing")
    return state


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    check_env(args.env_id)
    args.run_name = args.run_name or f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = f"runs/{args.run_name}"
    saved = os.path.exists(f"{run_dir}/state.json")
    if saved and not args.resume:
        sys.exit(f"error: {run_dir} holds a saved run: add --resume to continue it, or give another --run-name")
    state = read_state(run_dir) if saved else None
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    torch.backends.cudnn.deterministic = args.torch_deterministic

    # SB3 stores observations in the env's dtype (float64 for MuJoCo); its networks read float32, so float32 storage
    # changes nothing and halves the replay buffer.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
    env = gym.wrappers.DtypeObservation(gym.make(args.env_id), np.float32)
    eval_envs = make_eval_envs(args.env_id, args.eval_episodes)
    if state is None:
        buffer_size = min(args.buffer_size, args.total_timesteps)
        model = SAC(
            "MlpPolicy", env, buffer_size=buffer_size, learning_starts=args.learning_starts, seed=args.seed, device=device
        )
        eval_envs.reset(seed=args.seed + 10_000)  # seeds the eval envs' RNGs once; evaluate() continues them
        start_step, last_return = 0, float("nan")
    else:  # the saved networks, optimizers and buffer; a new episode, every generator reseeded from (seed, step)
        # learning_starts as given now: SB3 would keep the saved one
        model = SAC.load(f"{run_dir}/{state['model']}", env=env, device=device, learning_starts=args.learning_starts)
        model.load_replay_buffer(f"{run_dir}/{state['replay_buffer']}")
        grow_buffer(model, min(args.buffer_size, args.total_timesteps))
        start_step, last_return = state["global_step"], state["last_return"]
        reseed = int(np.random.SeedSequence([args.seed, start_step]).generate_state(1)[0])
        model.set_random_seed(reseed)
        eval_envs.reset(seed=reseed + 10_000)

    # A resumed run appends to the same log; TensorBoard drops what the stopped run logged after its save
    # (all of it, for a run stopped before its first save).
    writer = SummaryWriter(run_dir, purge_step=start_step + 1 if state else 0)
    settings = {"sb3_version": stable_baselines3.__version__, **{name: getattr(model, name) for name in SB3_SETTINGS}}
    settings.update(net_arch=model.policy.net_arch, activation_fn=model.policy.activation_fn.__name__)
    table = "\n".join(f"|{key}|{value}|" for key, value in {**vars(args), **settings}.items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}", start_step)

    protocol = Protocol(args, writer, eval_envs, run_dir, start_step, last_return)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's own logs stay in memory: no folder under /tmp

    def on_signal(signum, frame):  # SIGTERM, SIGUSR1 (Slurm's preemption and time-limit warning), Ctrl-C
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        protocol.stop_signal.append(signum)

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, on_signal)
    resumed = f", resumed at step {start_step}" if state else ""
    print(
        f"{run_dir}: {args.total_timesteps} steps on {device}, learning from step {args.learning_starts}{resumed}", flush=True
    )
    start_time = time.time()
    try:
        model.learn(args.total_timesteps - start_step, callback=protocol, log_interval=None, reset_num_timesteps=state is None)
    finally:
        model.env.close()
        eval_envs.close()
        writer.close()
    print(f"done: {model.num_timesteps} steps in {(time.time() - start_time) / 60:.1f} min")
