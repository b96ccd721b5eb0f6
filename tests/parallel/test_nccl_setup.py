"""The NCCL transport in one process on one GPU (a 1-rank NCCL communicator is legal; two ranks
on one GPU are not): pointers, dtypes, streams and the side-stream buckets of the overlapped
reducer run for real, and the sum over one rank must leave every value as it was.

Skips without CuPy's NCCL bindings or a GPU, unless DDP_REQUIRE_GPU=1 makes that a failure.
The cross-rank sums are in tests/mpi/test_nccl.py (one GPU per rank).
"""
import os

import numpy as np
import pytest

from ddp_scratch import backend as B
from ddp_scratch.parallel.nccl import NcclAllReduce, NcclOverlappedAllReduce
from ddp_scratch.parallel.world import Comm


@pytest.fixture
def gpu_nccl():
    try:
        import importlib
        importlib.import_module("cupy.cuda.nccl")       # CuPy built without NCCL fails here
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        n, why = 0, f"CuPy with NCCL and a CUDA device are needed ({type(e).__name__}: {e})"
    else:
        why = "no CUDA device"
    if n == 0:
        if os.environ.get("DDP_REQUIRE_GPU") == "1":
            pytest.fail(why + " (DDP_REQUIRE_GPU=1)")
        pytest.skip(why)
    xp = B.use("cupy", device=0)
    comm = Comm(serial=True)
    comm.nccl = NcclAllReduce(comm)
    yield xp, comm
    B.use("numpy")


def test_one_rank_all_reduce_and_broadcast_keep_values(gpu_nccl):
    xp, comm = gpu_nccl
    for dt in ("float32", "float64", "float16"):
        a = xp.linspace(-3, 3, 4097).astype(dt)
        want = B.to_numpy(a).copy()
        comm.nccl.all_reduce_(a)
        comm.nccl.broadcast_(a, 0)
        B.synchronize()
        np.testing.assert_array_equal(B.to_numpy(a), want)
    with pytest.raises(TypeError):
        comm.nccl.all_reduce_(xp.zeros(3, dtype=xp.int16))


def test_overlapped_buckets_on_a_side_stream(gpu_nccl):
    from ddp_scratch.config import load_config
    from ddp_scratch.nn.registry import build_model
    xp, comm = gpu_nccl
    cfg = load_config(None, ["train.dtype=float64", "model.hidden=[64,32]"])
    model = build_model(cfg, 20, 5, seed=3)
    space = model.space
    rng = np.random.default_rng(0)
    x, y = xp.asarray(rng.normal(size=(16, 20))), xp.asarray(rng.integers(0, 5, 16))

    def grads(ov):
        space.zero_grad()
        if ov is not None:
            ov.begin()
        model.loss(x, y, 1 / 16)
        model.backward()
        space.finish_grads()
        if ov is not None:
            ov.finish()
        B.synchronize()
        return B.to_numpy(space.grads).copy()

    ref = grads(None)
    ov = NcclOverlappedAllReduce(comm, space, bucket_mb=0.01, first_bucket_mb=0.001)
    assert len(ov.buckets) >= 2
    grads(ov)                     # first step: learns write counts, reduces blocking
    got = grads(ov)               # then: events, side stream, one NCCL call per bucket
    assert len(ov.events) == len(ov.buckets) + 1
    np.testing.assert_array_equal(got, ref)
