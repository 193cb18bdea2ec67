"""Run a grid of FMER and baseline experiments (script x env x seed): locally, as a Slurm job array, or just print it.

    python benchmark/run.py --preset mujoco --dry-run                  # the paper's MuJoCo grid, printed
    python benchmark/run.py --preset mujoco --workers 4                # ... run here, 4 at a time
    python benchmark/run.py --preset kitchen --slurm --partition gpu   # ... as a Slurm job array
    python benchmark/run.py --scripts fmer_continuous.py --env-ids Pendulum-v1 --seeds 1 2 \\
        --workers 2 --total-timesteps 5000 --learning-starts 1000 --eval-frequency 1000

A run is (script, its own args, seed): `--env-id E` for the MuJoCo-style scripts, `--num-tasks N`
for fmer_kitchen.py, nothing for a script with a single env (fmer_multigoal.py). Every flag this
runner does not know (above: --total-timesteps ...) is passed on, unchanged, to every run whose
script declares it (a field of its `Args`); a script that does not is told nothing of it, and a
note says so (e.g. --num-candidates never reaches benchmark/sac_continuous.py). Runs execute with
the repository root as their working directory, so their tensorboard logs land in its runs/
folder, where benchmark/summarize.py reads them. The presets use the scripts' defaults, which are
the paper's protocol: 1M steps, evaluation every 10k steps over 10 episodes.
"""

import ast
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parents[1]
PAPER_SEEDS = (1, 2, 3, 4, 5)
MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Humanoid-v5")
KITCHEN_TASKS = (1, 2, 4, 7)
HOPPER_WALKER = ("Hopper-v5", "Walker2d-v5")
# A plan lists (script, env ids, Kitchen task counts, the script's own flags); the grid crosses
# each with the seeds.
Plan = list[tuple[str, tuple[str, ...], tuple[int, ...], tuple[str, ...]]]
# Each ablation on the envs the paper reports it on (FMER_SPEC section 9), with the settings of its
# table's rows. The paper's text does not name the env of Fig. 2, 5 and 6: there we use Hopper and
# Walker2d (ours). Every setting other than a script's default gets its own exp_name, so that
# summarize.py keeps it apart. The rows at the parent's defaults (K = 8, N = 10, Euler) are the
# mujoco and kitchen presets' runs, not repeated here.
#
# Fig. 5 switches alpha off at the start and late; the late step is lost from the text. Ours: 700k
# of 1M, late enough that exploration is established (the paper's reading of the late curve), early
# enough that 200k steps without the constraint pass before the last-10% window the metric reads.
ENTROPY_OFF_LATE = 700_000
# Table 12's three fixed betas are lost from the text. Ours bracket the adaptive beta (losses/beta)
# of fmer_continuous.py at its defaults, measured on short CPU runs, 1 torch thread:
#   Hopper-v5, seed 1: --total-timesteps 4000 --learning-starts 1000 --eval-frequency 1000
#     --eval-episodes 3 --log-frequency 100 (2026-11-30): 0.008 at its lowest (step 1200, as learning
#     starts), then 0.039-0.081 over steps 2000-4000 (median 0.061), rising with the critic's mean Q
#     (6 -> 26), with the ESS at its target of 4 (mean 3.97);
#   Pendulum-v1, seeds 1 and 2: the README's CPU sweep (benchmark/results/runs-cpu-2026-11-22,
#     4000 steps): 0.003-0.004 at the lowest, then 0.029-0.108 over steps 2000-4000 (medians 0.050, 0.037).
# So: 0.005 below all of it but the first updates (sharper weights), 0.05 at the measured scale, and
# 0.5 a decade above (flatter), where the growing Q values of a 1M-step run push the adaptive beta.
# Kitchen gets the same three (Table 12 has one row per value): its short CPU run saw no reward,
# so its beta only fell to the clamp and measures nothing.
FIXED_BETAS = (0.005, 0.05, 0.5)
TABLE_13_K = (4, 16, 32)  # candidate counts besides the default 8
TABLE_14_N = (5, 20, 50)  # Euler steps besides the default 10
ABLATIONS: Plan = [
    ("ablations/fmer_no_entropy.py", HOPPER_WALKER, (), ()),  # Fig. 5: alpha = 0 from the start
    (
        "ablations/fmer_no_entropy.py",
        HOPPER_WALKER,
        (),  # Fig. 5: alpha = 0 late
        ("--entropy-off-step", str(ENTROPY_OFF_LATE), "--exp-name", f"fmer_no_entropy_off{ENTROPY_OFF_LATE // 1000}k"),
    ),
    ("ablations/fmer_uniform_weights.py", HOPPER_WALKER, (), ()),  # Fig. 6
    ("ablations/fmer_clip.py", MUJOCO_ENVS, (), ()),  # App. D.1, Table 10
    ("ablations/fmer_exact_divergence.py", ("Walker2d-v5",), (), ()),  # App. D.2, Table 11
    *[
        ("ablations/fmer_fixed_beta.py", MUJOCO_ENVS, (), ("--beta", str(beta), "--exp-name", f"fmer_fixed_beta_{beta}"))
        for beta in FIXED_BETAS
    ],  # App. D.3, Table 12, MuJoCo half
    *[
        (
            "ablations/fmer_kitchen_fixed_beta.py",
            (),
            KITCHEN_TASKS,
            ("--beta", str(beta), "--exp-name", f"fmer_kitchen_fixed_beta_{beta}"),
        )
        for beta in FIXED_BETAS
    ],  # ... Kitchen half
    ("ablations/fmer_top1.py", HOPPER_WALKER, (), ()),  # Fig. 2
    # App. D.5, Table 15: RK2 and RK4 at 10 steps, RK2 at 5, RK4 at 2 (Euler at 10 is the parent)
    *[
        (
            "ablations/fmer_ode_solver.py",
            ("Walker2d-v5",),
            (),
            (
                "--solver",
                solver,
                "--ode-steps",
                str(steps),
                "--exp-name",
                f"fmer_ode_solver_{solver}" + ("" if steps == 10 else f"_N{steps}"),
            ),
        )
        for solver, steps in (("midpoint", 10), ("rk4", 10), ("midpoint", 5), ("rk4", 2))
    ],
    # App. D.4, Table 13: candidate count K on Walker2d, Humanoid and Kitchen N = 2, 7
    *[
        (
            "fmer_continuous.py",
            ("Walker2d-v5", "Humanoid-v5"),
            (),
            ("--num-candidates", str(k), "--exp-name", f"fmer_continuous_K{k}"),
        )
        for k in TABLE_13_K
    ],
    *[("fmer_kitchen.py", (), (2, 7), ("--num-candidates", str(k), "--exp-name", f"fmer_kitchen_K{k}")) for k in TABLE_13_K],
    # App. D.5, Table 14: Euler steps N on Walker2d
    *[
        ("fmer_continuous.py", ("Walker2d-v5",), (), ("--ode-steps", str(n), "--exp-name", f"fmer_continuous_N{n}"))
        for n in TABLE_14_N
    ],
]
# The flags a grid sets per run; as pass-through flags they would clash with it.
GRID_FLAGS = ("--seed", "--env-id", "--num-tasks")
# ... and those a Slurm array sets per task (each task resumes its own run folder).
SLURM_FLAGS = ("--run-name", "--resume")
# What a script needs to run in a Slurm array: --no-resume is there when --resume is a switch (a bool field), as the
# array task passes it; --checkpoint-frequency, which the array sets unless the user gives it.
RESUME_FLAGS = {"--run-name", "--resume", "--no-resume", "--checkpoint-frequency"}
# An array task saves every 50k steps (5% of 1M): killed with no time to save (a node failure, a preemption grace time
# shorter than the write), it loses at most 50k steps, ~2 min at a GPU's 42 min per 1M-step run. A state grows with its
# buffer, so 20 saves write ~10 full states (Humanoid's 2.7 GB: seconds on a fast disk, 160 s on a slow one).
SLURM_CHECKPOINT_FREQUENCY = 50_000
# The env part of the run name of a script that takes neither --env-id nor --num-tasks (the scripts'
# own run names: see run_name_stable).
SINGLE_ENV = {"fmer_multigoal.py": "MultiGoal"}


@dataclass
class Args:
    preset: Literal["mujoco", "kitchen", "ablations"] | None = None
    """a paper grid: mujoco (fmer_continuous.py and the SAC baseline on 4 envs), kitchen (fmer_kitchen.py, N = 1, 2, 4, 7),
    ablations"""
    scripts: tuple[str, ...] = ()
    """the script(s) to run, relative to the repository root (instead of --preset)"""
    env_ids: tuple[str, ...] = ()
    """one run per env id, given to the script as --env-id"""
    num_tasks: tuple[int, ...] = ()
    """one run per Kitchen task count, given to the script as --num-tasks (fmer_kitchen.py)"""
    seeds: tuple[int, ...] = PAPER_SEEDS
    """the seeds of every (script, env); the paper's are 1 to 5"""
    python: str = sys.executable
    """the python that runs the scripts (a local run, and the Slurm script)"""
    dry_run: bool = False
    """print the commands, one per line, and run nothing"""
    workers: int = 1
    """local runs at a time"""
    threads: int = 0
    """OMP_NUM_THREADS of each local run; 0: the machine's cores divided by --workers (at least 1)"""
    log_dir: str = "benchmark/logs"
    """where each local run's stdout and stderr go (relative to the repository root)"""

    # Slurm: write a job array script (one task per run) instead of running
    slurm: bool = False
    """write a Slurm job array script (one array task per run), print its sbatch line, run nothing"""
    slurm_dir: str = "benchmark/logs/slurm"
    """where the job script and the array tasks' output files go (relative to the repository root)"""
    job_name: str | None = None
    """the Slurm job name; None: the preset, or the first script's name"""
    partition: str | None = None
    """Slurm partition; None: the cluster's default"""
    account: str | None = None
    """Slurm account to charge; None: your default"""
    time: str = "1-00:00:00"
    """time limit of one run (the paper's runs took about 3-4 h on a V100 GPU; ours may differ)"""
    gpus_per_task: int = 1
    """GPUs per run (0: CPU only)"""
    cpus_per_task: int = 4
    """CPU cores per run (also its OMP_NUM_THREADS)"""
    mem: str = "16G"
    """memory per run"""
    max_parallel: int | None = None
    """at most this many array tasks at a time (the %N throttle of --array)"""
    signal_seconds: int = 300
    """Slurm sends USR1 this many seconds before the time limit: the run saves its state and the task requeues itself
    (300: time for the largest state write, 160 s for a full Humanoid buffer on a slow disk)"""
    setup: str | None = None
    """a shell line the job runs before the script, e.g. "source .venv/bin/activate" """


@dataclass(frozen=True)
class Run:
    script: str
    """path of the script, relative to the repository root"""
    label: str
    """what the run is on: the env id, N<tasks> for Kitchen, or "default" (for log names)"""
    args: tuple[str, ...]
    """the run's own flags: ("--env-id", env), ("--num-tasks", n) or (), then the script's flags of the plan"""
    seed: int


def grid(plan: Plan, seeds: tuple[int, ...]) -> list[Run]:
    """Every (script, variant, seed): a variant is one env id or one Kitchen task count; a script
    given neither runs once per seed on its default env."""
    runs = []
    for script, env_ids, num_tasks, flags in plan:
        variants = [(env, ("--env-id", env)) for env in env_ids]
        variants += [(f"N{n}", ("--num-tasks", str(n))) for n in num_tasks]
        for label, args in variants or [("default", ())]:
            runs += [Run(script, label, (*args, *flags), seed) for seed in seeds]
    return runs


def preset_plan(preset: str) -> Plan:
    """The plan of a paper grid. The SAC baseline is not in the kitchen grid: sac_continuous.py runs an env as gymnasium
    makes it, and FrankaKitchen-v1's dict observation, its reduction to a vector and the task sets are fmer_kitchen.py's."""
    if preset == "mujoco":
        return [("fmer_continuous.py", MUJOCO_ENVS, (), ()), ("benchmark/sac_continuous.py", MUJOCO_ENVS, (), ())]
    if preset == "kitchen":
        return [("fmer_kitchen.py", (), KITCHEN_TASKS, ())]
    return ABLATIONS


def declared_flags(script: Path) -> set[str] | None:
    """The flags a script takes: its `Args` fields, read from the source (tyro makes `num_envs` --num-envs, and a bool
    field also --no-X); no import, so the runner needs neither torch nor the script's own packages. None: no `Args`."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            fields = [
                (field.target.id.replace("_", "-"), ast.unparse(field.annotation))
                for field in node.body
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
            ]
            return {f"--{name}" for name, _ in fields} | {f"--no-{name}" for name, kind in fields if kind == "bool"}
    return None


def script_flags(script: str, extra: list[str]) -> list[str]:
    """The pass-through flags (each with its values) that the script declares; a note for each one it does not."""
    declared = declared_flags(ROOT / script) if (ROOT / script).exists() else None
    kept, keep = [], True
    for token in extra:  # a flag, then its values: ["--a", "1", "--b=2", "--c"]
        if token.startswith("--"):
            flag = token.split("=")[0]
            keep = declared is None or flag.replace("_", "-") in declared  # tyro takes --num_envs for --num-envs too
            if not keep:
                print(f"note: {script} takes no {flag}: not passed to it", file=sys.stderr)
        if keep:
            kept.append(token)
    return kept


def command(run: Run, python: str, extra: list[str]) -> list[str]:
    return [python, run.script, *run.args, "--seed", str(run.seed), *extra]


def run_one(cmd: list[str], log_path: Path, threads: int) -> tuple[int, float]:
    """Run one command from the repository root, its output to log_path; (exit code, seconds)."""
    start = time.time()
    with open(log_path, "w") as log:
        log.write(f"# {shlex.join(cmd)}\n")
        log.flush()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        try:
            code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        except OSError as e:  # e.g. a --python that does not exist
            log.write(f"{e}\n")
            code = 127
    return code, time.time() - start


def run_name(run: Run, extra: list[str]) -> str:
    """{label}__{exp_name}__{seed}: the run's runs/ folder name without the time (names its log)."""
    exp_name, flags = Path(run.script).stem, [*run.args, *extra]
    for i, flag in enumerate(flags):  # an --exp-name (the last one, as the script reads it) renames the run
        if flag == "--exp-name" and i + 1 < len(flags):
            exp_name = flags[i + 1]
        elif flag.startswith("--exp-name="):
            exp_name = flag.split("=", 1)[1]
    return f"{run.label}__{exp_name}__{run.seed}"


def run_local(names: list[str], commands: list[list[str]], log_dir: Path, workers: int, threads: int) -> int:
    """Run the grid, `workers` at a time; a failed run does not stop the others. Returns the failures."""
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(names)} runs, {workers} at a time, OMP_NUM_THREADS={threads}, logs in {log_dir}", flush=True)
    failed = []
    pool = ThreadPoolExecutor(workers)  # threads that each wait on one subprocess
    try:
        futures = {pool.submit(run_one, cmd, log_dir / f"{name}.log", threads): name for name, cmd in zip(names, commands)}
        for done, future in enumerate(as_completed(futures), 1):
            name, (code, seconds) = futures[future], future.result()
            if code == 0:
                print(f"[{done}/{len(names)}] ok      {name} ({seconds / 60:.1f} min)", flush=True)
            else:
                failed.append(f"{name}: exit code {code}, log {log_dir / name}.log")
                print(f"[{done}/{len(names)}] FAILED  {failed[-1]}", flush=True)
    except KeyboardInterrupt:  # the runs got the Ctrl-C too; start no more of them
        pool.shutdown(wait=True, cancel_futures=True)
        sys.exit(130)
    pool.shutdown()

    print(f"\n{len(names) - len(failed)} ok, {len(failed)} failed")
    for line in failed:
        print(f"  failed: {line}")
    return len(failed)


def run_name_stable(run: Run, extra: list[str]) -> str:
    """{env}__{exp_name}__{seed}: the run's runs/ folder in a Slurm array (`--run-name`), the scripts' default
    name without its time, so that every start of the task, a requeued one too, finds the same folder and
    benchmark/summarize.py reads it as usual. env: the env id, FrankaKitchen-v1-N{tasks}, or the script's own."""
    label, rest = run_name(run, extra).split("__", 1)
    if run.args[:1] == ("--num-tasks",):
        label = f"FrankaKitchen-v1-{label}"
    elif label == "default":
        label = SINGLE_ENV.get(Path(run.script).name, label)
    return f"{label}__{rest}"


def slurm_command(run: Run, python: str, extra: list[str]) -> list[str]:
    """The command of an array task: it resumes its run folder if it has a saved state, else starts it."""
    given = any(flag.split("=")[0] == "--checkpoint-frequency" for flag in extra)
    every = [] if given else ["--checkpoint-frequency", str(SLURM_CHECKPOINT_FREQUENCY)]
    return [*command(run, python, extra), *every, "--run-name", run_name_stable(run, extra), "--resume"]


# The end of every array task's script. Slurm sends USR1 (--signal=B:USR1@seconds) to the batch shell
# only, so the run goes in the background and this shell passes signals on; the run saves its state and
# exits with 128 + the signal number. TERM (`scontrol requeue`, preemption, scancel, the time limit
# itself) also reaches the run straight from Slurm, a second TERM changes nothing.
SLURM_TAIL = r"""restarts=${SLURM_RESTART_COUNT:-0}
echo "array task $SLURM_ARRAY_TASK_ID (job ${SLURM_JOB_ID:-none}, restart $restarts): ${run[*]}"
"${run[@]}" &
pid=$!
got=""
pass_on() { got=$1; interrupted=1; kill -s "$1" "$pid" 2>/dev/null || true; }
trap 'pass_on USR1' USR1
trap 'pass_on TERM' TERM
trap 'pass_on INT' INT
again=""
while :; do  # a trapped signal ends `wait` early: wait again, for the run's own exit status
    interrupted=0
    status=0
    wait "$pid" 2>/dev/null || status=$?
    # 127 on a second wait: the run had ended just before the signal, and code is its status
    [[ -n $again && $interrupted == 0 && $status == 127 ]] && break
    code=$status
    again=1
    [[ $interrupted == 1 ]] || break
done
if [[ $got == USR1 && $code == 138 && -n ${SLURM_JOB_ID:-} ]]; then
    # the time limit is near and the run has saved its state: back into the queue, to resume
    echo "array task $SLURM_ARRAY_TASK_ID: saved before the time limit, requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
"""


def slurm_seconds(limit: str) -> int | None:
    """A Slurm --time in seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for another text (e.g. infinite)."""
    days, _, rest = limit.rpartition("-")
    parts = rest.split(":")
    if not (days == "" or days.isdigit()) or not all(part.isdigit() for part in parts) or len(parts) > 3:
        return None
    numbers = [int(part) for part in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 3:
        return (numbers[0] * 60 + numbers[1]) * 60 + numbers[2]
    return numbers[0] * 60 + (numbers[1] if len(numbers) == 2 else 0)


def slurm_script(runs: list[Run], commands: list[list[str]], args: Args, job_name: str, out_dir: Path) -> str:
    """A job array script: task i runs commands[i] from the repository root, and resumes it after a requeue."""
    array = f"0-{len(runs) - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    options = [
        f"--job-name={job_name}",
        f"--array={array}",
        f"--output={out_dir}/%x_%A_%a.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{args.signal_seconds}",
        "--ntasks=1",
        f"--cpus-per-task={args.cpus_per_task}",
        f"--mem={args.mem}",
        f"--time={args.time}",
    ]
    options += [f"--gpus-per-task={args.gpus_per_task}"] if args.gpus_per_task > 0 else []
    options += [f"--partition={args.partition}"] if args.partition else []
    options += [f"--account={args.account}"] if args.account else []
    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {option}" for option in options),
        f"# written by benchmark/run.py: {len(runs)} runs, one per array task. A task that is requeued",
        "# (preempted, its node failed, or near its time limit) resumes its run: --run-name NAME --resume.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(ROOT))}",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
    ]
    lines += [args.setup] if args.setup else []
    lines += ['case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) run=({shlex.join(cmd)}) ;;" for i, cmd in enumerate(commands)]
    lines += ['  *) echo "no run has index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    return "\n".join(lines) + "\n" + SLURM_TAIL


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    args, extra = tyro.cli(Args, return_unknown_args=True, description=__doc__)
    clashes = [flag for flag in extra if flag.split("=")[0] in GRID_FLAGS]
    if clashes:
        sys.exit(f"error: {clashes[0]} is set per run; use --seeds, --env-ids or --num-tasks")
    clashes = [flag for flag in extra if flag.split("=")[0] in SLURM_FLAGS]
    if clashes and args.slurm:
        sys.exit(f"error: {clashes[0]} is set per array task (--run-name {{env}}__{{exp_name}}__{{seed}} --resume)")
    if args.slurm and not 0 < args.signal_seconds < 65536:
        sys.exit("error: --signal-seconds must be in 1..65535")
    limit = slurm_seconds(args.time)
    if args.slurm and limit is not None and limit < args.signal_seconds + 120:
        # Slurm may send the signal up to 60 s early: a task would save and requeue itself on every start
        print(
            f"warning: --time {args.time} leaves less than 2 min beyond --signal-seconds {args.signal_seconds}: "
            "a task may get USR1 (save, requeue) soon after it starts",
            file=sys.stderr,
        )
    if (args.preset is None) == (not args.scripts):
        sys.exit("error: give either --preset or --scripts")
    if args.preset is not None and (args.env_ids or args.num_tasks):
        sys.exit("error: a --preset sets its own envs; use --scripts with --env-ids / --num-tasks")

    plan = preset_plan(args.preset) if args.preset else [(s, args.env_ids, args.num_tasks, ()) for s in args.scripts]
    runs = grid(plan, args.seeds)
    scripts = list(dict.fromkeys(run.script for run in runs))
    missing = [script for script in scripts if not (ROOT / script).exists()]
    for script in missing:
        print(f"warning: {script} does not exist (yet)", file=sys.stderr)
    flags = {script: script_flags(script, extra) for script in scripts}  # each script's share of the pass-through flags
    commands = [command(run, args.python, flags[run.script]) for run in runs]

    names = [run_name(run, flags[run.script]) for run in runs]  # its log, and its runs/ folder in a Slurm array
    twice = [name for name in names if names.count(name) > 1]
    if twice:  # they would share a log, and in a Slurm array a run folder and its saved state
        sys.exit(
            f"error: two runs of the grid are named {twice[0]}: a seed or env id given twice, "
            "or one --exp-name passed to two scripts (run those as separate grids)"
        )
    no_resume = [s for s in scripts if s not in missing and not RESUME_FLAGS <= (declared_flags(ROOT / s) or set())]
    if args.slurm and no_resume:  # its tasks would fail at once on --run-name NAME --resume
        sys.exit(f"error: {no_resume[0]} has no --resume switch: a Slurm array task could not continue its run")

    if args.dry_run:
        print("\n".join(shlex.join(cmd) for cmd in commands))
    elif args.slurm:
        job_name = args.job_name or args.preset or Path(args.scripts[0]).stem
        out_dir = ROOT / args.slurm_dir
        out_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output folder
        path = out_dir / f"{job_name}.sbatch"
        commands = [slurm_command(run, args.python, flags[run.script]) for run in runs]
        path.write_text(slurm_script(runs, commands, args, job_name, out_dir))
        print(f"{len(runs)} array tasks written to {path}; submit with:\nsbatch {path}")
    else:
        if missing:
            sys.exit("error: missing scripts, nothing run")
        threads = args.threads or max(1, cores() // args.workers)
        sys.exit(1 if run_local(names, commands, ROOT / args.log_dir, args.workers, threads) else 0)
