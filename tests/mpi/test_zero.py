"""Under mpiexec -n 2: ZeRO-1 (optim.zero: 1) trains to the parameters of one rank without it
(float64, rtol 1e-10), with half the optimizer state per rank, uneven slices, a step that
allocates nothing, and a checkpoint that holds the whole state."""
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.config import load_config
from ddp_scratch.parallel.world import Comm
from ddp_scratch.run import checkpoint as ckpt
from ddp_scratch.run.trainer import Options, Trainer

OPTIMS = {
    "sgd_momentum": ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.001",
                     "train.grad_clip=0.5"],
    "adamw": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01", "optim.schedule=cosine",
              "optim.warmup_steps=3", "train.grad_clip=1.0"],
}
# 64*32+32 + 32*15+15 + 15*10+10 = 2735 parameters: an odd count, so the two slices differ by one
BASE = ["train.dtype=float64", "train.batch_size=50", "train.max_steps=20", "train.epochs=5", "data.tail=pad",
        "model.hidden=[32,15]", "logging.progress=false", "train.check_every=5"]


def trainer(overrides, comm, out=None):
    cfg = load_config(None, [*BASE, *overrides])
    out = out or tempfile.mkdtemp(prefix=f"zero{MPI.COMM_WORLD.Get_rank()}")
    return Trainer(cfg, Options(out=out, quiet=True), comm=comm)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", list(OPTIMS))
def test_zero1_equals_one_rank_without_it(name):
    tr = trainer([*OPTIMS[name], "optim.zero=1"], Comm(timeout_s=60))
    assert tr.zero is not None and tr.zero.counts == [1368, 1367]
    s = tr.run()
    dist = B.to_numpy(tr.space.params).copy()
    finals = MPI.COMM_WORLD.allgather(dist)
    assert all(np.array_equal(finals[0], f) for f in finals)       # the all-gather left no rank behind
    ref_tr = trainer(OPTIMS[name], Comm(serial=True))
    s1 = ref_tr.run()
    ref = B.to_numpy(ref_tr.space.params)
    err = np.abs(dist - ref).max() / np.abs(ref).max()
    print(f"{name}: ZeRO-1 on 2 ranks vs 1 rank after {s['steps']} steps: max rel err {err:.2e}; "
          f"optimizer state per rank {s['optim_state_bytes_per_rank']} vs {s1['optim_state_bytes_per_rank']} bytes")
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
    assert s["train_loss"] == pytest.approx(s1["train_loss"], rel=1e-10)
    assert s["val_loss"] == pytest.approx(s1["val_loss"], rel=1e-10)
    arrays = 1 if name == "sgd_momentum" else 2
    assert s1["optim_state_bytes_per_rank"] == arrays * 2735 * 8
    assert s["optim_state_bytes_per_rank"] == arrays * 1368 * 8 and s["optim_zero"] == 1
    # clipping was active (the global norm of the slices' sums decided it)
    assert any(h["train_loss"] for h in s["history"])


@pytest.mark.mpi(min_size=2)
def test_checkpoint_holds_the_whole_state_and_resumes_without_zero():
    """The 2-rank ZeRO checkpoint equals the one a run without ZeRO writes (same arrays, same
    shape); 2 ranks with ZeRO continue it to the uninterrupted 2-rank run's parameters bit for
    bit, and one rank without ZeRO to the uninterrupted 1-rank run's (rtol 1e-10)."""
    world = MPI.COMM_WORLD
    o = OPTIMS["adamw"]
    out = world.bcast(tempfile.mkdtemp(prefix="zck") if world.rank == 0 else None)
    tr = Trainer(load_config(None, [*BASE, *o, "optim.zero=1"]), Options(out=out, quiet=True, stop_at_step=12),
                 comm=Comm(timeout_s=60))
    assert tr.run()["status"] == "stopped"
    if world.rank == 0:
        os.close(tr.lock)       # this process continues the run below: let go of OUT's lock
    ref = Trainer(load_config(None, [*BASE, *o]), Options(out=tempfile.mkdtemp(), quiet=True, stop_at_step=12),
                  comm=Comm(serial=True))
    ref.run()
    world.Barrier()
    arrays, meta = ckpt.load(os.path.join(out, "checkpoint.npz"))
    for k in ("m", "v"):
        assert arrays[f"opt.{k}"].shape == (2735,)
        np.testing.assert_allclose(arrays[f"opt.{k}"], B.to_numpy(getattr(ref.opt, k)), rtol=1e-10, atol=1e-16)
    import shutil
    again = out + ".2"
    if world.rank == 0:
        shutil.copytree(out, again)
    world.Barrier()
    cfg = load_config(None, [*BASE, *o, "optim.zero=1"])
    resumed = Trainer(cfg, Options(out=again, quiet=True, resume=True), comm=Comm(timeout_s=60))
    resumed.run()
    whole = trainer([*o, "optim.zero=1"], Comm(timeout_s=60))
    whole.run()
    assert np.array_equal(B.to_numpy(resumed.space.params), B.to_numpy(whole.space.params))
    if world.rank == 0:        # one rank, no ZeRO, 8 more steps == 20 steps at once
        cfg = load_config(None, [*BASE, *OPTIMS["adamw"]])
        more = Trainer(cfg, Options(out=out, quiet=True, resume=True), comm=Comm(serial=True))
        assert more.step == 12
        more.run()
        whole = trainer(OPTIMS["adamw"], Comm(serial=True))
        whole.run()
        np.testing.assert_allclose(B.to_numpy(more.space.params), B.to_numpy(whole.space.params), rtol=1e-10, atol=1e-13)
    world.Barrier()


@pytest.mark.mpi(min_size=2)
@pytest.mark.host_arrays("counts NumPy's host allocations (a device step's temporaries come from CuPy's pool)")
def test_a_zero_step_allocates_nothing():
    """85,002 float32 parameters: a temporary of the buffer would be 332 KiB, of a slice 166 KiB."""
    from conftest import step_memory
    tr = trainer([*OPTIMS["adamw"], "optim.zero=1", "train.dtype=float32", "model.hidden=[256,256]"],
                 Comm(timeout_s=60))
    live, peak = step_memory(lambda: tr.train_step(0, 0))
    print(f"ZeRO-1 step: temporaries peak {peak / 1024:.1f} KiB, live {live} B")
    assert live < 4096 and peak < 64 * 1024
