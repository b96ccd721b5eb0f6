"""The strict device pass: training, 2-rank equivalence (host-staged MPI), resume, reliability and
the per-step host-read budget, run again with every process on the strict CuPy stand-in
(tests/strict_device: CuPy's refusals of host/device mixing, transfers counted). One test here
so that the one test command covers it; it runs its own pytest with DDP_TEST_DEVICE=strict."""
import os
import sys

import pytest

from conftest import ON_DEVICE, ROOT, run_group

PATHS = ["tests/device", "tests/run", "tests/test_mpi.py"]


@pytest.mark.skipif(ON_DEVICE, reason="already inside a device pass")
def test_the_suite_on_the_strict_cupy_stand_in():
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *PATHS]
    env = dict(os.environ, DDP_TEST_DEVICE="strict", WANDB_MODE="disabled")
    r = run_group(cmd, timeout=1200, cwd=ROOT, env=env)
    print(r.stdout[-8000:], r.stderr[-3000:])
    assert r.returncode == 0, "the strict device pass failed: DDP_TEST_DEVICE=strict pytest " + " ".join(PATHS)
    assert " passed" in r.stdout and " failed" not in r.stdout
