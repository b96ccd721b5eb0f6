"""Under mpiexec -n 2: K data-parallel GPT steps equal the same K steps of one process fed the
whole global batch (float64, rtol 1e-10) - on the addition task, on a text file, with the
overlapped bucketed all-reduce (the tied embedding is written twice per step), and with dropout
(masks keyed by global row, so the split of the batch does not change them)."""
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.parallel.world import Comm
from ddp_scratch.config import load_config
from ddp_scratch.data.sharding import rank_bounds
from ddp_scratch.nn.gpt import GPT
from ddp_scratch.run.trainer import Options, Trainer

BASE = ["model.name=gpt", "model.n_layer=2", "model.n_head=2", "model.d_model=16", "model.block_size=16",
        "train.dtype=float64", "train.epochs=0", "train.max_steps=6", "train.steps_per_epoch=3",
        "train.eval_every=3", "train.check_every=2", "train.grad_clip=0.5", "logging.progress=false",
        "optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.1", "optim.schedule=cosine",
        "optim.warmup_steps=2"]


def run(overrides, comm):
    cfg = load_config(None, [*BASE, *overrides])
    out = tempfile.mkdtemp(prefix=f"gpteq{MPI.COMM_WORLD.Get_rank()}")
    tr = Trainer(cfg, Options(out=out, quiet=True), comm=comm)
    init = B.to_numpy(tr.space.params).copy()        # a host copy (the params may live on a device)
    s = tr.run()
    return init, B.to_numpy(tr.space.params).copy(), s


def same_as_one_rank(overrides, name):
    world = MPI.COMM_WORLD
    init, dist, s = run(overrides, Comm(timeout_s=60))
    assert s["world_size"] == world.Get_size() == 2
    finals = world.allgather(dist)
    assert all(np.array_equal(finals[0], f) for f in finals)
    _, ref, s1 = run(overrides, Comm(serial=True))
    err = np.abs(dist - ref).max() / np.abs(ref).max()
    print(f"{name}: 2 ranks vs 1 rank after {s['steps']} steps: max rel err {err:.2e}")
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
    assert not np.allclose(dist, init)
    for k in ("train_loss", "val_loss"):
        assert s[k] == pytest.approx(s1[k], rel=1e-10)
    return s, s1


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("batch", [6, 7])          # 7 rows: 4 on rank 0, 3 on rank 1
def test_addition_two_ranks_equal_one(batch):
    s, s1 = same_as_one_rank(["data.name=addition", f"train.batch_size={batch}"], f"addition batch {batch}")
    assert s["exact_match"] == s1["exact_match"] and s["val_exact_match"] == s1["val_exact_match"]


@pytest.mark.mpi(min_size=2)
def test_text_two_ranks_equal_one():
    path = os.path.join(tempfile.mkdtemp(prefix=f"gpttext{MPI.COMM_WORLD.Get_rank()}"), "text.txt")
    with open(path, "w", encoding="utf-8") as f:         # the same text on both ranks
        f.write("".join(f"{i} green bottles, hanging on the wall.\n" for i in range(200, 0, -1)))
    same_as_one_rank(["data.name=text", f"data.path={path}", "train.batch_size=6"], "text")


@pytest.mark.mpi(min_size=2)
def test_overlapped_bucketed_all_reduce_equals_one_rank():
    same_as_one_rank(["data.name=addition", "train.batch_size=6", "comm.overlap=true",
                      "comm.bucket_mb=0.002", "comm.first_bucket_mb=0.001"], "addition, overlapped buckets")


@pytest.mark.host_arrays
@pytest.mark.mpi(min_size=2)
def test_dropout_gradients_do_not_depend_on_the_split():
    """Each rank: its rows with row0 = its first global row; summed = the whole batch on one rank."""
    world = MPI.COMM_WORLD
    Bg, T = 5, 8
    m = GPT(vocab_size=9, block_size=T, n_layer=2, n_head=2, d_model=8, dropout=0.25, dtype="float64", seed=4)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 9, (Bg, T)), rng.integers(0, 9, (Bg, T))
    lo, hi = rank_bounds(Bg, world.Get_rank(), world.Get_size())
    m.space.zero_grad()
    m.set_step(11, row0=lo)
    loss, _ = m.loss(idx[lo:hi], tgt[lo:hi], 1.0 / (Bg * T))
    m.backward()
    m.space.finish_grads()
    world.Allreduce(MPI.IN_PLACE, m.space.grads, op=MPI.SUM)
    loss = world.allreduce(loss)
    dist = B.to_numpy(m.space.grads).copy()
    m.space.zero_grad()
    m.set_step(11, row0=0)
    ref_loss, _ = m.loss(idx, tgt, 1.0 / (Bg * T))
    m.backward()
    m.space.finish_grads()
    err = np.abs(dist - m.space.grads).max() / np.abs(m.space.grads).max()
    print(f"dropout: 2 ranks vs 1 rank gradient max rel err {err:.2e}")
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dist, m.space.grads, rtol=1e-10, atol=1e-14)
