# FMER ablation, paper App. D.3 / Table 12 (FrankaKitchen): constant beta (--beta) instead of beta tuned to the ESS.
# A diff-style copy of fmer_kitchen.py: `diff fmer_kitchen.py ablations/fmer_kitchen_fixed_beta.py` shows the change.
import contextlib
import io
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import imageio  # --capture-video writes MP4 through imageio-ffmpeg
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

with contextlib.redirect_stderr(io.StringIO()):  # its import prints a notice about the Adroit envs
    import gymnasium_robotics
gym.register_envs(gymnasium_robotics)

SCRIPT = os.path.basename(__file__)


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
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases (its tensorboard log, synced)"""
    wandb_project_name: str = "fmer"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """record the first episode of each evaluation to videos/{run_name}/ (MuJoCo: MUJOCO_GL=egl or osmesa)"""
    compile: bool = False
    """torch.compile the update and act functions (ours, as LeanRL; the eager code is the readable one)"""
    cudagraphs: bool = False
    """replay the update and act functions as CUDA graphs (ours, as LeanRL; CUDA only; add --compile for full speed)"""
    save_model: bool = False
    """save the model to runs/{run_name}/{exp_name}.fmer_model at every evaluation (for benchmark/evaluate.py)"""
    run_name: str | None = None
    """the run's folder under runs/ (default: {env_id}__{exp_name}__{seed}__{unix time})"""
    resume: bool = False
    """continue runs/{run_name}/state.pt if it exists, else start the run there (needs --run-name)"""
    checkpoint_frequency: int = 0
    """save the training state to runs/{run_name}/state.pt every this many env steps and on a stop signal (0: never)"""
    log_frequency: int = 100
    """write the training losses to tensorboard every this many env steps"""
    progress_seconds: float = 30.0
    """print a progress line (step, SPS, last return) every this many seconds"""

    # Algorithm specific arguments
    num_tasks: Literal[1, 2, 4, 7] = 1
    """N: the paper's task set with N subtasks (TASK_SETS below)"""
    tasks: list[str] | None = None
    """an explicit list of FrankaKitchen subtasks instead of --num-tasks, e.g. --tasks microwave kettle"""
    total_timesteps: int = 1_000_000
    """total env steps, summed over the vector envs"""
    num_envs: int = 1
    """the number of parallel training envs (a vector step is num_envs env steps)"""
    buffer_size: int = 1_000_000
    """the replay memory size"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """target critic smoothing coefficient (Polyak)"""
    batch_size: int = 256
    """the batch size of states sampled from the replay memory"""
    learning_starts: int = 10_000
    """env steps of uniform random actions before acting and learning start"""
    updates_per_step: int = 1
    """critic updates per env step (ours: 1, the CleanRL convention)"""
    policy_frequency: int = 2
    """every this many critic updates, run as many actor/alpha/beta updates (ours, CleanRL SAC's delayed update)"""
    actor_lr: float = 3e-4
    """actor learning rate at the start (linearly annealed)"""
    actor_lr_end: float = 3e-5
    """actor learning rate at the end of training (ours)"""
    critic_lr: float = 3e-4
    """critic learning rate (ours)"""
    hidden_dim: int = 256
    """width of the 3 hidden Mish layers of the velocity field and of each critic"""
    num_candidates: int = 8
    """K: candidate actions drawn per state (acting, critic target, policy loss)"""
    ode_steps: int = 10
    """N: Euler steps of the flow ODE (Eq. 10)"""
    ess_target: float | None = None
    """target ESS of the advantage weights (Eq. 14), in [1, K]; default K / 2 (ours, from the paper's 4 of K = 8)"""
    beta_init: float = 0.5
    """initial mirror-descent temperature beta"""
    beta_lr: float = 3e-2
    """Adam learning rate on log(beta) (ours)"""
    beta: float = 0.5
    """the constant beta (Table 12's values are lost: ours, the adaptive init 0.5; benchmark/run.py runs 0.005, 0.05, 0.5)"""
    alpha_init: float = 0.5
    """initial entropy Lagrange multiplier alpha"""
    alpha_lr: float = 3e-3
    """Adam learning rate on log(alpha) (ours)"""
    target_entropy_start: float = 0.0
    """target entropy per action dimension (nats, in [-1, 1]^d) at step 0 (ours)"""
    target_entropy_end: float = -1.0
    """target entropy per action dimension at the last step, annealed linearly (ours)"""
    eval_frequency: int = 10_000
    """evaluate the best-of-K policy every this many env steps"""
    eval_episodes: int = 10
    """the number of evaluation episodes, run on a separate env"""


# The paper's task compositions (App. C.4); each set extends the one before it.
TASK_SETS = {
    1: ["light switch"],
    2: ["light switch", "slide cabinet"],
    4: ["light switch", "slide cabinet", "bottom burner", "microwave"],
    7: ["light switch", "slide cabinet", "bottom burner", "microwave", "kettle", "top burner", "hinge cabinet"],
}
EPISODE_STEPS = 280  # the paper's episode length, also the env's default


class KitchenObservation(gym.Wrapper):
    """FrankaKitchen's dict observation reduced to its 59-D "observation" vector (robot joint positions
    and velocities, object joint positions and velocities), plus info["completed"]: the 0/1 subtasks,
    in the order of `tasks`, that this episode has completed so far.

    The goal parts add nothing: "desired_goal" is the same constant in every episode of a task set,
    and "achieved_goal" repeats object joint positions that "observation" already holds.
    """

    def __init__(self, env: gym.Env, tasks: list[str]):
        super().__init__(env)
        self.tasks = tasks
        self.observation_space = env.observation_space["observation"]

    def reset(self, **kwargs):
        obs, _ = self.env.reset(**kwargs)
        return obs["observation"], {"completed": np.zeros(len(self.tasks))}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = info["episode_task_completions"]  # the env's own list, which its reset clears
        completed = np.array([task in done for task in self.tasks], dtype=np.float64)
        return obs["observation"], reward, terminated, truncated, {"completed": completed}


def make_env(tasks: list[str], render: bool = False):
    def thunk():
        # Reward: the number of subtasks first completed on this step; terminated once all are done.
        # No env checker: it warns that the goal dict is shared between steps, and that dict is dropped.
        env = gym.make(
            "FrankaKitchen-v1",
            tasks_to_complete=tasks,
            max_episode_steps=EPISODE_STEPS,
            disable_env_checker=True,
            render_mode="rgb_array" if render else None,
        )
        env = KitchenObservation(env, tasks)
        return gym.wrappers.RecordEpisodeStatistics(env)

    return thunk


def make_vector_env(tasks: list[str], num_envs: int, render: bool = False) -> gym.vector.SyncVectorEnv:
    # envs.reset(seed=s) seeds env i with s + i. SAME_STEP autoreset: the next observation of an ended episode is the
    # reset one, its true last one is in infos.
    thunks = [make_env(tasks, render) for _ in range(num_envs)]
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


# ==== FMER: the networks, one function per equation, the updates, the evaluation and the replay buffer ====


def mish_with_derivative(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mish, x * tanh(softplus(x)), and its derivative, which the divergence needs (Eq. 15-16). With one exp:
    tanh(log(1 + e^x)) = n / (n + 2), where n = e^x (e^x + 2). Equal to F.mish up to float32 rounding; torch.compile
    fuses it into one kernel."""
    e = torch.exp(x.clamp(max=20.0))  # past 20, n / (n + 2) is 1 in float32
    n = e * (e + 2.0)
    tanh_softplus = n / (n + 2.0)
    return x * tanh_softplus, tanh_softplus + x * 4.0 * e * (e + 1.0) / (n + 2.0) ** 2


def mish(x: torch.Tensor) -> torch.Tensor:
    # Eager: F.mish's one kernel. Compiled: the one-exp form, 6x faster on CPU than the compiler's F.mish.
    return mish_with_derivative(x)[0] if torch.compiler.is_compiling() else F.mish(x)


class VelocityField(nn.Module):
    """v_theta(x, t, s): the flow's velocity in the latent space (Sec. 4.1), an MLP on [s, x, t] with 3 hidden Mish
    layers. Its first layer, W [s, x, t] + b, is kept as two parts, (W_s s + b) + W_xt [x, t]: the state's part is
    computed once per state (embed_obs) and shared by the K candidates and the N Euler steps."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.act_dim = act_dim
        self.obs_layer = nn.Linear(obs_dim, hidden_dim)
        self.xt_layer = nn.Linear(act_dim + 1, hidden_dim, bias=False)
        bound = 1.0 / math.sqrt(obs_dim + act_dim + 1)  # nn.Linear's init for the whole first layer
        for param in (self.obs_layer.weight, self.obs_layer.bias, self.xt_layer.weight):
            nn.init.uniform_(param, -bound, bound)
        self.layers = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim) for _ in range(2)] + [nn.Linear(hidden_dim, act_dim)])

    def embed_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """The state's part of the first layer: obs [..., obs_dim] -> [..., hidden_dim]."""
        return self.obs_layer(obs)

    def forward(self, obs_embedding: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """obs_embedding [..., hidden] (broadcasts), x [..., act_dim], t [..., 1] -> v [..., act_dim]."""
        z = obs_embedding + self.xt_layer(torch.cat([x, t], dim=-1))  # raw t is enough for 10 Euler steps
        for layer in self.layers:
            z = layer(mish(z))
        return z

    def forward_with_jvp(self, obs_embedding: torch.Tensor, x: torch.Tensor, t: torch.Tensor, probe: torch.Tensor):
        """v as forward() computes it, and (dv/dx) e for a probe e [..., act_dim], pushed forward layer by layer beside
        v: the divergence (Eq. 15-16) then needs no double backward, and torch.compile differentiates it (not jvp)."""
        z = obs_embedding + self.xt_layer(torch.cat([x, t], dim=-1))
        dz = F.linear(probe, self.xt_layer.weight[:, : self.act_dim])  # d z / dx applied to e
        for layer in self.layers:
            h, slope = mish_with_derivative(z)
            z, dz = layer(h), F.linear(slope * dz, layer.weight)
        return z, dz


class TwinQ(nn.Module):
    """Both critics Q1, Q2 as one batched module: each weight is [2, in, out]. The first layer's state part is
    computed once per state and shared by the K candidate actions."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, num_q: int = 2):
        super().__init__()

        def uniform(fan_in, *shape):  # nn.Linear's default init, per critic
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(num_q, *shape).uniform_(-bound, bound))

        self.obs_weight = uniform(obs_dim + act_dim, obs_dim, hidden_dim)
        self.action_weight = uniform(obs_dim + act_dim, act_dim, hidden_dim)
        self.input_bias = uniform(obs_dim + act_dim, 1, hidden_dim)
        sizes = [hidden_dim, hidden_dim, hidden_dim, 1]
        self.weights = nn.ParameterList([uniform(i, i, o) for i, o in zip(sizes[:-1], sizes[1:])])
        self.biases = nn.ParameterList([uniform(i, 1, o) for i, o in zip(sizes[:-1], sizes[1:])])

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], action [B, act_dim] or [B, K, act_dim] in [-1, 1] -> Q values [2, B] or [2, B, K]."""
        out_shape = (self.obs_weight.shape[0], *action.shape[:-1])
        per_state = torch.baddbmm(self.input_bias, obs.expand(out_shape[0], -1, -1), self.obs_weight)  # [2, B, H]
        per_action = torch.matmul(action.reshape(-1, action.shape[-1]), self.action_weight)  # [2, B * K, H]
        h = (per_action.unflatten(1, (obs.shape[0], -1)) + per_state.unsqueeze(2)).flatten(1, 2)  # K = 1 for [B, act_dim]
        for w, b in zip(self.weights, self.biases):
            h = torch.baddbmm(b, mish(h), w)  # [2, B * K, in] @ [2, in, out] + [2, 1, out]
        return h.reshape(out_shape)


@torch.no_grad()  # the samples are never differentiated (torch.inference_mode would break torch.compile)
def sample_candidates(velocity: VelocityField, obs: torch.Tensor, num_candidates: int, num_steps: int) -> torch.Tensor:
    """Eq. 10: K latent samples per state by Euler integration of the flow ODE from x_0 ~ N(0, I): obs [B, obs_dim] ->
    latents u [B, K, act_dim]. Actions are tanh(u); keep u itself, since atanh(tanh(u)) is inf once tanh saturates."""
    obs_embedding = velocity.embed_obs(obs).unsqueeze(1)  # [B, 1, hidden], shared by the K candidates
    x = torch.randn(obs.shape[0], num_candidates, velocity.act_dim, device=obs.device)
    t = torch.empty(*x.shape[:2], 1, device=obs.device)
    for k in range(num_steps):
        x = x + velocity(obs_embedding, x, t.fill_(k / num_steps)) / num_steps
    return x


def score_candidates(critic: TwinQ, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Clipped double Q, min(Q1, Q2), of K candidate actions per state: [B, K, act_dim] -> [B, K]."""
    return critic(obs, actions).min(dim=0).values


@torch.no_grad()
def best_of_k_actions(velocity: VelocityField, critic: TwinQ, obs: torch.Tensor, num_candidates: int, num_steps: int):
    """Sec. 4.4: act with the candidate of highest min(Q1, Q2). Returns actions in [-1, 1]."""
    actions = torch.tanh(sample_candidates(velocity, obs, num_candidates, num_steps))
    best = score_candidates(critic, obs, actions).argmax(dim=1)
    return actions[torch.arange(actions.shape[0], device=obs.device), best]


def advantage_weights(q: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13-14: the mirror-descent weights w_i = softmax_i(Q(s, a_i) / beta) over the K candidates of q [B, K], and
    their effective sample size ESS = 1 / sum_i w_i^2, in [1, K]. V(s) cancels in the softmax, so Q serves as A."""
    weights = torch.softmax(q / beta, dim=1)
    ess = 1.0 / weights.pow(2).sum(dim=1)
    return weights, ess


def default_ess_target(num_candidates: int) -> float:
    """The ESS that beta tracks: K / 2 (ours, from the paper's 4 of K = 8). A fixed 4 would force uniform weights at
    K = 4, since ESS <= K."""
    return max(1.0, num_candidates / 2)


def weighted_cfm_loss(v: torch.Tensor, u: torch.Tensor, x0: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 11, the weighted conditional flow-matching loss: sum_i w_i * ||v_theta(x_t, t, s) - (u_i - x0)||^2 over the
    K candidates u_i of each state, averaged over states."""
    per_candidate = (v - (u - x0)).pow(2).sum(dim=-1)  # [B, K]
    return (weights * per_candidate).sum(dim=1).mean()


def hutchinson_divergence(jvp: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Eq. 15-16: div_x v ~= e^T (dv/dx) e, from a Rademacher probe e and the product (dv/dx) e."""
    return (probe * jvp).sum(dim=-1)


def tanh_corrected_divergence(div_x: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Prop. 1 (Eq. 17): the divergence, in action space a = tanh(x), of the induced field (1 - tanh(x)^2) v:
    div_a = div_x v - 2 tanh(x) . v."""
    return div_x - 2.0 * (torch.tanh(x) * v).sum(dim=-1)


def tanh_gaussian_entropy_per_dim() -> float:
    """H(a_0) per dimension for a_0 = tanh(z), z ~ N(0, 1): H(z) + E[log(1 - tanh(z)^2)] (0.6698 nats)."""
    z = torch.linspace(-12.0, 12.0, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    # log(1 - tanh(z)^2) = 2 * (log 2 - |z| - log(1 + exp(-2|z|))), stable for large |z|
    log_jacobian = 2.0 * (math.log(2.0) - z.abs() - torch.log1p(torch.exp(-2.0 * z.abs())))
    return 0.5 * math.log(2 * math.pi * math.e) + torch.trapezoid(density * log_jacobian, z).item()


H_A0_PER_DIM = tanh_gaussian_entropy_per_dim()


def flow_losses(velocity: VelocityField, obs: torch.Tensor, u: torch.Tensor, weights: torch.Tensor) -> tuple:
    """The WCFM loss (Eq. 11) and the absolute action-space entropy estimate H_hat (Eq. 15-17), from one forward pass
    on the OT path x_t = (1 - t) x0 + t u_i through the K candidates u [B, K, act_dim] of each state.
    H_hat = d * H(a_0) + E[div_a]: the entropy of the start action a_0 (the noise x0, as an action) plus the mean
    divergence of the field that moves the actions along the path (the instantaneous change of variables)."""
    t = torch.rand(*u.shape[:-1], 1, device=u.device)
    x0 = torch.randn_like(u)
    x_t = (1.0 - t) * x0 + t * u
    probe = torch.randint(0, 2, u.shape, device=u.device, dtype=u.dtype) * 2.0 - 1.0
    v, jvp = velocity.forward_with_jvp(velocity.embed_obs(obs).unsqueeze(1), x_t, t, probe)
    wcfm = weighted_cfm_loss(v, u, x0, weights)
    div_a = tanh_corrected_divergence(hutchinson_divergence(jvp, probe), x_t, v)
    # Unweighted mean: the candidates are samples of the policy whose entropy this is.
    entropy = u.shape[-1] * H_A0_PER_DIM + div_a.mean()
    return wcfm, entropy


def dual_update(log_param: torch.Tensor, optimizer: torch.optim.Optimizer, measured: torch.Tensor, target) -> torch.Tensor:
    """One step of dual descent on log(param), clamped so that exp() stays finite: it falls while measured > target
    and rises while below. beta: on the mean ESS (too uniform -> sharpen); alpha: on the entropy (above target ->
    a weaker bonus)."""
    loss = log_param * (measured.detach() - target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        log_param.clamp_(-10.0, 10.0)
    return loss.detach()


def linear_schedule(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * min(max(fraction, 0.0), 1.0)


def bellman_target(rewards: torch.Tensor, terminations: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 20, best of K at s': y = r + gamma * (1 - terminated) * max_i Q'(s', a'_i); truncations bootstrap."""
    return rewards + gamma * (1.0 - terminations) * next_q.max(dim=1).values


def update_critic(batch, actor, critic, target_critic, critic_opt, gamma, tau, K, N):
    """Eq. 19-20: regress both critics on the best-of-K target; a'* is chosen and valued by min(Q1', Q2') of the
    target critics (ours), over K candidates of N Euler steps. Then the Polyak step of the target critics."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_actions = torch.tanh(sample_candidates(actor, next_obs, K, N))
        next_q = score_candidates(target_critic, next_obs, next_actions)
        target = bellman_target(rewards, terminations, next_q, gamma)
    q = critic(obs, actions)  # [2, B]
    qf_loss = (q - target).pow(2).mean(dim=1).sum()  # Eq. 19, summed over the twins
    critic_opt.zero_grad()
    qf_loss.backward()
    critic_opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(target_critic.parameters()), list(critic.parameters()), tau)
    return {"losses/qf_loss": qf_loss.detach(), "losses/qf_values": q.detach().mean()}


def update_actor(obs, actor, critic, actor_opt, log_alpha, alpha_opt, log_beta, beta_opt, K, N, ess_target, target_entropy):
    """Eq. 8: minimise L_WCFM + alpha * L_H over K fresh candidates (N Euler steps), then one dual step on alpha (toward
    the target entropy). App. D.3 ablation: beta stays fixed (--beta), with no step toward the target ESS."""
    with torch.no_grad():
        u = sample_candidates(actor, obs, K, N)
        q = score_candidates(critic, obs, torch.tanh(u))
        weights, ess = advantage_weights(q, log_beta.exp())
    wcfm, entropy = flow_losses(actor, obs, u, weights)
    entropy_loss = -entropy  # Eq. 18
    actor_loss = wcfm + log_alpha.exp().detach() * entropy_loss
    actor_opt.zero_grad()
    actor_loss.backward()
    actor_opt.step()
    alpha_loss = dual_update(log_alpha, alpha_opt, entropy, target_entropy)
    return {
        "losses/wcfm_loss": wcfm.detach(),
        "losses/entropy_loss": entropy_loss.detach(),
        "losses/actor_loss": actor_loss.detach(),
        "losses/alpha": log_alpha.detach().exp(),
        "losses/alpha_loss": alpha_loss,
        "losses/beta": log_beta.detach().exp(),
        "charts/ess": ess.mean(),
        "charts/entropy": entropy.detach(),
    }


def finished_episodes(infos: dict) -> list[tuple[int, float, int]]:
    """(env index, return, length) of each episode that ended on this vector step."""
    if "final_info" not in infos or "_episode" not in infos["final_info"]:
        return []
    episode = infos["final_info"]["episode"]
    return [(int(i), float(episode["r"][i]), int(episode["l"][i])) for i in np.flatnonzero(infos["final_info"]["_episode"])]


def evaluate(actor, critic, envs, action_scale, action_bias, num_candidates, num_steps, device, frames=None):
    """One episode per env with the best-of-K rule -> (returns, lengths, completed), completed [episodes, tasks]
    holding the 0/1 subtasks each episode finished; a list `frames` gets env 0's images."""
    obs, _ = envs.reset()
    returns, lengths, completed = [None] * envs.num_envs, [None] * envs.num_envs, [None] * envs.num_envs
    while any(r is None for r in returns):
        if frames is not None and returns[0] is None:
            frames.append(envs.envs[0].render())
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
        actions = best_of_k_actions(actor, critic, obs_t, num_candidates, num_steps).cpu().numpy()
        obs, _, _, _, infos = envs.step(actions * action_scale + action_bias)
        for i, episode_return, episode_length in finished_episodes(infos):
            if returns[i] is None:
                returns[i], lengths[i] = episode_return, episode_length
                completed[i] = infos["final_info"]["completed"][i]
    return np.array(returns), np.array(lengths), np.array(completed)


def describe_successes(tasks: list[str], completed: np.ndarray) -> str:
    """The completion rate and per-subtask successes over the eval episodes, e.g. "45.0% (light switch 7/10, kettle 2/10)"."""
    counts = ", ".join(f"{task} {int(n)}/{len(completed)}" for task, n in zip(tasks, completed.sum(axis=0)))
    return f"{100 * completed.mean():.1f}% ({counts})"


class ReplayBuffer:
    """Transitions as tensors on the training device; actions stored in [-1, 1]. Only filled rows are ever read."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminations")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device
        self.obs = torch.empty(capacity, obs_dim, device=device)  # empty, not zeros: 1M rows take no time to allocate
        self.next_obs = torch.empty(capacity, obs_dim, device=device)
        self.actions = torch.empty(capacity, act_dim, device=device)
        self.rewards = torch.empty(capacity, device=device)
        self.terminations = torch.empty(capacity, device=device)

    def add(self, obs, next_obs, actions, rewards, terminations):
        """One vector step, n rows: on a GPU, one host-to-device copy (pinned, non-blocking) and an index made there."""
        n = len(obs)
        values = (obs, next_obs, actions, rewards, terminations)
        fields = [torch.as_tensor(np.asarray(val, dtype=np.float32)).reshape(n, -1) for val in values]
        rows = torch.cat(fields, dim=1)
        rows = (rows.pin_memory() if self.device.type == "cuda" else rows).to(self.device, non_blocking=True)
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for name, part in zip(self.FIELDS, rows.split([f.shape[1] for f in fields], dim=1)):
            buffer = getattr(self, name)
            buffer[idx] = part.reshape(n, *buffer.shape[1:])
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminations[idx]

    def state_dict(self) -> dict:
        filled = {name: getattr(self, name)[: self.size].to("cpu", copy=True) for name in self.FIELDS}  # filled rows only
        return {"pos": self.pos, "size": self.size, **filled}

    def load_state_dict(self, state: dict) -> None:
        for name in self.FIELDS:
            getattr(self, name)[: state["size"]] = state[name]
        self.size = state["size"]  # a longer --total-timesteps on resume enlarges the buffer: append after its rows
        self.pos = state["pos"] if self.size == self.capacity else self.size


def add_vector_step(rb: ReplayBuffer, obs, actions, next_obs, rewards, terminations, infos) -> None:
    """Store one vector step with its true next observations: with SAME_STEP autoreset, next_obs of an env whose
    episode just ended is already the reset one, and the true last one is infos["final_obs"]. Only termination
    stops the bootstrap; a truncated (time-limit) transition is stored as non-terminal."""
    real_next_obs = next_obs.copy()
    if "final_obs" in infos:
        for i in np.flatnonzero(infos["_final_obs"]):
            real_next_obs[i] = infos["final_obs"][i]
    rb.add(obs, real_next_obs, actions, rewards, terminations)


# ==== Run management, not FMER: saving and resuming, argument and env checks, logging, the fast path ====


def save(path: str, args: Args, learner: dict, **extra) -> None:
    """torch.save of the learner's state_dicts, the args and extra, atomically (a crash mid-write keeps the old file)."""
    saved = {name: part.state_dict() if isinstance(part, nn.Module) else part.detach() for name, part in learner.items()}
    if not all(torch.isfinite(t).all() for t in [*saved["actor"].values(), *saved["critic"].values()]):
        print(f"not saving {path}: the weights are not finite; the last good file is kept", file=sys.stderr)
        return
    torch.save({"script": SCRIPT, "args": vars(args), **saved, **extra}, path + ".tmp")  # the script: for evaluate.py
    os.replace(path + ".tmp", path)


def load_state(path: str, device: torch.device) -> dict:
    """This script's training state, saved on this device type (Adam's state is laid out for it), or exit with one line."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        sys.exit(f"error: cannot read {path} ({type(e).__name__})")
    if not isinstance(state, dict) or state.get("script") != SCRIPT or state.get("device") != device.type:
        sys.exit(f"error: {path} is not a training state of {SCRIPT} saved on {device.type}")
    return state


def restore_state(state: dict, learner: dict, optimizers: list, rb: ReplayBuffer) -> None:
    """Put a saved training state back; the actor's learning rate stays the tensor that the loop fills."""
    with torch.no_grad():
        for name, part in learner.items():
            part.load_state_dict(state[name]) if isinstance(part, nn.Module) else part.copy_(state[name])
    for optimizer, saved in zip(optimizers, state["optimizers"]):
        lr = optimizer.param_groups[0]["lr"]  # one param group each
        optimizer.load_state_dict(saved)
        optimizer.param_groups[0]["lr"] = lr
    rb.load_state_dict(state["replay_buffer"])


def resolve_tasks(num_tasks: int, tasks: list[str] | None) -> list[str]:
    """The run's subtasks: --tasks if given (names checked; "_" may stand for a space), else the paper's set."""
    if tasks is None:
        return TASK_SETS[num_tasks]
    tasks = [task.replace("_", " ") for task in tasks]
    for task in tasks:
        if task not in TASK_SETS[7]:
            sys.exit(f"error: unknown FrankaKitchen task {task!r}; the tasks are: {', '.join(TASK_SETS[7])}")
    if not tasks or len(set(tasks)) != len(tasks):
        sys.exit(f"error: --tasks needs distinct task names, got {tasks}")
    return tasks


def env_label(tasks: list[str]) -> str:
    """The env part of the run name: FrankaKitchen-v1-N{N} for a paper task set (in any order), else the
    task names, so that benchmark/summarize.py never groups a custom set with the paper's."""
    for n, paper_tasks in TASK_SETS.items():
        if set(tasks) == set(paper_tasks):
            return f"FrankaKitchen-v1-N{n}"
    return "FrankaKitchen-v1-" + "+".join(task.replace(" ", "_") for task in tasks)


def check_args(args: Args, device: torch.device) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Exit with one line on flags that cannot work together, or a kitchen env that cannot start; returns the env's
    action and observation spaces (known Boxes: the parent's space checks go)."""
    for name, n in vars(args).items():  # the counts, sizes and frequencies
        if type(n) is int and name not in ("seed", "learning_starts", "checkpoint_frequency") and n < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be at least 1, got {n}")
    if not 1.0 <= args.ess_target <= args.num_candidates:
        sys.exit(f"error: --ess-target must lie in [1, --num-candidates={args.num_candidates}]")
    if not (args.alpha_init > 0.0 and args.beta_init > 0.0):
        sys.exit(f"error: --alpha-init and --beta-init must be positive, got {args.alpha_init} and {args.beta_init}")
    if not args.beta > 0.0:
        sys.exit(f"error: --beta must be positive, got {args.beta}")
    if args.cudagraphs and device.type != "cuda":
        sys.exit("error: --cudagraphs needs a CUDA device (try --compile alone)")
    if args.resume and args.run_name is None:
        sys.exit("error: --resume needs --run-name NAME: the run's folder under runs/")
    warnings.filterwarnings("ignore", module="glfw")  # its complaints before a failed render
    try:  # with --capture-video, render once now: a missing OpenGL back end fails here, not at the first evaluation
        env = make_env(args.tasks, args.capture_video)()
        if args.capture_video:
            env.reset()
            env.render()
    except Exception as e:
        hint = " (--capture-video: set MUJOCO_GL=egl on a GPU, osmesa on a CPU)" if args.capture_video else ""
        if isinstance(e, AssertionError):  # gymnasium-robotics 1.4.2 asserts in get_joint_qpos with mujoco >= 3.12
            hint = f" with mujoco {mujoco.__version__} (gymnasium-robotics 1.4.2 needs mujoco==3.11.0: requirements.txt)"
        sys.exit(f"error: cannot make env FrankaKitchen-v1{hint}: {type(e).__name__}: {e}")
    act_space, obs_space = env.action_space, env.observation_space
    env.close()
    return act_space, obs_space


def write_metrics(writer: SummaryWriter, metrics: dict, step: int) -> None:
    """The latest losses to tensorboard, in one host sync; exit with one line if one is not finite."""
    values = torch.stack(list(metrics.values())).tolist()
    for name, value in zip(metrics, values):
        if not math.isfinite(value):
            sys.exit(f"error: {name.split('/')[1]} is {value} at step {step}; stopping")
        writer.add_scalar(name, value, step)


class CudaGraphFunction:
    """fn(*tensors) replayed as one CUDA graph (ours, LeanRL's): WARMUP_CALLS eager calls on a side stream, one that
    captures, then replays on inputs copied into the captured ones (outputs are overwritten by the next; same shapes)."""

    WARMUP_CALLS = 3

    def __init__(self, fn):
        self.fn, self.warmup, self.graph = fn, self.WARMUP_CALLS, None

    def __call__(self, *inputs):
        if self.warmup > 0:
            self.warmup -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                outputs = self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(stream)
            return outputs
        if self.graph is None:
            self.inputs = [x.clone() for x in inputs]
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.fn(*self.inputs)
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.outputs


if __name__ == "__main__":
    args = tyro.cli(Args)
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches a log file (Slurm's) as it is printed
    if args.ess_target is None:
        args.ess_target = default_ess_target(args.num_candidates)
    args.tasks = resolve_tasks(args.num_tasks, args.tasks)  # saved as the explicit list
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    action_space, observation_space = check_args(args, device)
    args.run_name = args.run_name or f"{env_label(args.tasks)}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = f"runs/{args.run_name}"
    model_path, state_path = f"{run_dir}/{args.exp_name}.fmer_model", f"{run_dir}/state.pt"
    state = load_state(state_path, device) if args.resume and os.path.exists(state_path) else None
    start_step = state["counters"]["global_step"] if state else 0
    if args.track:  # W&B mirrors the tensorboard log; a resumed run continues its W&B run
        import wandb

        run = {"name": args.run_name, "id": args.run_name, "resume": "allow", "config": vars(args), "save_code": True}
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, **run)
    writer = SummaryWriter(run_dir, purge_step=start_step + 1 if state else 0)  # drops what was logged after the save
    table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}", start_step)

    # A resumed run starts new episodes with every generator seeded from (seed, step): one state resumes as one run.
    seed = args.seed if state is None else int(np.random.SeedSequence([args.seed, start_step]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    obs_dim, act_dim, num_tasks = observation_space.shape[0], action_space.shape[0], len(args.tasks)
    action_scale, action_bias = (action_space.high - action_space.low) / 2.0, (action_space.high + action_space.low) / 2.0
    eval_envs = make_vector_env(args.tasks, args.eval_episodes, args.capture_video)
    eval_envs.reset(seed=seed + 10_000)  # seeds the eval envs' RNGs once; evaluate() continues them
    actor = VelocityField(obs_dim, act_dim, args.hidden_dim).to(device)
    critic = TwinQ(obs_dim, act_dim, args.hidden_dim).to(device)
    target_critic = TwinQ(obs_dim, act_dim, args.hidden_dim).to(device)
    target_critic.load_state_dict(critic.state_dict())
    log_alpha = torch.tensor(math.log(args.alpha_init), device=device, requires_grad=True)
    log_beta = torch.tensor(math.log(args.beta), device=device, requires_grad=True)  # --beta-init and --beta-lr unused
    envs = make_vector_env(args.tasks, args.num_envs)
    # lr and target entropy: device tensors filled in place, which compiled or captured updates read (CUDA Adam: capturable)
    capturable = device.type == "cuda"
    warnings.filterwarnings("ignore", message=".*capturable=True can impair performance")
    actor_lr = torch.tensor(args.actor_lr, device=device)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=actor_lr, capturable=capturable)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, capturable=capturable)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr, capturable=capturable)
    beta_optimizer = torch.optim.Adam([log_beta], lr=args.beta_lr, capturable=capturable)
    target_entropy = torch.tensor(act_dim * args.target_entropy_start, device=device)
    schedules = {"charts/target_entropy": target_entropy, "charts/learning_rate": actor_lr}
    K, N = args.num_candidates, args.ode_steps

    def critic_step(*batch):
        return update_critic(batch, actor, critic, target_critic, critic_optimizer, args.gamma, args.tau, K, N)

    def actor_step(obs, target_entropy):
        duals = (log_alpha, alpha_optimizer, log_beta, beta_optimizer)
        return update_actor(obs, actor, critic, actor_optimizer, *duals, K, N, args.ess_target, target_entropy)

    def act(obs):
        return best_of_k_actions(actor, critic, obs, K, N)

    if args.compile:  # the fast path (ours, as LeanRL)
        critic_step, actor_step, act = torch.compile(critic_step), torch.compile(actor_step), torch.compile(act)
    if args.cudagraphs:
        critic_step, actor_step, act = CudaGraphFunction(critic_step), CudaGraphFunction(actor_step), CudaGraphFunction(act)

    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    learner = {"actor": actor, "critic": critic, "target_critic": target_critic, "log_alpha": log_alpha, "log_beta": log_beta}
    optimizers = [actor_optimizer, critic_optimizer, alpha_optimizer, beta_optimizer]
    global_step, num_updates, last_return, metrics = 0, 0, float("nan"), {}
    if state is not None:  # continue where the saved run stopped
        restore_state(state, learner, optimizers, rb)
        global_step, num_updates, last_return = (state["counters"][k] for k in ("global_step", "num_updates", "last_return"))

    resumed = f", resumed at step {start_step}" if state else ""
    print(f"{run_dir}: {args.total_timesteps} steps on {device}, learning from step {args.learning_starts}{resumed}")
    stop = []  # SIGTERM, SIGUSR1 (Slurm's preemption and time-limit warning), Ctrl-C: stop at the end of the step
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):  # then a second Ctrl-C stops at once
        signal.signal(s, lambda s, _: stop.append(s) or signal.signal(signal.SIGINT, signal.default_int_handler))
    start_time = window_time = last_print = time.time()
    # SPS skips the windows of the fast path's first calls: compiling at the first update, graph capture after WARMUP_CALLS.
    window_step, first_update = global_step, max(global_step, args.learning_starts)
    burn_in_end = first_update + (CudaGraphFunction.WARMUP_CALLS + 1) * args.policy_frequency * args.num_envs

    # A step is one env transition; a vector step (num_envs of them) is followed by num_envs * updates_per_step updates.
    # `global_step % frequency < num_envs`: this vector step passed a multiple of frequency.
    try:  # the writer is closed however the run ends, so that the log keeps every step
        while global_step < args.total_timesteps:
            if global_step < args.learning_starts:
                actions = rng.uniform(-1.0, 1.0, size=(args.num_envs, act_dim)).astype(np.float32)
            else:
                actions = act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
            next_obs, rewards, terminations, truncations, infos = envs.step(actions * action_scale + action_bias)
            global_step += args.num_envs

            for i, last_return, episode_length in finished_episodes(infos):
                tasks_completed = infos["final_info"]["completed"][i].sum()
                writer.add_scalar("charts/episodic_return", last_return, global_step)
                writer.add_scalar("charts/episodic_length", episode_length, global_step)
                writer.add_scalar("charts/tasks_completed", tasks_completed, global_step)
                writer.add_scalar("charts/completion_rate", tasks_completed / num_tasks, global_step)
            add_vector_step(rb, obs, actions, next_obs, rewards, terminations, infos)
            obs = next_obs

            if global_step >= args.learning_starts:
                fraction = global_step / args.total_timesteps
                actor_lr.fill_(linear_schedule(args.actor_lr, args.actor_lr_end, fraction))
                target_entropy.fill_(act_dim * linear_schedule(args.target_entropy_start, args.target_entropy_end, fraction))
                for _ in range(args.num_envs * args.updates_per_step):
                    metrics.update(critic_step(*rb.sample(args.batch_size)))
                    num_updates += 1
                    if num_updates % args.policy_frequency == 0:
                        for _ in range(args.policy_frequency):
                            metrics.update(actor_step(rb.sample(args.batch_size)[0], target_entropy))

            if global_step % args.log_frequency < args.num_envs:
                now = time.time()
                sps = (global_step - window_step) / max(now - window_time, 1e-9)
                if not (global_step >= first_update and window_step < burn_in_end):  # else it would understate SPS
                    writer.add_scalar("charts/SPS", sps, global_step)
                window_step, window_time = global_step, now
                if metrics:
                    write_metrics(writer, {**metrics, **schedules}, global_step)
                if now - last_print >= args.progress_seconds:
                    last_print = now
                    print(f"step {global_step}/{args.total_timesteps}  SPS {sps:.1f}  last return {last_return:.1f}")

            if global_step % args.eval_frequency < args.num_envs or global_step >= args.total_timesteps:
                frames = [] if args.capture_video else None
                returns, lengths, completed = evaluate(
                    actor, critic, eval_envs, action_scale, action_bias, K, N, device, frames
                )
                if frames:  # --capture-video: env 0's episode
                    os.makedirs(f"videos/{args.run_name}", exist_ok=True)
                    fps = eval_envs.metadata["render_fps"]
                    imageio.mimwrite(f"videos/{args.run_name}/eval_step{global_step:08d}.mp4", frames, fps=fps)
                writer.add_scalar("eval/episodic_return", returns.mean(), global_step)
                writer.add_scalar("eval/episodic_length", lengths.mean(), global_step)
                writer.add_scalar("eval/tasks_completed", completed.sum(axis=1).mean(), global_step)
                writer.add_scalar("eval/completion_rate", completed.mean(), global_step)
                for task, successes in zip(args.tasks, completed.sum(axis=0)):
                    writer.add_scalar(f"eval/successes/{task.replace(' ', '_')}", successes, global_step)
                print(f"step {global_step}: eval completion rate {describe_successes(args.tasks, completed)}")
                if args.save_model:
                    save(model_path, args, learner)

            done = stop or global_step >= args.total_timesteps
            if args.checkpoint_frequency and (done or global_step % args.checkpoint_frequency < args.num_envs):
                counters = {"global_step": global_step, "num_updates": num_updates, "last_return": last_return}
                extra = {"optimizers": [o.state_dict() for o in optimizers], "replay_buffer": rb.state_dict()}
                save(state_path, args, learner, **extra, counters=counters, device=device.type)
            if stop:
                print(f"{signal.Signals(stop[0]).name}: stopped at step {global_step}", file=sys.stderr)
                sys.exit(128 + stop[0])
    finally:
        writer.close()
    print(f"done: {global_step} steps in {(time.time() - start_time) / 60:.1f} min")
