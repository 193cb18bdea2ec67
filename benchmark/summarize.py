"""Summarize runs as the paper reports them, with interval estimates: markdown tables, a per-seed CSV and curves.

    python benchmark/summarize.py         # runs/ -> benchmark/results/summary.md, summary.csv, curves-{env}.png
    python benchmark/summarize.py --runs-dir runs --out /tmp/summary.md --plot-dir /tmp/curves --algorithms A B

Run folders: `{env}__{exp_name}__{seed}__{time}` under --runs-dir, or `{env}__{exp_name}__{seed}` (a --run-name, as a
Slurm array task's; its time is its first event file's). The paper's metric (Sec. 5.1, following its ref. [32]): per
run, the maximum of the eval metric (`eval/episodic_return`; `eval/completion_rate` in % on FrankaKitchen) at steps
>= 0.9 x the run's budget; then the mean and the sample std (ddof=1) over seeds. Details: benchmark/README.md.

- Resumed runs: as in TensorBoard (EventAccumulator), the SessionLog START a resumed start writes at its
  first new step s drops the earlier files' values at steps >= s; a step still logged twice keeps its last value.
- Budget: the run's `total_timesteps` (its `hyperparameters` text), else its last eval step. A run whose last
  eval is short of its budget is unfinished: left out, with a note.
- Groups: (exp_name, env, budget); several runs of the same seed in a group: the newest (largest time) is kept.
- Interval estimates (Agarwal et al., 2021): the interquartile mean per env and, on scores normalised by NORMALISATION,
  over the envs of one exp_name and budget; P(A > B) per env and over envs; each with a 95% percentile bootstrap
  interval, stratified (seeds resampled within each env and algorithm).
- Curves: one PNG per env with every group of it (SAC beside FMER, an ablation over its parent): the mean over seeds
  and its 95% percentile bootstrap band, seeds interpolated onto the union of their eval steps in their common range.
"""

import csv
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.stats
import tyro
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PAPER_BUDGET = 1_000_000
PAPER_SEEDS = 5
# The paper's mean (std) over 5 seeds at 1M steps, by (exp_name, env). Table 2 (FMER and SAC), Table 10
# (clipping instead of tanh), Table 11 (exact divergence), Table 15 (ODE solvers, 10 steps).
PAPER = {
    ("sac_continuous", "Hopper-v5"): (3318.64, 132.80),
    ("sac_continuous", "HalfCheetah-v5"): (10295.33, 1170.43),
    ("sac_continuous", "Walker2d-v5"): (4441.51, 536.85),
    ("sac_continuous", "Humanoid-v5"): (5326.73, 58.93),
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
# Normalised score (x - low) / (high - low), for the aggregate over envs: 1 = the paper's SAC at 1M steps on MuJoCo
# (low 0); on the others the metric's bounds: all tasks done on Kitchen, balanced all 1000 steps on InvertedPendulum,
# and Pendulum's 200 steps between the worst reward, -(pi^2 + 0.1 x 8^2 + 0.001 x 2^2), and the best, 0.
NORMALISATION = {
    env: (0.0, PAPER[("sac_continuous", env)][0]) for env in ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Humanoid-v5")
}
NORMALISATION |= {f"FrankaKitchen-v1-N{n}": (0.0, 100.0) for n in (1, 2, 4, 7)}
NORMALISATION |= {"InvertedPendulum-v5": (0.0, 1000.0), "Pendulum-v1": (-200 * (np.pi**2 + 0.1 * 64 + 0.001 * 4), 0.0)}


@dataclass
class Args:
    runs_dir: tuple[str, ...] = ("runs",)
    """the folders of run folders (tensorboard logs) to read, e.g. FMER's and SAC's runs made apart"""
    out: str = "benchmark/results/summary.md"
    """the markdown table to write"""
    plot_dir: str = "benchmark/results"
    """where the learning curves go, curves-{env}.png"""
    last_fraction: float = 0.1
    """the final fraction of training over which each run's best eval counts (the paper's 10%)"""
    plots: bool = True
    """draw the learning curves"""
    csv: str = ""
    """the per-seed CSV to write (default: --out with .csv)"""
    algorithms: tuple[str, str] = ("fmer_continuous", "sac_continuous")
    """the exp names A B of the probability of improvement P(A > B)"""
    resamples: int = 9999
    """bootstrap resamples of each confidence interval"""
    bootstrap_seed: int = 0
    """seed of the bootstrap (the same seed, the same intervals)"""


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


def collect(runs_dirs: Path | tuple, last_fraction: float) -> tuple[list[Group], list[str]]:
    """The groups of finished runs under one folder or several, with their per-seed scores, and notes on what was
    left out."""
    notes, newest = [], {}
    folders = [Path(d) for d in ([runs_dirs] if isinstance(runs_dirs, (str, Path)) else runs_dirs)]
    for path in sorted((p for folder in folders for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name):
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


def iqm(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean of the samples' scores pooled (rliable's: trim_mean of all of them, 25% cut at each end)."""
    return scipy.stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def improvement(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(A > B) averaged over envs, samples = (a_env1, b_env1, a_env2, b_env2, ...): per env the fraction of pairs
    (a run of A, a run of B) in which A scores higher, a tie counting 1/2 (the Mann-Whitney U over n_a x n_b)."""
    per_env = []
    for a, b in zip(samples[::2], samples[1::2]):
        a, b = np.moveaxis(a, axis, -1)[..., :, None], np.moveaxis(b, axis, -1)[..., None, :]
        per_env.append(((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1)))
    return np.mean(per_env, axis=0)


def interval(statistic, samples: list[np.ndarray], resamples: int, seed: int) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic and its 95% percentile bootstrap interval, stratified: each sample (the
    seeds of one env, or of one algorithm on one env) is resampled on its own. No interval (nan) from one seed."""
    estimate = float(statistic(*samples))
    if min(len(sample) for sample in samples) < 2:
        return estimate, np.nan, np.nan
    rng = np.random.default_rng(seed)
    result = scipy.stats.bootstrap(samples, statistic, n_resamples=resamples, vectorized=True, method="percentile", rng=rng)
    return estimate, float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval_text(estimate: float, low: float, high: float) -> str:
    return f"{estimate:.2f} [{low:.2f}, {high:.2f}]" if np.isfinite(low) else f"{estimate:.2f} [—]"


def normalised(group: Group) -> np.ndarray | None:
    """The group's scores normalised by NORMALISATION, None for an env without a reference."""
    low, high = NORMALISATION.get(group.env, (None, None))
    return None if low is None else (group.scores - low) / (high - low)


def aggregate_lines(groups: list[Group], resamples: int, seed: int) -> list[str]:
    """The IQM of normalised scores over the envs of each (exp_name, budget), as a table."""
    by_key = {}
    for group in groups:
        by_key.setdefault((group.exp_name, group.budget), []).append(group)
    lines = ["| script | steps per run | envs | runs | IQM of normalised scores [95% CI] | left out (no reference) |"]
    lines.append("|" + " --- |" * 6)
    for (exp_name, budget), members in sorted(by_key.items()):
        kept = [group for group in members if normalised(group) is not None]
        left_out = ", ".join(group.env for group in members if normalised(group) is None) or "—"
        estimate = interval_text(*interval(iqm, [normalised(group) for group in kept], resamples, seed)) if kept else "—"
        envs, runs = ", ".join(group.env for group in kept) or "—", sum(len(group.runs) for group in kept)
        lines.append(f"| {exp_name} | {budget:,} | {envs} | {runs} | {estimate} | {left_out} |")
    return lines


def improvement_lines(groups: list[Group], algorithms: tuple[str, str], resamples: int, seed: int) -> list[str]:
    """P(A > B) on each env that both ran at the same budget, and its mean over those envs per budget, as a table."""
    found, pairs = {(group.exp_name, group.env, group.budget): group for group in groups}, {}
    for (exp_name, env, budget), group in sorted(found.items()):
        if exp_name == algorithms[0] and (algorithms[1], env, budget) in found:
            pairs.setdefault(budget, []).append((env, group.scores, found[(algorithms[1], env, budget)].scores))
    if not pairs:
        return [f"No env has finished runs of both {algorithms[0]} and {algorithms[1]} at the same budget."]
    lines = [f"| env | steps per run | seeds ({', '.join(algorithms)}) | P({' > '.join(algorithms)}) [95% CI] |"]
    lines.append("|" + " --- |" * 4)
    for budget, both in pairs.items():
        rows = [(env, [a, b], f"{len(a)}, {len(b)}") for env, a, b in both]
        if len(both) > 1:
            rows.append((f"mean over {len(both)} envs", [scores for _, a, b in both for scores in (a, b)], ""))
        for name, samples, seeds in rows:
            estimate = interval_text(*interval(improvement, samples, resamples, seed))
            lines.append(f"| {name} | {budget:,} | {seeds} | {estimate} |")
    return lines


def markdown(groups: list[Group], notes: list[str], curve_links: dict[str, str], args: Args) -> str:
    algorithms, resamples, seed = args.algorithms, args.resamples, args.bootstrap_seed
    short, few = "†", "‡"
    lines = [
        "# FMER benchmark summary",
        "",
        (
            f"Written by `python benchmark/summarize.py` from `{' '.join(np.atleast_1d(args.runs_dir))}` on "
            f"{datetime.date.today()}. Per run, the best "
            f"eval over the last {args.last_fraction:.0%} of its steps; then mean (sample std, ddof=1) over seeds, and the "
            f"interquartile mean (IQM) with a 95% stratified percentile bootstrap interval ({resamples} resamples, seed "
            f"{seed}). Metric: `eval/episodic_return`, or `eval/completion_rate` in % on FrankaKitchen."
        ),
        "",
        "| script | env | metric | n | seeds | steps per run | ours: mean (std) | ours: IQM [95% CI] "
        "| paper (1M steps, 5 seeds) |",
        "|" + " --- |" * 9,
    ]
    for group in groups:
        mean, std = mean_std(group.scores)
        paper = PAPER.get((group.exp_name, group.env)) if group.budget == PAPER_BUDGET else None  # 1M beside 1M only
        seeds = ", ".join(str(run.seed) for run in group.runs) + (f" {few}" if len(group.runs) < PAPER_SEEDS else "")
        budget = f"{group.budget:,}" + (f" {short}" if group.budget < PAPER_BUDGET else "")
        lines.append(
            f"| {group.exp_name} | {group.env} | {metric(group.env)[2]} | {len(group.runs)} | {seeds} | {budget} | "
            f"{mean_std_text(mean, std)} | {interval_text(*interval(iqm, [group.scores], resamples, seed))} | "
            f"{mean_std_text(*paper) if paper else '—'} |"
        )
    lines += [
        "",
        f"{short} shorter than the paper's 1M steps: no paper number beside it.",
        f"{few} fewer than the paper's 5 seeds.",
        "— in the paper column: the paper has no number for this script and env, or the runs are not 1M steps. [—]: no "
        "interval from one seed.",
        "",
        "## Over envs: IQM of normalised scores",
        "",
        "Per-seed scores normalised as (x - low) / (high - low), low and high: MuJoCo 0 and the paper's SAC at 1M steps,"
        f" FrankaKitchen 0 and 100%, InvertedPendulum-v5 0 and 1000, Pendulum-v1 {NORMALISATION['Pendulum-v1'][0]:.2f} and 0"
        " (its bounds); pooled over the envs of one script and budget. The bootstrap resamples seeds within each env.",
        "",
        *aggregate_lines(groups, resamples, seed),
        "",
        f"## Probability of improvement P({' > '.join(algorithms)})",
        "",
        "Per env, the probability that a run of the first scores higher than one of the second (ties 1/2), over all "
        "pairs of their seeds; per budget, its mean over the envs both ran. The bootstrap resamples the seeds of each "
        "algorithm on each env on their own.",
        "",
        *improvement_lines(groups, algorithms, resamples, seed),
    ]
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    if curve_links:
        lines += ["", "Learning curves (mean over seeds, 95% percentile bootstrap band over seeds):", ""]
        lines += [f"![{env}]({link})" for env, link in curve_links.items()]
    return "\n".join(lines) + "\n"


def write_csv(groups: list[Group], path: Path) -> None:
    """One row per run: its score (the paper's metric), the score normalised, and its last evaluation."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow("env exp_name seed steps score normalised_score final_eval final_eval_step run".split())
        for group in groups:
            normal = normalised(group)
            for i, run in enumerate(group.runs):
                norm = "" if normal is None else f"{normal[i]:.7g}"
                row = [run.env, run.exp_name, run.seed, run.budget, f"{group.scores[i]:.7g}", norm, f"{run.values[-1]:.7g}"]
                writer.writerow([*row, run.steps[-1], run.path.name])


def seed_curves(runs: list[RunLog]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, curves[seed, step]): each seed interpolated onto the union of the eval steps that lie within every
    seed's range."""
    start, end = max(run.steps.min() for run in runs), min(run.steps.max() for run in runs)
    steps = np.unique(np.concatenate([run.steps for run in runs]))
    steps = steps[(steps >= start) & (steps <= end)]
    return steps, np.stack([np.interp(steps, run.steps, run.values) for run in runs])


def band(curves: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At each step, the 95% percentile bootstrap interval of the mean over seeds (curves[seed, step])."""
    rng = np.random.default_rng(seed)
    result = scipy.stats.bootstrap((curves,), np.mean, n_resamples=resamples, method="percentile", rng=rng)
    return result.confidence_interval.low, result.confidence_interval.high


def plot_env(env: str, groups: list[Group], path: Path, resamples: int, seed: int) -> None:
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for group in groups:
        steps, curves = seed_curves(group.runs)
        n = len(group.runs)
        (line,) = ax.plot(
            steps, curves.mean(axis=0), marker=".", label=f"{group.exp_name} ({n} seed{'s' * (n > 1)}, {group.budget:,} steps)"
        )
        if n > 1:
            ax.fill_between(steps, *band(curves, resamples, seed), color=line.get_color(), alpha=0.2)
    ax.set(title=f"{env} (mean over seeds, 95% bootstrap CI)", xlabel="env steps", ylabel=f"eval {metric(env)[2]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    for folder in args.runs_dir:
        if not Path(folder).is_dir():
            raise SystemExit(f"error: no folder {folder}")
    if args.algorithms[0] == args.algorithms[1] or args.resamples < 1:
        raise SystemExit("error: --algorithms takes two different exp names, --resamples a positive number")
    groups, notes = collect(args.runs_dir, args.last_fraction)
    if not groups:
        print("\n".join(notes))
        raise SystemExit(f"error: no finished runs under {' '.join(args.runs_dir)}")

    out, curve_links = Path(args.out), {}
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.plots:
        plot_dir = Path(args.plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        for env in sorted({group.env for group in groups}):
            path = plot_dir / f"curves-{env}.png"
            plot_env(env, [group for group in groups if group.env == env], path, args.resamples, args.bootstrap_seed)
            curve_links[env] = os.path.relpath(path, out.parent)
    text = markdown(groups, notes, curve_links, args)
    out.write_text(text)
    csv_path = Path(args.csv) if args.csv else out.with_suffix(".csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(groups, csv_path)
    print(text)
    print(f"written: {out}, {csv_path}" + (f" and {len(curve_links)} curves in {args.plot_dir}" if curve_links else ""))
