"""The test session: one worker per core for the suite and none for a single file (pytest.ini's `-n auto`), one torch
thread per process (the scripts the tests start inherit it), and a skip or, under CI (CI=true), a failure for a test
whose system part is missing."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: a worker's threads would fight the other's

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip where a system part (Slurm, OSMesa, wandb: .ci/run installs them) is missing; in CI, fail."""
    if IN_CI:
        pytest.fail(f"CI=true, and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_xdist_auto_num_workers(config):
    """A single test file runs in this process (benchmark/gpu_check.py runs one): starting workers would cost more."""
    return 0 if len(config.args) == 1 and config.args[0].split("::")[0].endswith(".py") else None
