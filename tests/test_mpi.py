"""Runs every tests/mpi/test_*.py under `mpiexec -n 2` with pytest-mpi, one test per file here,
so the one test command covers the multi-rank suite too."""
import glob
import importlib.util
import os
import sys

import pytest

from conftest import ROOT, STRICT, mpiexec, run_group

FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "mpi", "test_*.py")))


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_under_mpiexec_2(path):
    if os.path.basename(path) == "test_nccl.py" and importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy (the gpu extra) is not installed: no NCCL bindings to test")
    if os.path.basename(path) == "test_nccl.py" and STRICT:
        pytest.skip("the strict CuPy stand-in has no NCCL")
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "pytest", "--with-mpi", "-q", "-x",
           "-p", "no:cacheprovider", path]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = run_group(cmd, timeout=600, cwd=ROOT, env=env)
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0, f"mpiexec -n 2 pytest {os.path.basename(path)} failed (exit {r.returncode})"
    assert " passed" in r.stdout and " failed" not in r.stdout
