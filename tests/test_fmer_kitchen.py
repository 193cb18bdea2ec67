"""fmer_kitchen.py: the task sets, the real env's reward and termination, and a smoke run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

import fmer_kitchen as fk

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fmer_kitchen.py"


def run_script(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_one_error_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_task_sets_are_the_papers_nested_compositions():
    assert fk.TASK_SETS[1] == ["light switch"]
    assert fk.TASK_SETS[2] == ["light switch", "slide cabinet"]
    assert set(fk.TASK_SETS[4]) == {"light switch", "slide cabinet", "bottom burner", "microwave"}
    assert set(fk.TASK_SETS[7]) == set(OBS_ELEMENT_GOALS)  # N=7 is every subtask the env knows
    for small, large in [(1, 2), (2, 4), (4, 7)]:
        assert fk.TASK_SETS[large][:small] == fk.TASK_SETS[small]
    assert fk.resolve_tasks(4, None) == fk.TASK_SETS[4]
    assert fk.resolve_tasks(1, ["microwave", "hinge_cabinet"]) == ["microwave", "hinge cabinet"]  # --tasks wins


@pytest.mark.parametrize("tasks", [["toaster"], ["kettle", "kettle"]])
def test_bad_task_lists_exit(tasks):
    with pytest.raises(SystemExit, match="error:"):
        fk.resolve_tasks(1, tasks)


def test_run_names_keep_custom_task_sets_apart_from_the_papers():
    assert fk.env_label(fk.TASK_SETS[2]) == "FrankaKitchen-v1-N2"
    assert fk.env_label(["slide cabinet", "light switch"]) == "FrankaKitchen-v1-N2"  # the same set
    assert fk.env_label(["microwave", "kettle"]) == "FrankaKitchen-v1-microwave+kettle"
    assert "__" not in fk.env_label(["hinge cabinet", "top burner"])  # the run name's separator


@pytest.mark.slow
def test_unknown_task_name_exits_with_one_line(tmp_path):
    result = run_script(["--tasks", "microwave", "toaster"], tmp_path, timeout=120)
    assert_one_error_line(result, "'toaster'", "light switch")
    assert not (tmp_path / "runs").exists()


def complete(env, task):
    """Put the subtask's joints on their goal, as a scripted success."""
    data = env.unwrapped.data
    data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]


def test_reward_counts_each_subtask_once_and_all_done_terminates():
    tasks = fk.TASK_SETS[2]
    env = fk.make_env(tasks)()
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (59,)
    np.testing.assert_array_equal(info["completed"], [0, 0])
    still = np.zeros(9)
    _, reward, terminated, truncated, info = env.step(still)
    assert (reward, terminated, truncated) == (0.0, False, False)

    complete(env, "light switch")
    _, reward, terminated, _, info = env.step(still)
    assert (reward, terminated) == (1.0, False)
    np.testing.assert_array_equal(info["completed"], [1, 0])
    complete(env, "light switch")  # already done: it pays once
    _, reward, terminated, _, _ = env.step(still)
    assert (reward, terminated) == (0.0, False)

    complete(env, "slide cabinet")
    _, reward, terminated, _, info = env.step(still)
    assert (reward, terminated) == (1.0, True)
    np.testing.assert_array_equal(info["completed"], [1, 1])
    assert info["episode"]["r"] == info["completed"].sum() == 2  # episode return = subtasks completed


def test_time_limit_truncates_at_280_steps():
    env = fk.make_env(fk.TASK_SETS[1])()
    env.reset(seed=0)
    for step in range(1, fk.EPISODE_STEPS + 1):
        _, reward, terminated, truncated, _ = env.step(np.zeros(9))
        assert reward == 0.0 and not terminated
        assert truncated == (step == fk.EPISODE_STEPS)


def test_completions_survive_the_vector_autoreset():
    # The env clears its list of completed subtasks on reset, which SAME_STEP autoreset runs inside the
    # step that ends the episode: the flags must still reach final_info.
    envs = fk.make_vector_env(fk.TASK_SETS[1], num_envs=2)
    envs.reset(seed=0)
    complete(envs.envs[1], "light switch")
    _, rewards, terminations, _, infos = envs.step(np.zeros((2, 9)))
    np.testing.assert_array_equal(rewards, [0, 1])
    np.testing.assert_array_equal(terminations, [False, True])
    np.testing.assert_array_equal(infos["final_info"]["completed"][1], [1])
    np.testing.assert_array_equal(infos["completed"][1], [0])  # the new episode starts with nothing done
    assert [i for i, *_ in fk.finished_episodes(infos)] == [1]
    envs.close()


def test_describe_successes():
    completed = np.array([[1, 0], [1, 1], [0, 0]])
    assert fk.describe_successes(["light switch", "kettle"], completed) == "50.0% (light switch 2/3, kettle 1/3)"


def read_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def two_smoke_runs(tmp_path_factory):
    # One env: its first 280-step episode ends at step 280, updates run from step 250, one evaluation at the end.
    smoke = "--num-tasks 2 --total-timesteps 300 --learning-starts 250 --eval-frequency 300 --eval-episodes 1"
    smoke = [*smoke.split(), *"--log-frequency 10 --hidden-dim 16 --batch-size 16 --num-candidates 4 --ode-steps 2".split()]
    smoke.append("--save-model")
    runs = []
    for name in ("a", "b"):
        cwd = tmp_path_factory.mktemp(name)
        result = run_script(smoke, cwd)
        assert result.returncode == 0, result.stderr
        (run_dir,) = list((cwd / "runs").iterdir())
        runs.append((cwd, result, run_dir, read_scalars(run_dir)))
    return runs


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(two_smoke_runs):
    (*_, a), (*_, b) = two_smoke_runs
    compared = [tag for tag in a if tag.startswith(("losses/", "eval/", "charts/e", "charts/t", "charts/c"))]
    assert "losses/qf_loss" in compared and "eval/completion_rate" in compared
    for tag in compared:
        assert a[tag] == b[tag], tag


@pytest.mark.slow
def test_smoke_run_logs_completion_tags_and_its_checkpoint_evaluates(two_smoke_runs):
    tmp_path, result, run_dir, scalars = two_smoke_runs[0]
    assert "eval completion rate" in result.stdout and "slide cabinet 0/1" in result.stdout
    assert run_dir.name.startswith("FrankaKitchen-v1-N2__fmer_kitchen__1__")
    for tag in [
        "charts/tasks_completed",
        "charts/completion_rate",
        "eval/tasks_completed",
        "eval/completion_rate",
        "eval/successes/light_switch",
        "eval/successes/slide_cabinet",
        "losses/wcfm_loss",
        "losses/qf_loss",
    ]:
        assert tag in scalars, tag
    assert [step for step, _ in scalars["eval/completion_rate"]] == [300]
    assert [step for step, _ in scalars["charts/tasks_completed"]] == [280]  # the one finished episode
    for (_, done), (_, rate), (_, ret) in zip(
        scalars["charts/tasks_completed"], scalars["charts/completion_rate"], scalars["charts/episodic_return"]
    ):
        assert rate == done / 2 and ret == done

    assert not (run_dir / "state.pt").exists()  # a plain run writes no training state
    checkpoint_path = run_dir / "fmer_kitchen.fmer_model"
    assert torch.load(checkpoint_path, weights_only=True)["args"]["tasks"] == fk.TASK_SETS[2]
    # benchmark/evaluate.py runs the kitchen's evaluate on the checkpoint's tasks
    command = [sys.executable, str(ROOT / "benchmark" / "evaluate.py"), str(checkpoint_path), "--eval-episodes", "1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(fmer_kitchen.py) on ['light switch', 'slide cabinet']: completion rate" in result.stdout


@pytest.mark.slow
def test_a_stopped_job_continues_to_the_end_with_every_evaluation_once(tmp_path):
    """The parent's resume (tests/test_resume.py) in the kitchen: SIGTERM mid-episode (step 100 of a 280-step
    episode) saves the state, and the same command continues it to the end (one evaluation, there: a kitchen
    evaluation is 280 steps of 2 envs)."""
    from test_resume import DRIVER  # runs a script and signals it after a chosen number of training vector steps

    job = "--num-tasks 1 --total-timesteps 150 --learning-starts 50 --eval-frequency 150 --eval-episodes 2 --hidden-dim 16"
    job = [*job.split(), *"--num-candidates 4 --ode-steps 2 --batch-size 16 --log-frequency 25 --run-name job".split()]
    job += ["--resume", "--checkpoint-frequency", "1000"]
    driver = [sys.executable, "-c", DRIVER, "100", str(int(signal.SIGTERM)), str(SCRIPT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopped = subprocess.run([*driver, *job], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == "SIGTERM: stopped at step 100"
    assert torch.load(tmp_path / "runs/job/state.pt", weights_only=True)["counters"]["global_step"] == 100
    resumed = run_script(job, tmp_path)
    assert resumed.returncode == 0 and "resumed at step 100" in resumed.stdout, resumed.stderr[-3000:]
    logged = read_scalars(tmp_path / "runs/job")
    assert [step for step, _ in logged["eval/completion_rate"]] == [150]
    losses = [step for step, _ in logged["losses/qf_loss"]]
    assert losses == [50, 75, 100, 125, 150]  # no step twice, none lost
