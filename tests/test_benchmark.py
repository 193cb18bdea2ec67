"""benchmark/run.py (the sweep runner) and benchmark/summarize.py (the paper's metric, table and curves).

No training runs here: the summarizer reads event files written by the test, and the runner's
local runs are a tiny stand-in script.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from benchmark import run as bench_run  # benchmark/ is a namespace package under the repo root (pytest.ini)
from benchmark import summarize

ROOT = Path(__file__).resolve().parents[1]
MUJOCO = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Humanoid-v5")


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmark" / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def write_run(
    runs_dir: Path, name: str, points: list[tuple[int, float]], total: int | None, tag: str = "eval/episodic_return"
) -> None:
    """A run folder as the scripts write it: the hyperparameter table (unless total is None) and `tag`."""
    writer = SummaryWriter(str(runs_dir / name))
    if total is not None:
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n|exp_name|x|\n|total_timesteps|{total}|\n|seed|1|")
    for step, value in points:
        writer.add_scalar(tag, value, step)
    writer.close()


ZEROS = [(step, 0.0) for step in range(100, 900, 100)]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    # Hopper, budget 1000: window is step >= 900. Seed 1 peaks just before it (890, excluded).
    # Max per seed then mean: (10 + 30) / 2 = 20; mean curve then max would give 15.
    write_run(runs, "Hopper-v5__fmer_continuous__1__200", ZEROS + [(890, 9999.0), (900, 10.0), (950, 0.0), (1000, 0.0)], 1000)
    write_run(runs, "Hopper-v5__fmer_continuous__2__200", ZEROS + [(890, 0.0), (900, 0.0), (950, 0.0), (1000, 30.0)], 1000)
    write_run(runs, "Hopper-v5__fmer_continuous__1__100", [(900, 500.0), (1000, 500.0)], 1000)  # older seed 1
    write_run(runs, "Hopper-v5__fmer_continuous__3__300", [(500, 700.0)], 1000)  # unfinished
    write_run(runs, "Hopper-v5__fmer_clip__1__100", [(500, 1.0), (1000, 7.0)], 1000)
    write_run(
        runs, "Humanoid-v5__fmer_continuous__1__100", [(890_000, 9000.0), (900_000, 5000.0), (1_000_000, 5200.0)], 1_000_000
    )
    write_run(runs, "Pendulum-v1__fmer_continuous__1__100", [(500, -1000.0), (900, -140.0), (1000, -150.0)], None)
    for seed, points in ((1, [(900, 0.5), (1000, 0.25)]), (2, [(900, 0.0), (1000, 0.25)])):
        name = f"FrankaKitchen-v1-N2__fmer_kitchen__{seed}__100"
        write_run(runs, name, points, 1000, tag="eval/completion_rate")
        write_run(runs, name, [(1000, 3.0)], None)  # its return, which is not the Kitchen metric
    (runs / "notes_not_a_run").mkdir()
    return runs


@pytest.fixture(scope="module")
def collected(runs_dir):
    groups, notes = summarize.collect(runs_dir, 0.1)
    return {(g.exp_name, g.env): g for g in groups}, notes


def table_row(text: str, exp_name: str, env: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {exp_name} | {env} |")]
    assert len(rows) == 1, text
    return rows[0]


def test_score_is_max_over_last_tenth_then_mean_over_seeds(collected):
    groups, _ = collected
    hopper = groups[("fmer_continuous", "Hopper-v5")]
    assert [run.seed for run in hopper.runs] == [1, 2]
    assert hopper.scores.tolist() == [10.0, 30.0]  # 9999 at step 890 < 0.9 * 1000 is outside the window
    mean, std = summarize.mean_std(hopper.scores)
    assert mean == 20.0  # the mean curve's max would be 15
    assert std == pytest.approx(np.sqrt(200.0))  # sample std (ddof=1); ddof=0 would be 10


def test_kitchen_completion_in_percent_and_budget_fallback(collected):
    groups, _ = collected
    assert groups[("fmer_kitchen", "FrankaKitchen-v1-N2")].scores.tolist() == [50.0, 25.0]
    pendulum = groups[("fmer_continuous", "Pendulum-v1")]  # no hyperparameters: budget = last eval step
    assert pendulum.budget == 1000 and pendulum.scores.tolist() == [-140.0]
    assert groups[("fmer_continuous", "Humanoid-v5")].scores.tolist() == [5200.0]


def test_newest_run_of_a_seed_kept_unfinished_left_out(collected):
    _, notes = collected
    text = "\n".join(notes)
    assert "`Hopper-v5__fmer_continuous__1__100`: a newer run" in text
    assert "`Hopper-v5__fmer_continuous__3__300`: unfinished: last eval at step 500 of 1,000" in text
    assert "`notes_not_a_run`: not a run folder name" in text


def test_markdown_table(collected, runs_dir):
    groups, notes = collected
    text = summarize.markdown(list(groups.values()), notes, {}, summarize.Args(runs_dir=str(runs_dir)))
    assert (
        "| script | env | metric | n | seeds | steps per run | ours: mean (std) | ours: IQM [95% CI] "
        "| paper (1M steps, 5 seeds) |" in text
    )
    # two seeds: the bootstrap means are 10, 20 or 30 (1/4, 1/2, 1/4), so the 95% percentile interval is [10, 30]
    assert (
        table_row(text, "fmer_continuous", "Hopper-v5")
        == "| fmer_continuous | Hopper-v5 | return | 2 | 1, 2 ‡ | 1,000 † | 20.00 (14.14) | 20.00 [10.00, 30.00] | — |"
    )
    assert (
        table_row(text, "fmer_kitchen", "FrankaKitchen-v1-N2")
        == "| fmer_kitchen | FrankaKitchen-v1-N2 | completion % | 2 | 1, 2 ‡ | 1,000 † | 37.50 (17.68) | 37.50 [25.00, 50.00] "
        "| — |"
    )
    assert (
        table_row(text, "fmer_continuous", "Humanoid-v5")
        == "| fmer_continuous | Humanoid-v5 | return | 1 | 1 ‡ | 1,000,000 | 5200.00 (—) | 5200.00 [—] | 5286.12 (65.35) |"
    )
    assert table_row(text, "fmer_continuous", "Pendulum-v1").endswith("| -140.00 (—) | -140.00 [—] | — |")
    assert table_row(text, "fmer_clip", "Hopper-v5").endswith("| 7.00 (—) | 7.00 [—] | — |")  # 1,000 steps
    assert "† shorter than the paper's 1M steps: no paper number beside it." in text


def test_curves_interpolate_onto_common_steps():
    def run(steps, values):
        return summarize.RunLog(
            Path("x"), "Hopper-v5", "fmer_continuous", 1, 0, 20, np.array(steps), np.array(values, dtype=float)
        )

    steps, curves = summarize.seed_curves([run([0, 10, 20], [0, 10, 20]), run([5, 10, 15, 20, 25], [5, 6, 7, 8, 9])])
    assert steps.tolist() == [5, 10, 15, 20]  # union of eval steps, within the range both seeds cover
    assert curves.tolist() == [[5.0, 10.0, 15.0, 20.0], [5.0, 6.0, 7.0, 8.0]]


def test_summarize_cli_writes_table_and_one_figure_per_env(runs_dir, tmp_path):
    result = cli(
        "summarize.py",
        "--runs-dir",
        str(runs_dir),
        "--out",
        str(tmp_path / "summary.md"),
        "--plot-dir",
        str(tmp_path / "plots"),
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "summary.md").read_text()
    assert "| 20.00 (14.14) | 20.00 [10.00, 30.00] | — |" in text
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == [f"curves-{env}.png" for env in ("FrankaKitchen-v1-N2", "Hopper-v5", "Humanoid-v5", "Pendulum-v1")]
    assert "![Hopper-v5](plots/curves-Hopper-v5.png)" in text  # links are relative to the table


def dry_run(*args: str, notes: list | None = None) -> list[str]:
    """The commands of a dry run; its stderr lines go to `notes` if given."""
    result = cli("run.py", "--dry-run", "--python", "python", *args)
    assert result.returncode == 0, result.stderr
    if notes is not None:
        notes += result.stderr.splitlines()
    return result.stdout.splitlines()


def test_dry_run_presets():
    mujoco = dry_run("--preset", "mujoco")
    assert sorted(mujoco) == sorted(
        f"python {script} --env-id {env} --seed {seed}"
        for script in ("fmer_continuous.py", "benchmark/sac_continuous.py")  # FMER and the SAC baseline, side by side
        for env in MUJOCO
        for seed in range(1, 6)
    )
    kitchen = dry_run("--preset", "kitchen", "--seeds", "1", "2")
    assert sorted(kitchen) == sorted(
        f"python fmer_kitchen.py --num-tasks {n} --seed {seed}" for n in (1, 2, 4, 7) for seed in (1, 2)
    )
    ablations = dry_run("--preset", "ablations", "--seeds", "1")
    scripts = {line.split()[1] for line in ablations}
    assert scripts == {
        f"ablations/fmer_{name}.py"
        for name in (
            "no_entropy",
            "uniform_weights",
            "clip",
            "exact_divergence",
            "fixed_beta",
            "top1",
            "ode_solver",
            "kitchen_fixed_beta",
        )
    } | {"fmer_continuous.py", "fmer_kitchen.py"}  # Tables 13-14: flags
    assert sum("fmer_clip.py" in line for line in ablations) == 4  # Table 10: all four MuJoCo envs
    assert [line for line in ablations if "exact_divergence" in line] == [
        "python ablations/fmer_exact_divergence.py --env-id Walker2d-v5 --seed 1"
    ]  # Table 11
    assert len(ablations) == 56 and len(dry_run("--preset", "ablations")) == 280


def test_dry_run_ablation_grid_has_the_rows_of_the_papers_tables():
    lines = set(dry_run("--preset", "ablations", "--seeds", "1"))
    parent_runs = set(dry_run("--preset", "mujoco", "--seeds", "1")) | set(dry_run("--preset", "kitchen", "--seeds", "1"))

    def runs(command):
        return f"python {command} --seed 1" in lines

    # Fig. 5: alpha off from the start, and late (ours: the step is lost), before the last-10% window
    late = bench_run.ENTROPY_OFF_LATE
    assert 500_000 <= late < 900_000
    for env in ("Hopper-v5", "Walker2d-v5"):
        assert runs(f"ablations/fmer_no_entropy.py --env-id {env}")
        assert runs(
            f"ablations/fmer_no_entropy.py --env-id {env} --entropy-off-step {late} "
            f"--exp-name fmer_no_entropy_off{late // 1000}k"
        )
    # Table 12: three fixed betas (ours: the values are lost) on the MuJoCo envs and Kitchen N = 1, 2, 4, 7,
    # below, inside and above the adaptive beta measured on short runs (0.008, then 0.029-0.108: run.py)
    low, mid, high = bench_run.FIXED_BETAS
    assert low < 0.008 and 0.029 <= mid <= 0.108 and high > 0.108
    for beta in bench_run.FIXED_BETAS:
        for env in MUJOCO:
            assert runs(f"ablations/fmer_fixed_beta.py --env-id {env} --beta {beta} --exp-name fmer_fixed_beta_{beta}")
        for n in (1, 2, 4, 7):
            assert runs(
                f"ablations/fmer_kitchen_fixed_beta.py --num-tasks {n} --beta {beta} --exp-name fmer_kitchen_fixed_beta_{beta}"
            )
    # Table 15: Euler 10 (the parent's run), RK2 10, RK4 10, RK2 5, RK4 2 on Walker2d
    assert "python fmer_continuous.py --env-id Walker2d-v5 --seed 1" in parent_runs
    for solver, steps, exp_name in (
        ("midpoint", 10, "fmer_ode_solver_midpoint"),
        ("rk4", 10, "fmer_ode_solver_rk4"),
        ("midpoint", 5, "fmer_ode_solver_midpoint_N5"),
        ("rk4", 2, "fmer_ode_solver_rk4_N2"),
    ):
        assert runs(
            f"ablations/fmer_ode_solver.py --env-id Walker2d-v5 --solver {solver} --ode-steps {steps} --exp-name {exp_name}"
        )
    # Table 13: K = 4, 8 (the parent's runs), 16, 32 on Walker2d, Humanoid, Kitchen N = 2 and 7
    for env in ("Walker2d-v5", "Humanoid-v5"):
        assert f"python fmer_continuous.py --env-id {env} --seed 1" in parent_runs
        for k in (4, 16, 32):
            assert runs(f"fmer_continuous.py --env-id {env} --num-candidates {k} --exp-name fmer_continuous_K{k}")
    for n in (2, 7):
        assert f"python fmer_kitchen.py --num-tasks {n} --seed 1" in parent_runs
        for k in (4, 16, 32):
            assert runs(f"fmer_kitchen.py --num-tasks {n} --num-candidates {k} --exp-name fmer_kitchen_K{k}")
    # Table 14: N = 5, 10 (the parent's run), 20, 50 Euler steps on Walker2d
    for n in (5, 20, 50):
        assert runs(f"fmer_continuous.py --env-id Walker2d-v5 --ode-steps {n} --exp-name fmer_continuous_N{n}")
    # the parent's settings are not run again under another name
    assert not any("--num-candidates 8 " in line or "--ode-steps 10 --exp-name fmer_continuous" in line for line in lines)


def test_dry_run_grid_passes_unknown_flags_on_to_the_scripts_that_take_them():
    notes = []
    lines = dry_run(
        "--scripts",
        "fmer_continuous.py",
        "ablations/fmer_clip.py",
        "benchmark/sac_continuous.py",
        "--env-ids",
        "Pendulum-v1",
        "InvertedPendulum-v5",
        "--seeds",
        "3",
        "4",
        "--total-timesteps",
        "5000",
        "--num-candidates",
        "4",
        "--compile",
        "--no-cuda",
        "--eval_episodes=3",
        notes=notes,
    )
    assert len(lines) == 12
    for script in ("fmer_continuous.py", "ablations/fmer_clip.py", "benchmark/sac_continuous.py"):
        fmer_only = "" if script == "benchmark/sac_continuous.py" else " --num-candidates 4 --compile"
        for env in ("Pendulum-v1", "InvertedPendulum-v5"):
            for seed in (3, 4):
                expected = f"python {script} --env-id {env} --seed {seed} --total-timesteps 5000{fmer_only}"
                assert f"{expected} --no-cuda --eval_episodes=3" in lines
    # one note per dropped flag and script, not per run
    assert notes == [
        f"note: benchmark/sac_continuous.py takes no {flag}: not passed to it" for flag in ("--num-candidates", "--compile")
    ]
    assert dry_run("--scripts", "fmer_multigoal.py", "--seeds", "1") == ["python fmer_multigoal.py --seed 1"]
    clash = cli("run.py", "--dry-run", "--preset", "mujoco", "--seed", "3")
    assert clash.returncode != 0 and "--seeds" in clash.stderr
    both = ["fmer_continuous.py", "benchmark/sac_continuous.py"]
    for scripts, more in ((["fmer_continuous.py"], ["1"]), (both, ["--exp-name", "x"])):  # a seed twice, one name for two
        clash = cli("run.py", "--dry-run", "--scripts", *scripts, "--env-ids", "Pendulum-v1", "--seeds", "1", *more)
        assert clash.returncode != 0 and clash.stderr.startswith("error: two runs of the grid are named Pendulum-v1__"), more
        assert len(clash.stderr.strip().splitlines()) == 1, clash.stderr


def test_every_preset_run_has_its_own_log_name():
    for preset in ("mujoco", "kitchen", "ablations"):
        runs = bench_run.grid(bench_run.preset_plan(preset), (1, 2))
        names = [bench_run.run_name(run, []) for run in runs]
        assert len(set(names)) == len(names), preset
    run = bench_run.Run("fmer_continuous.py", "Hopper-v5", ("--env-id", "Hopper-v5"), 1)
    assert bench_run.run_name(run, ["--exp-name=mine"]) == "Hopper-v5__mine__1"


def test_slurm_array_script(tmp_path):
    flags = ("--preset", "mujoco", "--seeds", "1", "2", "--total-timesteps", "5000")
    result = cli(
        "run.py",
        *flags,
        "--slurm",
        "--slurm-dir",
        str(tmp_path),
        "--python",
        "echo",
        "--max-parallel",
        "3",
        "--partition",
        "gpu",
        "--account",
        "proj",
    )
    assert result.returncode == 0, result.stderr
    sbatch = result.stdout.splitlines()[-1]
    assert sbatch == f"sbatch {tmp_path / 'mujoco.sbatch'}"
    script = Path(sbatch.split(" ", 1)[1])
    text = script.read_text()
    for option in ("--array=0-15%3", "--partition=gpu", "--account=proj", "--gpus-per-task=1", "--ntasks=1"):
        assert f"#SBATCH {option}\n" in text
    assert [int(i) for i in re.findall(r"^  (\d+)\) run=", text, re.MULTILINE)] == list(range(16))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    for option in ("--requeue", "--signal=B:USR1@300", "--open-mode=append"):
        assert f"#SBATCH {option}\n" in text

    # with --python python: index i runs expected[i], the python replaced by echo, saves its state every 50k steps
    # and resumes its own run folder
    expected = dry_run(*flags)
    assert len(expected) == 16 and sum("benchmark/sac_continuous.py" in command for command in expected) == 8
    for i, command in enumerate(expected):
        task = subprocess.run(
            ["bash", str(script)], env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(i)), capture_output=True, text=True, timeout=30
        )
        assert task.returncode == 0, task.stderr
        script_name, env, seed = re.search(r"(\w+)\.py --env-id (\S+) --seed (\d+)", command).groups()
        resume = f" --checkpoint-frequency 50000 --run-name {env}__{script_name}__{seed} --resume"
        assert task.stdout.splitlines()[-1] == command.removeprefix("python ") + resume
    beyond = subprocess.run(["bash", str(script)], env=dict(os.environ, SLURM_ARRAY_TASK_ID="16"), capture_output=True)
    assert beyond.returncode == 2


def test_slurm_array_keeps_a_given_checkpoint_frequency_and_refuses_a_script_without_resume(tmp_path):
    flags = ("--env-ids", "Pendulum-v1", "--seeds", "1", "--slurm", "--slurm-dir", str(tmp_path), "--python", "python")
    given = cli("run.py", "--scripts", "benchmark/sac_continuous.py", *flags, "--checkpoint-frequency=7", "--job-name", "x")
    assert given.returncode == 0, given.stderr
    text = (tmp_path / "x.sbatch").read_text()
    assert "--checkpoint-frequency=7 --run-name Pendulum-v1__sac_continuous__1 --resume)" in text
    assert "50000" not in text
    old = tmp_path / "old.py"  # a script whose --resume takes a value: an array task's `--resume` would break it
    fields = "    run_name: str = ''\n    resume: str = ''\n    checkpoint_frequency: int = 0\n"
    old.write_text(f"from dataclasses import dataclass\n@dataclass\nclass Args:\n{fields}")
    refused = cli("run.py", "--scripts", str(old), *flags)
    assert refused.returncode != 0 and "has no --resume switch" in refused.stderr


def test_local_runner_survives_a_failing_run(tmp_path):
    fake = tmp_path / "fake.py"  # fails for seed 1; one worker, so seed 2 starts after that failure
    fake.write_text(
        "import os, sys\n"
        "seed = int(sys.argv[sys.argv.index('--seed') + 1])\n"
        "print(f'seed {seed} cwd {os.getcwd()} threads {os.environ[\"OMP_NUM_THREADS\"]} args {sys.argv[1:]}')\n"
        "sys.exit(3 if seed == 1 else 0)\n"
    )
    logs = tmp_path / "logs"
    result = cli(
        "run.py",
        "--scripts",
        str(fake),
        "--seeds",
        "1",
        "2",
        "--workers",
        "1",
        "--threads",
        "1",
        "--log-dir",
        str(logs),
        "--some-flag",
        "7",
    )
    assert result.returncode == 1
    assert "1 ok, 1 failed" in result.stdout
    assert f"default__fake__1: exit code 3, log {logs / 'default__fake__1.log'}" in result.stdout
    failed, ok = (logs / "default__fake__1.log").read_text(), (logs / "default__fake__2.log").read_text()
    assert f"seed 2 cwd {ROOT} threads 1 args ['--seed', '2', '--some-flag', '7']" in ok  # no Args: every flag
    assert "seed 1 cwd" in failed
