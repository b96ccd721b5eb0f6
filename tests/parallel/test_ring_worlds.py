"""The ring all-reduce beyond 2 ranks and under faults, each under its own mpiexec: float64
training at 3 ranks (a summation order that differs from MPI's) equal to MPI_Allreduce's
(tests/mpi/test_ring.py), its sums at 3 and 8 ranks (uneven and empty chunks; 8 oversubscribed:
correctness only; tests/scripts/ring_check.py), one rank (nothing to do), and a peer stuck while
the other waits inside the ring, which the watchdog must report like a hang of MPI_Allreduce."""
import os
import re
import sys
import time

import pytest

from conftest import ROOT, mpiexec, run_group

RING_TESTS = os.path.join(ROOT, "tests", "mpi", "test_ring.py")
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def under_mpiexec(n, *select, timeout=300):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "pytest", "--with-mpi", "-q", "-x",
           "-p", "no:cacheprovider", RING_TESTS, *select]
    r = run_group(cmd, timeout=timeout, cwd=ROOT, env=ENV)
    print(r.stdout[-4000:], r.stderr[-2000:])
    assert r.returncode == 0, f"mpiexec -n {n} pytest test_ring.py failed (exit {r.returncode})"
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_training_with_the_ring_at_three_ranks_equals_mpi_allreduce():
    under_mpiexec(3, "-k", "training_with_the_ring")


@pytest.mark.parametrize("ranks", [3, 8])
def test_ring_sums_equal_mpi_allreduce(ranks):
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, os.path.join(ROOT, "tests", "scripts", "ring_check.py")]
    r = run_group(cmd, timeout=120, cwd=ROOT, env=ENV)
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0 and f"equals MPI_Allreduce on {ranks} ranks" in r.stdout


def test_one_rank_is_a_no_op():
    import numpy as np
    from ddp_scratch.parallel.ring import RingAllReduce
    from ddp_scratch.parallel.world import Comm
    comm = Comm(serial=True)
    x = np.arange(10.0)
    RingAllReduce(comm, 10, x.dtype, "bf16", True, 2).all_reduce_(x)
    comm.use_ring(10, x.dtype)
    assert comm.ring is None and np.array_equal(x, np.arange(10.0))
    assert comm.bytes_per_step(80) == (0, "none")


FAULT = os.path.join(ROOT, "tests", "scripts", "fault.py")


def test_a_stuck_peer_inside_the_ring_ends_the_job(tmp_path):
    cmd = [mpiexec(), "-n", "2", sys.executable, FAULT, "sleep", "1", "3", "--", "train", "experiments/mlp_digits.yaml",
           "--quiet", "--set", "comm.timeout_s=3", "--set", "comm.algorithm=ring", "--set", "comm.compress=bf16",
           "--out", str(tmp_path / "out")]
    t0 = time.monotonic()
    r = run_group(cmd, timeout=60, cwd=ROOT, env=ENV)
    took = time.monotonic() - t0
    print(f"exit {r.returncode} after {took:.1f}s: {r.stderr.strip()[-600:]}")
    assert r.returncode != 0 and took < 3 + 20
    assert re.search(r"ring gradient all-reduce at step 4 did not complete within comm.timeout_s=3s: "
                     r"rank\(s\) \[1\] did not arrive", r.stderr)
