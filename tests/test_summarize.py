"""benchmark/summarize.py's interval estimates against hand-computed values: the interquartile mean, the probability
of improvement, the stratified bootstrap, and the CLI's tables, per-seed CSV and curves for FMER beside SAC.

No training: the CLI test writes its own tiny event files. (The paper's metric itself: tests/test_benchmark.py.)
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from torch.utils.tensorboard import SummaryWriter

from benchmark import summarize

ROOT = Path(__file__).resolve().parents[1]


def test_iqm_cuts_int_n_over_4_scores_at_each_end():
    assert summarize.iqm(np.array([1.0, 2, 3, 4, 5, 6, 7, 100])) == 4.5  # n = 8: mean of 3, 4, 5, 6
    assert summarize.iqm(np.array([100.0, 1, 2, 3, 4, 5])) == 3.5  # n = 6: int(1.5) = 1 cut, mean of 2, 3, 4, 5
    assert summarize.iqm(np.array([0.0, 1, 2, 3, 100])) == 2.0  # n = 5: int(1.25) = 1 cut, mean of 1, 2, 3
    assert summarize.iqm(np.array([1.0, 2, 30])) == 11.0  # n = 3: nothing cut, the mean
    # several envs: their scores pooled, [0, 0, 10, 10, 10, 100] -> mean of 0, 10, 10, 10
    assert summarize.iqm(np.array([0.0, 0]), np.array([10.0, 10, 10]), np.array([100.0])) == 7.5


def test_probability_of_improvement_counts_pairs_and_ties_as_half():
    p = summarize.improvement
    assert p(np.array([3.0, 1]), np.array([2.0, 2])) == 0.5  # 3 beats both 2s, 1 beats neither: 2 of 4 pairs
    assert p(np.array([2.0, 3]), np.array([2.0, 1])) == 0.875  # (2, 2) tie 1/2, the other three pairs won: 3.5 / 4
    assert p(np.array([1.0, 2, 3]), np.array([0.0])) == 1.0 and p(np.array([1.0, 2, 3]), np.array([5.0])) == 0.0
    assert p(np.array([2.0, 3]), np.array([2.0, 1]), np.array([3.0, 1]), np.array([2.0, 2])) == (0.875 + 0.5) / 2
    a, b = np.random.default_rng(0).integers(0, 4, size=(2, 7)).astype(float)  # many ties
    assert p(a, b) == pytest.approx(scipy.stats.mannwhitneyu(a, b).statistic / (7 * 7))  # U / (n m)


def test_bootstrap_interval_holds_the_estimate_shrinks_with_seeds_and_is_seeded():
    rng = np.random.default_rng(1)
    few, many = rng.normal(100.0, 20.0, size=5), rng.normal(100.0, 20.0, size=80)
    estimate, low, high = summarize.interval(summarize.iqm, [few], 2000, 0)
    assert estimate == scipy.stats.trim_mean(few, 0.25) and low <= estimate <= high
    estimate_many, low_many, high_many = summarize.interval(summarize.iqm, [many], 2000, 0)
    assert low_many <= estimate_many <= high_many and high_many - low_many < (high - low) / 2
    assert summarize.interval(summarize.iqm, [few], 2000, 0) == (estimate, low, high)  # the same seed, the same interval
    assert summarize.interval(summarize.iqm, [many], 2000, 1)[1:] != (low_many, high_many)
    # the vectorized statistic that scipy calls, batch first, gives each resample's own value
    batch = np.stack([few, few[::-1], np.zeros(5)])
    assert summarize.iqm(batch).tolist() == [scipy.stats.trim_mean(few, 0.25)] * 2 + [0.0]
    assert summarize.improvement(batch, np.ones((3, 2))).tolist() == [summarize.improvement(few, np.ones(2))] * 2 + [0.0]


def test_stratified_bootstrap_resamples_within_each_env():
    ones, zeros = np.ones(3), np.zeros(3)
    # pooled [0, 0, 0, 1, 1, 1]: every stratified resample is the same, so no width; resampling the pool would vary
    assert summarize.interval(summarize.iqm, [ones, zeros], 999, 0) == (0.5, 0.5, 0.5)
    assert summarize.interval(summarize.improvement, [ones, zeros], 999, 0) == (1.0, 1.0, 1.0)
    # the mean over two envs: 1 on the first, all ties (1/2) on the second
    assert summarize.interval(summarize.improvement, [ones, zeros, ones, ones], 999, 0) == (0.75, 0.75, 0.75)
    estimate, low, high = summarize.interval(summarize.iqm, [np.array([3.0])], 999, 0)
    assert estimate == 3.0 and np.isnan(low) and np.isnan(high)  # one seed: no interval
    assert summarize.interval_text(estimate, low, high) == "3.00 [—]"


def test_intervals_of_two_seeds_by_hand():
    """Two seeds resample to (a, a), (a, b), (b, a), (b, b), 1/4 each; a 95% percentile interval is then the 2.5% and
    97.5% points of a distribution that can be written down."""
    # the IQM (the mean) of [1, 3]: 1, 2, 3 with 1/4, 1/2, 1/4 -> [1, 3]
    assert summarize.interval(summarize.iqm, [np.array([1.0, 3.0])], 9999, 0) == (2.0, 1.0, 3.0)
    # pooled with [10, 10], 4 scores, one cut at each end: (0, 0) -> mean(0, 10) = 5 (1/4); (0, 2) or (2, 2) -> 6
    assert summarize.interval(summarize.iqm, [np.array([0.0, 2.0]), np.array([10.0, 10.0])], 9999, 0) == (6.0, 5.0, 6.0)
    # P(A > B), A = [1, 3], B = [2, 4]: 1 pair of 4 won. A (1, 1) wins none; (3, 3) against B (2, 2) wins all (1/16),
    # so P is 1 with 6.25% > 2.5% and 0 with 1/4 + 1/8 + 1/16 = 43.75%: the interval is [0, 1]
    assert summarize.interval(summarize.improvement, [np.array([1.0, 3.0]), np.array([2.0, 4.0])], 9999, 0) == (0.25, 0, 1)
    # the curves' band: at each step the mean of two resampled seeds, [0, 2] at the first step, none at the second
    low, high = summarize.band(np.array([[0.0, 10.0], [2.0, 10.0]]), 9999, 0)
    assert low.tolist() == [0.0, 10.0] and high.tolist() == [2.0, 10.0]


def write_run(runs_dir: Path, name: str, values: list[float], total: int = 1000) -> None:
    """A finished run as the scripts log it: the hyperparameter table and an eval every total / 2 steps."""
    writer = SummaryWriter(str(runs_dir / name))
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n|total_timesteps|{total}|")
    for step, value in zip((total // 2, total), values):
        writer.add_scalar("eval/episodic_return", value, step)
    writer.close()


def test_cli_fmer_beside_sac_tables_csv_and_curves(tmp_path):
    runs, sac_runs = tmp_path / "runs", tmp_path / "sac_runs"  # two folders: FMER's and SAC's runs made apart
    # per seed the score is the last eval (step 1000 is the only one in the last 10%)
    for seed, fmer, sac in ((1, -200.0, -300.0), (2, -150.0, -150.0), (3, -100.0, -400.0)):
        write_run(runs, f"Pendulum-v1__fmer_continuous__{seed}__1", [-1000.0, fmer])
        write_run(sac_runs, f"Pendulum-v1__sac_continuous__{seed}__1", [-900.0, sac])
    for seed, fmer, sac in ((1, 10.0, 30.0), (2, 20.0, 40.0)):
        write_run(runs, f"InvertedPendulum-v5__fmer_continuous__{seed}__1", [0.0, fmer])
        write_run(sac_runs, f"InvertedPendulum-v5__sac_continuous__{seed}__1", [0.0, sac])
    write_run(runs, "HalfCheetah-v5__fmer_continuous__1__1", [0.0, 1029.533])  # FMER only: no P(improvement) there
    write_run(runs, "MountainCarContinuous-v0__fmer_continuous__1__1", [0.0, 90.0])  # no normalisation reference
    write_run(runs, "MountainCarContinuous-v0__other__1__1", [0.0, 80.0])
    out = tmp_path / "out" / "summary.md"
    command = [
        sys.executable,
        str(ROOT / "benchmark" / "summarize.py"),
        "--runs-dir",
        str(runs),
        str(sac_runs),
        "--out",
        str(out),
    ]
    result = subprocess.run([*command, "--plot-dir", str(tmp_path / "plots"), "--resamples", "999"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    text = out.read_text()

    # Pendulum: FMER -200 beats -300 and -400, -150 beats both and ties -150, -100 beats all three: 7.5 / 9
    assert "| Pendulum-v1 | 1,000 | 3, 3 | 0.83 [" in text
    assert "| InvertedPendulum-v5 | 1,000 | 2, 2 | 0.00 [0.00, 0.00] |" in text  # every SAC seed higher
    assert "| mean over 2 envs | 1,000 |  | 0.42 [" in text  # (7.5 / 9 + 0) / 2
    assert "| HalfCheetah-v5 | 1,000 |" not in text.split("## Probability of improvement")[1]
    # aggregate: InvertedPendulum / 1000, Pendulum (x + 3254.72) / 3254.72, HalfCheetah / 10295.33 (the paper's SAC)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| fmer_continuous | 1,000 |")}
    normalised = [0.01, 0.02, 0.1, *(1 + np.array([-200.0, -150.0, -100.0]) / 3254.72)]
    expected = f"{scipy.stats.trim_mean(normalised, 0.25):.2f} ["
    assert rows["| fmer_continuous"].startswith(
        "| fmer_continuous | 1,000 | HalfCheetah-v5, InvertedPendulum-v5, Pendulum-v1 | 6 | " + expected
    )
    assert rows["| fmer_continuous"].endswith("| MountainCarContinuous-v0 |")
    assert "| other | 1,000 | — | 0 | — | MountainCarContinuous-v0 |" in text  # no env left to pool

    with open(out.with_suffix(".csv"), newline="") as file:
        table = list(csv.DictReader(file))
    assert len(table) == 13
    row = next(r for r in table if r["env"] == "HalfCheetah-v5")
    assert (row["exp_name"], row["seed"], row["steps"], row["final_eval_step"]) == ("fmer_continuous", "1", "1000", "1000")
    assert float(row["score"]) == pytest.approx(1029.533) and float(row["normalised_score"]) == pytest.approx(0.1)
    assert next(r for r in table if r["env"].startswith("Mountain"))["normalised_score"] == ""
    envs = ("HalfCheetah-v5", "InvertedPendulum-v5", "MountainCarContinuous-v0", "Pendulum-v1")
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == [f"curves-{env}.png" for env in envs]
    assert (tmp_path / "plots" / "curves-Pendulum-v1.png").read_bytes()[:4] == b"\x89PNG"

    result = subprocess.run([*command, "--no-plots", "--algorithms", "sac_continuous", "sac_continuous"], capture_output=True)
    assert result.returncode != 0 and result.stderr.decode().strip().splitlines() == [
        "error: --algorithms takes two different exp names, --resamples a positive number"
    ]
