"""Summarize FMER runs as the paper reports them: a markdown table beside the paper's numbers, and learning curves.

    python benchmark/summarize.py                                    # runs/ -> benchmark/results/summary.md + curves
    python benchmark/summarize.py --runs-dir runs --out /tmp/summary.md --plot-dir /tmp/curves

It reads the tensorboard event files of every run folder `{env}__{exp_name}__{seed}__{time}` under
--runs-dir, or `{env}__{exp_name}__{seed}` (a run named with --run-name, as in a Slurm array: its time is
that of its first event file). The metric is the paper's (Sec. 5.1, following its ref. [32]): per run, the maximum of
the evaluation metric over the last 10% of training (eval points at step >= 0.9 x the run's
budget); then the mean and the sample standard deviation (ddof=1) of those maxima over seeds.
The evaluation metric is `eval/episodic_return`, or `eval/completion_rate` in % for FrankaKitchen.

- Resumed runs: a run that was stopped and resumed (--resume) has one event file per start, and the
  stopped start may have logged points past its last saved state. The resumed start writes a
  SessionLog START at its first new step s, and, as in TensorBoard, the values of earlier files at
  steps >= s are dropped (tensorboard's EventAccumulator does this), so each eval point counts once.
  Should a step still appear twice (a writer without that START), the last value logged is kept.
- Budget: the run's `total_timesteps`, read from its `hyperparameters` text summary; a run without
  one (another tool's) gets its last eval step. A run whose last eval is short of its budget is
  unfinished (still running, or it crashed): it is left out, and the notes say so.
- Groups: (exp_name, env, budget), so runs of different lengths are never averaged together.
  Several runs of the same seed in a group: the newest (largest time in the name) is kept.
- Sample std: the paper's table is, e.g. Kitchen N=1: 80.00 (44.72) = four seeds at 100%, one at
  0%, whose ddof=1 std is 44.72 (ddof=0 would give 40.00).
- Curves: one PNG per env, every group of that env on it (so an ablation overlays its parent), mean
  +- std over seeds. Seeds evaluated at different steps are linearly interpolated onto the union
  of their eval steps, within the range that every seed covers.
"""

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PAPER_BUDGET = 1_000_000
PAPER_SEEDS = 5
# The paper's mean (std) over 5 seeds at 1M steps, by (exp_name, env). Table 2 (FMER), Table 10
# (clipping instead of tanh), Table 11 (exact divergence), Table 15 (ODE solvers, 10 steps).
PAPER = {
    ("fmer_continuous", "Hopper-v5"): (2913.45, 642.67),
    ("fmer_continuous", "HalfCheetah-v5"): (12332.38, 903.67),
    ("fmer_continuous", "Walker2d-v5"): (5282.89, 437.57),
    ("fmer_continuous", "Humanoid-v5"): (5286.12, 65.35),
    ("fmer_kitchen", "FrankaKitchen-v1-N1"): (80.00, 44.72),
    ("fmer_kitchen", "FrankaKitchen-v1-N2"): (48.00, 4.47),
    ("fmer_kitchen", "FrankaKitchen-v1-N4"): (46.50, 3.79),
    ("fmer_kitchen", "FrankaKitchen-v1-N7"): (40.29, 21.03),
    ("fmer_clip", "Hopper-v5"): (2704.55, 627.12),
    ("fmer_clip", "HalfCheetah-v5"): (7701.50, 598.25),
    ("fmer_clip", "Walker2d-v5"): (4733.82, 696.37),
    ("fmer_clip", "Humanoid-v5"): (4378.76, 2021.24),
    ("fmer_exact_divergence", "Walker2d-v5"): (5316.47, 254.97),
    ("fmer_ode_solver_midpoint", "Walker2d-v5"): (5519.10, 395.64),
    ("fmer_ode_solver_rk4", "Walker2d-v5"): (5486.24, 184.02),
}


@dataclass
class Args:
    runs_dir: str = "runs"
    """the folder of run folders (tensorboard logs) to read"""
    out: str = "benchmark/results/summary.md"
    """the markdown table to write"""
    plot_dir: str = "benchmark/results"
    """where the learning curves go, curves-{env}.png"""
    last_fraction: float = 0.1
    """the final fraction of training over which each run's best eval counts (the paper's 10%)"""
    plots: bool = True
    """draw the learning curves"""


@dataclass
class RunLog:
    path: Path
    env: str
    exp_name: str
    seed: int
    time: int
    budget: int
    """total_timesteps of the run (or its last eval step when the hyperparameters are missing)"""
    steps: np.ndarray
    values: np.ndarray
    """the eval metric at each eval step (completion in % for Kitchen)"""


@dataclass
class Group:
    exp_name: str
    env: str
    budget: int
    runs: list[RunLog]
    """one per seed, by seed"""
    scores: np.ndarray
    """per seed: max of the eval metric over the last part of training"""


def metric(env: str) -> tuple[str, float, str]:
    """(tensorboard tag, scale, name in the table) of the paper's eval metric on this env."""
    if env.startswith("FrankaKitchen"):
        return "eval/completion_rate", 100.0, "completion %"
    return "eval/episodic_return", 1.0, "return"


def parse_run_name(name: str) -> tuple[str, str, int, int | None] | None:
    """`{env}__{exp_name}__{seed}__{time}` -> (env, exp_name, seed, time); `{env}__{exp_name}__{seed}` (a
    --run-name of benchmark/run.py --slurm) -> (env, exp_name, seed, None); None for another folder."""
    parts = name.rsplit("__", 3)
    if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
        return parts[0], parts[1], int(parts[2]), int(parts[3])
    parts = name.rsplit("__", 2)
    if len(parts) == 3 and parts[2].isdigit() and "__" not in parts[0]:
        return parts[0], parts[1], int(parts[2]), None
    return None


def first_event_time(path: Path) -> int:
    """The time in the name of the run's first event file (events.out.tfevents.{time}.{host}...), 0 if none."""
    times = [
        int(f.name.split(".")[3])
        for f in path.glob("events.out.tfevents.*")
        if len(f.name.split(".")) > 3 and f.name.split(".")[3].isdigit()
    ]
    return min(times, default=0)


def scalar_points(accumulator: EventAccumulator, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar tag, each step once. The accumulator has already dropped the points a
    resumed run's START purges; a step logged twice all the same keeps its last value."""
    last = {event.step: event.value for event in accumulator.Scalars(tag)}  # in the order logged
    steps = np.array(sorted(last), dtype=np.int64)
    return steps, np.array([last[step] for step in steps], dtype=np.float64)


def total_timesteps(accumulator: EventAccumulator) -> int | None:
    """total_timesteps from the `|param|value|` table the scripts write with add_text("hyperparameters")."""
    if "hyperparameters/text_summary" not in accumulator.Tags()["tensors"]:
        return None
    # the last one: a resumed run may write it again, with a raised --total-timesteps
    text = accumulator.Tensors("hyperparameters/text_summary")[-1].tensor_proto.string_val[0].decode()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0] == "total_timesteps":
            return int(cells[1])
    return None


def load_run(path: Path) -> RunLog | str:
    """The run's eval curve, or why it cannot be used."""
    env, exp_name, seed, time = parse_run_name(path.name)
    time = first_event_time(path) if time is None else time
    tag, scale, _ = metric(env)
    # purge_orphaned_data (the default): a SessionLog START at step s drops the earlier values at steps >= s
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=True).Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return f"no {tag}"
    steps, values = scalar_points(accumulator, tag)
    values = values * scale
    budget = total_timesteps(accumulator) or int(steps.max())
    if steps.max() < budget:
        return f"unfinished: last eval at step {steps.max():,} of {budget:,}"
    return RunLog(path, env, exp_name, seed, time, budget, steps, values)


def final_score(run: RunLog, last_fraction: float) -> float:
    """The paper's per-run metric: the best eval over the last `last_fraction` of the run's budget."""
    window = run.steps >= (1.0 - last_fraction) * run.budget
    return float(run.values[window].max())


def collect(runs_dir: Path, last_fraction: float) -> tuple[list[Group], list[str]]:
    """The groups of finished runs, with their per-seed scores, and notes on what was left out."""
    notes, newest = [], {}
    for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if parse_run_name(path.name) is None:
            notes.append(f"`{path.name}`: not a run folder name `{{env}}__{{exp_name}}__{{seed}}[__{{time}}]`, skipped")
            continue
        run = load_run(path)
        if isinstance(run, str):
            notes.append(f"`{path.name}`: {run}, left out")
            continue
        key = (run.env, run.exp_name, run.budget, run.seed)  # env first: an ablation's row sits by its parent's
        if key in newest:
            older, run = sorted([newest[key], run], key=lambda r: (r.time, r.path.name))
            notes.append(f"`{older.path.name}`: a newer run of the same seed and budget is kept (`{run.path.name}`), left out")
        newest[key] = run

    by_group = {}
    for (env, exp_name, budget, _), run in sorted(newest.items()):
        by_group.setdefault((exp_name, env, budget), []).append(run)
    groups = [
        Group(exp_name, env, budget, runs, np.array([final_score(run, last_fraction) for run in runs]))
        for (exp_name, env, budget), runs in by_group.items()
    ]
    return groups, notes


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) over seeds, the first axis; std is nan for a single seed."""
    mean = values.mean(axis=0)
    return mean, values.std(axis=0, ddof=1) if len(values) > 1 else np.full_like(mean, np.nan)


def mean_std_text(mean: float, std: float) -> str:
    return f"{mean:.2f} ({std:.2f})" if np.isfinite(std) else f"{mean:.2f} (—)"


def markdown(groups: list[Group], notes: list[str], runs_dir: str, last_fraction: float, curve_links: dict[str, str]) -> str:
    short, few = "†", "‡"
    lines = [
        "# FMER benchmark summary",
        "",
        (
            f"Written by `python benchmark/summarize.py` from `{runs_dir}` on {datetime.date.today()}. Per run, the best "
            f"eval over the last {last_fraction:.0%} of its steps; then mean (sample std, ddof=1) over seeds. Metric: "
            "`eval/episodic_return`, or `eval/completion_rate` in % on FrankaKitchen."
        ),
        "",
        "| script | env | metric | seeds | steps per run | ours: mean (std) | paper (1M steps, 5 seeds) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in groups:
        mean, std = mean_std(group.scores)
        paper = PAPER.get((group.exp_name, group.env))
        seeds = ", ".join(str(run.seed) for run in group.runs) + (f" {few}" if len(group.runs) < PAPER_SEEDS else "")
        budget = f"{group.budget:,}" + (f" {short}" if group.budget < PAPER_BUDGET else "")
        lines.append(
            f"| {group.exp_name} | {group.env} | {metric(group.env)[2]} | {seeds} | {budget} | "
            f"{mean_std_text(mean, std)} | {mean_std_text(*paper) if paper else '—'} |"
        )
    lines += [
        "",
        f"{short} shorter than the paper's 1M steps: not comparable with the paper column.",
        f"{few} fewer than the paper's 5 seeds.",
        "— in the paper column: the paper has no number for this script and env.",
    ]
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    if curve_links:
        lines += ["", "Learning curves (mean ± std over seeds):", ""]
        lines += [f"![{env}]({link})" for env, link in curve_links.items()]
    return "\n".join(lines) + "\n"


def mean_curve(runs: list[RunLog]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over seeds, each seed interpolated onto the union of the eval steps that
    lie within every seed's range."""
    start, end = max(run.steps.min() for run in runs), min(run.steps.max() for run in runs)
    steps = np.unique(np.concatenate([run.steps for run in runs]))
    steps = steps[(steps >= start) & (steps <= end)]
    curves = np.stack([np.interp(steps, run.steps, run.values) for run in runs])
    return (steps, *mean_std(curves))


def plot_env(env: str, groups: list[Group], path: Path) -> None:
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for group in groups:
        steps, mean, std = mean_curve(group.runs)
        seeds = f"{len(group.runs)} seed" + ("s" if len(group.runs) > 1 else "")
        (line,) = ax.plot(steps, mean, marker=".", label=f"{group.exp_name} ({seeds}, {group.budget:,} steps)")
        if len(group.runs) > 1:
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(title=env, xlabel="env steps", ylabel=f"eval {metric(env)[2]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    if not Path(args.runs_dir).is_dir():
        raise SystemExit(f"error: no folder {args.runs_dir}")
    groups, notes = collect(Path(args.runs_dir), args.last_fraction)
    if not groups:
        print("\n".join(notes))
        raise SystemExit(f"error: no finished runs under {args.runs_dir}")

    out, curve_links = Path(args.out), {}
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.plots:
        plot_dir = Path(args.plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        for env in sorted({group.env for group in groups}):
            path = plot_dir / f"curves-{env}.png"
            plot_env(env, [group for group in groups if group.env == env], path)
            curve_links[env] = os.path.relpath(path, out.parent)
    text = markdown(groups, notes, args.runs_dir, args.last_fraction, curve_links)
    out.write_text(text)
    print(text)
    print(f"written: {out}" + (f" and {len(curve_links)} curves in {args.plot_dir}" if curve_links else ""))
