"""How fast fmer_continuous.py runs: update time, updates/s, SPS, the per-part split and the FLOP floor.

    python benchmark/speed.py --env-id Hopper-v5                      # CPU: eager and compile
    python benchmark/speed.py --env-id Humanoid-v5 --learning-starts 5000 --burn-in 1000 --sps-steps 5000
                                                                      # CUDA: eager, compile, compile+cudagraphs

Modes: eager (the readable default), compile (--compile), cudagraphs (--cudagraphs alone) and
compile+cudagraphs (both flags); the cudagraphs modes need CUDA. Per mode it measures, at the
script's default network and batch sizes:

  update      one critic update plus one actor/alpha/beta update, which is what one env step costs
              at the defaults (policy_frequency 2 runs 2 actor updates every 2 critic updates);
              median of --iters after --warmup calls that absorb compilation and graph capture
  parts       sampler (K x N Euler steps for B states, done twice per update), scoring (twin critics
              on the B*K candidates, twice), critic (the regression step on B pairs), wcfm (flow
              forward + WCFM loss + backward + Adam) and divergence (what the forward-mode
              divergence and the tanh correction add to wcfm)
  x floor     time / FLOP floor. The floor is the matmul FLOPs of the computation (counted by
              torch.utils.flop_counter, backward included) divided by the throughput this device
              reaches on the dominant matmul, [B*K, hidden] @ [hidden, hidden]
  SPS         env steps per second of a real `fmer_continuous.py` run in that mode, read from its
              tensorboard log over --sps-steps steps that follow --burn-in steps of learning, so
              compilation and capture are left out

It prints a markdown table at the end. With --output it writes that table, and with --json-output the raw
numbers as JSON, after every measurement (each mode's update time, then its SPS), so that a run stopped midway
keeps what it had measured: a row without "sps" is a mode whose SPS run had not finished.
"""

import ctypes
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import fmer_continuous as fm  # noqa: E402

MODES = {
    "eager": [],
    "compile": ["--compile"],
    "cudagraphs": ["--cudagraphs"],
    "compile+cudagraphs": ["--compile", "--cudagraphs"],
}


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """env whose observation and action sizes set the network shapes, and which the SPS run trains on"""
    modes: tuple[str, ...] | None = None
    """modes: eager, compile, cudagraphs, compile+cudagraphs; default: eager, compile (+ compile+cudagraphs on CUDA)"""
    cuda: bool = True
    """measure on CUDA when it is available"""
    iters: int = 20
    """timed repeats of the update and of each part"""
    warmup: int = 5
    """untimed calls first (compilation happens in the first, graph capture after 3)"""
    parts: bool = True
    """also time the parts (one more compilation per part in the compiled modes)"""
    sps_steps: int = 150
    """env steps over which SPS is measured (0 skips the SPS runs)"""
    burn_in: int = 50
    """env steps of learning before the SPS window"""
    learning_starts: int = 300
    """random-action steps of the SPS run before learning starts"""
    hidden_dim: int | None = None
    """network width (default: the script's, 256); smaller only to check this tool quickly"""
    batch_size: int | None = None
    """batch size (default: the script's, 256); smaller only to check this tool quickly"""
    output: str | None = None
    """also write the markdown table to this file"""
    json_output: str | None = None
    """also write the raw numbers (seconds, FLOPs, SPS) to this JSON file"""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = (
        next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "CPU")
        if os.path.exists("/proc/cpuinfo")
        else "CPU"
    )
    return f"{model}, {torch.get_num_threads()} threads"


def timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of fn()."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def publish(lines: list[str], output: str | None) -> None:
    """Print the markdown table, and write it to output when given."""
    table = "\n".join(lines)
    print(table)
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(table + "\n")


def write_atomically(path: str, text: str) -> None:
    """A reader (or a kill) meets the old file or the new one, never half of one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def die_with_parent() -> None:
    """In the SPS run's child, before its exec: Linux sends it SIGKILL when this process dies (no threads here)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass  # not Linux


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_throughput(rows: int, hidden: int, device: torch.device) -> float:
    """FLOP/s of the dominant matmul shape on this device."""
    a, w = torch.randn(rows, hidden, device=device), torch.randn(hidden, hidden, device=device)
    return 2 * rows * hidden * hidden / timed(lambda: a @ w, 200, 20, device)


class Setup:
    """Networks, optimizers and a replayed batch at the defaults of fmer_continuous.py."""

    def __init__(self, obs_dim: int, act_dim: int, device: torch.device, hidden_dim=None, batch_size=None):
        args = fm.Args(hidden_dim=hidden_dim or fm.Args.hidden_dim, batch_size=batch_size or fm.Args.batch_size)
        args.ess_target = fm.default_ess_target(args.num_candidates)  # K / 2
        self.B, self.K, self.N, self.H = args.batch_size, args.num_candidates, args.ode_steps, args.hidden_dim
        torch.manual_seed(0)
        self.actor = fm.VelocityField(obs_dim, act_dim, self.H).to(device)
        self.critic = fm.TwinQ(obs_dim, act_dim, self.H).to(device)
        self.target_critic = fm.TwinQ(obs_dim, act_dim, self.H).to(device)
        self.target_critic.load_state_dict(self.critic.state_dict())
        capturable = device.type == "cuda"  # as in the script
        adam = lambda params, lr: torch.optim.Adam(params, lr=lr, capturable=capturable)  # noqa: E731
        self.actor_opt = adam(self.actor.parameters(), torch.tensor(args.actor_lr, device=device))
        self.critic_opt = adam(self.critic.parameters(), args.critic_lr)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.log_beta = torch.zeros((), device=device, requires_grad=True)
        self.alpha_opt, self.beta_opt = adam([self.log_alpha], args.alpha_lr), adam([self.log_beta], args.beta_lr)
        self.target_entropy = torch.tensor(-float(act_dim), device=device)
        B = self.B
        self.batch = (
            torch.randn(B, obs_dim, device=device),
            torch.rand(B, act_dim, device=device) * 2 - 1,
            torch.randn(B, device=device),
            torch.randn(B, obs_dim, device=device),
            torch.zeros(B, device=device),
        )
        self.args = args

    def critic_step(self, *batch):
        a = self.args
        return fm.update_critic(
            batch, self.actor, self.critic, self.target_critic, self.critic_opt, a.gamma, a.tau, self.K, self.N
        )

    def actor_step(self, obs, target_entropy):
        return fm.update_actor(
            obs,
            self.actor,
            self.critic,
            self.actor_opt,
            self.log_alpha,
            self.alpha_opt,
            self.log_beta,
            self.beta_opt,
            self.K,
            self.N,
            self.args.ess_target,
            target_entropy,
        )

    def parts(self) -> dict:
        """The parts of an update as functions of no argument."""
        actor, critic, (obs, actions, rewards, _, _) = self.actor, self.critic, self.batch
        B, K, N = self.B, self.K, self.N
        u = fm.sample_candidates(actor, obs, K, N).clone()
        weights = torch.softmax(torch.randn(B, K, device=obs.device), dim=1)

        def sampler():
            return fm.sample_candidates(actor, obs, K, N)

        @torch.no_grad()
        def scoring():
            return fm.score_candidates(critic, obs, torch.tanh(u))

        def critic_regression():
            loss = (critic(obs, actions) - rewards).pow(2).mean(dim=1).sum()
            self.critic_opt.zero_grad()
            loss.backward()
            self.critic_opt.step()

        def wcfm():
            t = torch.rand(B, K, 1, device=obs.device)
            x0 = torch.randn_like(u)
            v = actor(actor.embed_obs(obs).unsqueeze(1), (1.0 - t) * x0 + t * u, t)
            loss = fm.weighted_cfm_loss(v, u, x0, weights)
            self.actor_opt.zero_grad()
            loss.backward()
            self.actor_opt.step()

        def wcfm_and_divergence():
            loss, entropy = fm.flow_losses(actor, obs, u, weights)
            self.actor_opt.zero_grad()
            (loss - 0.1 * entropy).backward()
            self.actor_opt.step()

        return {
            "sampler": sampler,
            "scoring": scoring,
            "critic": critic_regression,
            "wcfm": wcfm,
            "wcfm+divergence": wcfm_and_divergence,
        }


def measure_sps(args: Args, mode: str) -> float:
    """SPS of a real training run of the script in this mode, after the burn-in."""
    total = args.learning_starts + args.burn_in + args.sps_steps
    log_every = max(1, min(args.burn_in, args.sps_steps) // 5)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "fmer_continuous.py"),
            "--env-id",
            args.env_id,
            "--total-timesteps",
            str(total),
            "--buffer-size",
            str(total),
            "--learning-starts",
            str(args.learning_starts),
            "--log-frequency",
            str(log_every),
            "--eval-frequency",
            str(total),
            "--eval-episodes",
            "1",
            "--progress-seconds",
            "1e9",
            "--exp-name",
            "speed",
            *MODES[mode],
        ]
        for flag, value in (("--hidden-dim", args.hidden_dim), ("--batch-size", args.batch_size)):
            if value is not None:
                cmd += [flag, str(value)]
        if not args.cuda:
            cmd.append("--no-cuda")
        run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, preexec_fn=die_with_parent)
        if run.returncode != 0:
            sys.exit(f"error: the SPS run in mode {mode} failed:\n{run.stderr[-2000:]}")
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (run_dir,) = Path(tmp, "runs").iterdir()
        events = EventAccumulator(str(run_dir)).Reload().Scalars("charts/SPS")
    window = [e for e in events if e.step >= args.learning_starts + args.burn_in]
    return (window[-1].step - window[0].step) / (window[-1].wall_time - window[0].wall_time)


def main(args: Args):
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    modes = args.modes or (["eager", "compile"] + (["compile+cudagraphs"] if device.type == "cuda" else []))
    for mode in modes:
        if mode not in MODES:
            sys.exit(f"error: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if "cudagraphs" in mode and device.type != "cuda":
            sys.exit(f"error: mode {mode} needs CUDA")
    env = gym.make(args.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()

    setup = Setup(obs_dim, act_dim, device, args.hidden_dim, args.batch_size)
    B, K, N, H = setup.B, setup.K, setup.N, setup.H
    throughput = matmul_throughput(B * K, H, device)
    update_flops = count_flops(
        lambda: (setup.critic_step(*setup.batch), setup.actor_step(setup.batch[0], setup.target_entropy))
    )
    part_flops = {name: count_flops(fn) for name, fn in setup.parts().items()}
    part_flops["divergence"] = part_flops["wcfm+divergence"] - part_flops["wcfm"]
    floor = update_flops / throughput

    names = ["sampler", "scoring", "critic", "wcfm", "divergence"]
    sps_window = [args.learning_starts + args.burn_in, args.learning_starts + args.burn_in + args.sps_steps]
    rows = []

    def part_cell(row, name):
        if "parts" not in row:
            return "not run"
        sec = row["parts"][name]
        return f"{sec * 1e3:.1f} ({sec / (part_flops[name] / throughput):.1f}x)"

    def table() -> str:
        lines = [
            f"FMER update speed on {args.env_id} (obs {obs_dim}, act {act_dim}); B={B}, K={K}, N={N}, hidden={H}",
            f"device: {device_name(device)}; torch {torch.__version__}; {datetime.date.today().isoformat()}",
            f"one update = {update_flops / 1e9:.2f} GFLOP of matmuls; [{B * K}x{H}]@[{H}x{H}] runs at "
            f"{throughput / 1e9:.0f} GFLOP/s here, so the FLOP floor of an update is {floor * 1e3:.1f} ms",
            f"command: python benchmark/speed.py {' '.join(sys.argv[1:])}".rstrip(),
            "",
            "| mode | update (ms) | updates/s | x FLOP floor | SPS | " + " | ".join(f"{n} ms (x floor)" for n in names) + " |",
            "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
        ]
        for row in rows:
            sps = "running" if "sps" not in row else ("not run" if row["sps"] is None else f"{row['sps']:.1f}")
            lines.append(
                f"| {row['mode']} | {row['update'] * 1e3:.1f} | {1 / row['update']:.2f} | "
                f"{row['floor_ratio']:.2f} | {sps} | " + " | ".join(part_cell(row, n) for n in names) + " |"
            )
        lines.append("")
        lines.append(
            "sampler and scoring run twice per update; SPS is over a real training run (env steps, acting, "
            f"updates), steps {sps_window[0]}-{sps_window[1]}."
        )
        return "\n".join(lines)

    def save():  # after every measurement: a run stopped midway keeps what it had measured
        if args.output:
            write_atomically(args.output, table() + "\n")
        if args.json_output:
            raw = {
                "env_id": args.env_id,
                "obs_dim": obs_dim,
                "act_dim": act_dim,
                "B": B,
                "K": K,
                "N": N,
                "hidden": H,
                "device": device_name(device),
                "torch": torch.__version__,
                "update_flops": update_flops,
                "part_flops": part_flops,
                "matmul_flops_per_s": throughput,
                "floor_s": floor,
                "sps_window_steps": sps_window if args.sps_steps > 0 else None,
                "rows": rows,
            }
            write_atomically(args.json_output, json.dumps(raw, indent=1) + "\n")

    for mode in modes:
        print(f"measuring {mode} ...", file=sys.stderr, flush=True)

        def wrap(fn):  # as the script's main block runs fn with --compile and --cudagraphs
            fn = torch.compile(fn) if "compile" in mode else fn
            return fm.CudaGraphFunction(fn) if "cudagraphs" in mode else fn

        critic_step, actor_step = wrap(setup.critic_step), wrap(setup.actor_step)

        def update():
            critic_step(*setup.batch)
            actor_step(setup.batch[0], setup.target_entropy)

        seconds = timed(update, args.iters, args.warmup, device)
        row = {"mode": mode, "update": seconds, "floor_ratio": seconds / floor}
        if args.parts:
            parts = {name: timed(wrap(fn), args.iters, args.warmup, device) for name, fn in setup.parts().items()}
            parts["divergence"] = parts.pop("wcfm+divergence") - parts["wcfm"]
            row["parts"] = parts
        if args.sps_steps == 0:
            row["sps"] = None
        rows.append(row)
        save()
        if args.sps_steps > 0:
            print(f"measuring the SPS of a real run in mode {mode} ...", file=sys.stderr, flush=True)
            row["sps"] = measure_sps(args, mode)
            save()
    print(table())


if __name__ == "__main__":
    main(tyro.cli(Args))
