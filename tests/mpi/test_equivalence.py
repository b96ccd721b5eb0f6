"""Under mpiexec -n 2: K data-parallel steps equal K steps of one process at the same global
batch (float64, rtol 1e-10), and every rank starts from identical parameters."""
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.parallel.world import Comm
from ddp_scratch.config import load_config
from ddp_scratch.run.trainer import Options, Trainer

OPTIMS = {
    "sgd_momentum": ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.001"],
    "adamw": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01", "optim.schedule=cosine",
              "optim.warmup_steps=3", "train.grad_clip=1.0"],
}


def run(overrides, comm):
    cfg = load_config(None, ["train.dtype=float64", "train.batch_size=50", "train.max_steps=25",
                             "train.epochs=5", "data.tail=pad", "model.hidden=[32,16]",
                             "logging.progress=false", "train.check_every=5", *overrides])
    out = tempfile.mkdtemp(prefix=f"eq{MPI.COMM_WORLD.Get_rank()}")
    tr = Trainer(cfg, Options(out=out, quiet=True), comm=comm)
    init = B.to_numpy(tr.space.params).copy()        # a host copy (the params may live on a device)
    s = tr.run()
    return init, B.to_numpy(tr.space.params).copy(), s


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", list(OPTIMS))
def test_two_ranks_equal_one(name):
    world = MPI.COMM_WORLD
    init, dist, s = run(OPTIMS[name], Comm(timeout_s=60))
    assert s["world_size"] == world.Get_size() == 2
    # initial parameters identical on all ranks (broadcast from rank 0)
    inits = world.allgather(init)
    assert all(np.array_equal(inits[0], i) for i in inits)
    finals = world.allgather(dist)
    assert all(np.array_equal(finals[0], f) for f in finals)
    _, ref, s1 = run(OPTIMS[name], Comm(serial=True))
    err = np.abs(dist - ref).max() / np.abs(ref).max()
    print(f"{name}: 2 ranks vs 1 rank after {s['steps']} steps: max rel err {err:.2e}")
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
    assert not np.allclose(dist, init)          # it did train
    assert s["train_loss"] == pytest.approx(s1["train_loss"], rel=1e-10)


@pytest.mark.mpi(min_size=2)
def test_uneven_split_of_the_global_batch():
    """A global batch of 7 over 2 ranks (4 + 3 rows) still equals one rank exactly."""
    o = ["optim.name=sgd", "optim.lr=0.2", "train.batch_size=7", "data.tail=drop"]
    _, dist, _ = run(o, Comm(timeout_s=60))
    _, ref, _ = run(o, Comm(serial=True))
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.mpi(min_size=2)
def test_gradient_accumulation_equals_the_full_batch():
    """3 micro-steps per rank without communication, then one all-reduce == one rank, one pass."""
    o = ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9"]
    _, dist, _ = run([*o, "comm.accumulate=3"], Comm(timeout_s=60))
    _, ref, _ = run(o, Comm(serial=True))
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("accumulate", [1, 2])
def test_bucketed_overlapped_all_reduce_equals_one_rank(accumulate):
    """Tiny buckets so that the MLP's gradients travel in several non-blocking pieces."""
    o = ["optim.name=adamw", "optim.lr=0.003", "model.hidden=[64,32,16]"]
    _, dist, s = run([*o, "comm.overlap=true", "comm.bucket_mb=0.002", "comm.first_bucket_mb=0.001",
                      f"comm.accumulate={accumulate}"], Comm(timeout_s=60))
    _, ref, _ = run(o, Comm(serial=True))
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
