"""comm.backend: nccl under mpiexec -n 2.

Runs where CuPy's NCCL bindings import (the `gpu` extra plus nvidia-nccl-cu12). The unique-id
hand-over needs no GPU: NCCL's own get_unique_id on rank 0, carried by MPI. The all-reduce and
the training equivalence need one GPU per rank (NCCL refuses two ranks on one device), so they
skip on machines with fewer GPUs than ranks (DDP_REQUIRE_GPU=1 makes a machine with none a
failure). On one GPU, two ranks must be refused with a clear error instead.
"""
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

nccl = pytest.importorskip("cupy.cuda.nccl", reason="CuPy's NCCL bindings are not installed")

from ddp_scratch import backend as B  # noqa: E402
from ddp_scratch.parallel.nccl import nccl_unique_id  # noqa: E402
from ddp_scratch.parallel.world import Comm  # noqa: E402


def _gpus():
    import cupy
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def _need_gpu_per_rank():
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    have = min(world.allgather(_gpus()))
    if have == 0 and os.environ.get("DDP_REQUIRE_GPU") == "1":
        pytest.fail("no CUDA device visible (DDP_REQUIRE_GPU=1)")
    if have < local:   # a one-GPU machine cannot run a 2-rank NCCL world at all
        pytest.skip(f"NCCL needs one GPU per rank: {local} ranks on a node with {have} GPU(s)")


@pytest.mark.mpi(min_size=2)
def test_unique_id_from_rank_0_reaches_every_rank():
    comm = Comm(timeout_s=60)
    ids = MPI.COMM_WORLD.allgather(nccl_unique_id(comm, nccl))
    again = nccl_unique_id(comm, nccl)
    print(f"NCCL {nccl.get_version()}: unique id of {len(ids[0])} bytes on {len(ids)} ranks")
    assert len(ids[0]) == 128 and any(ids[0])
    assert all(i == ids[0] for i in ids)
    assert again != ids[0]          # a fresh bootstrap address each time


@pytest.mark.mpi(min_size=2)
def test_ranks_sharing_a_gpu_are_refused_by_name():
    """The single-GPU case (the device tool's machines): a clear error on every rank, no NCCL hang."""
    from ddp_scratch.errors import UserError
    if min(MPI.COMM_WORLD.allgather(_gpus())) != 1:
        pytest.skip("needs exactly one GPU visible to every rank")
    comm = Comm(timeout_s=60)
    B.use("cupy", device=comm.local_rank)
    try:
        with pytest.raises(UserError, match=r"one GPU per rank, but ranks \[0, 1\] all drive GPU"):
            comm.use_nccl()
    finally:
        B.use("numpy")


@pytest.mark.mpi(min_size=2)
def test_nccl_all_reduce_and_broadcast_on_device():
    _need_gpu_per_rank()
    comm = Comm(timeout_s=60)
    xp = B.use("cupy", device=comm.local_rank)
    comm.use_nccl()
    for dt in ("float32", "float64"):
        buf = xp.arange(1000, dtype=dt) * (comm.rank + 1)
        comm.all_reduce_sum_(buf)
        want = np.arange(1000, dtype=dt) * sum(r + 1 for r in range(comm.size))
        np.testing.assert_array_equal(B.to_numpy(buf), want)
        b = xp.full(77, comm.rank, dtype=dt)
        comm.broadcast_(b, root=1)
        assert float(b.min()) == float(b.max()) == 1.0
    B.use("numpy")


def _train(overrides, comm, backend):
    from ddp_scratch.config import load_config
    from ddp_scratch.run.trainer import Options, Trainer
    cfg = load_config(None, ["train.dtype=float64", "train.batch_size=50", "train.max_steps=12", "train.epochs=5",
                             "data.tail=pad", "model.hidden=[32,16]", "logging.progress=false",
                             "optim.name=adamw", "optim.lr=0.003", f"backend={backend}", *overrides])
    tr = Trainer(cfg, Options(out=tempfile.mkdtemp(prefix=f"nccl{MPI.COMM_WORLD.Get_rank()}"), quiet=True), comm=comm)
    tr.run()
    params = B.to_numpy(tr.space.params).copy()
    B.use("numpy")
    return params


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overlap", [False, True])
def test_nccl_training_equals_one_process(overlap):
    _need_gpu_per_rank()
    o = [f"comm.overlap={str(overlap).lower()}", "comm.bucket_mb=0.004", "comm.first_bucket_mb=0.001"]
    dist = _train(["comm.backend=nccl", *o], Comm(timeout_s=60), "cupy")
    ref = _train([], Comm(serial=True), "numpy")
    print(f"nccl overlap={overlap}: max rel err {np.abs(dist - ref).max() / np.abs(ref).max():.2e}")
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
