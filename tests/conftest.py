"""The test session: a worker per core and one more for the suite and none for a single file (pytest.ini's
`-n auto`), one torch thread per process (the scripts the tests start inherit it), and a skip or, under CI (CI=true), a
failure for a test whose system part is missing."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: a worker's threads would fight the other's

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip where a system part (Slurm, OSMesa, wandb: .ci/run installs them) is missing; in CI, fail."""
    if IN_CI:
        pytest.fail(f"CI=true, and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_auto_num_workers(config):
    """One worker more than the cores: the Slurm test and the scripts' starts mostly wait, and the extra worker fills
    the cores meanwhile. A single test file runs in this process (benchmark/gpu_check.py runs one): starting workers
    would cost more."""
    if len(config.args) == 1 and config.args[0].split("::")[0].endswith(".py"):
        return 0
    return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) + 1


# The files by their cost, the costliest first, so that no worker is left alone with a long one at the end (pytest.ini:
# --no-loadscope-reorder keeps this order): the compile first (minutes where torch's compile cache is cold, as on a
# fresh machine), then the Slurm test (it mostly waits on its cluster).
COSTLIEST_FIRST = "fmer_speed slurm fmer_kitchen resume gpu_check video_track ablations fmer_multigoal fmer_runs sac fmer_math"
COSTLIEST_FIRST = [f"test_{name}.py" for name in COSTLIEST_FIRST.split()]


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: COSTLIEST_FIRST.index(item.path.name) if item.path.name in COSTLIEST_FIRST else 99)
