"""Under mpiexec -n 2: the LeNet-5 plug-in (examples/cnn/lenet.py), with the built-in AdamW and
with the RAdam and Lion plug-ins (examples/optimizers/), trained K data-parallel steps equals K
steps of one process at the same global batch (float64, rtol 1e-10): the extension path keeps
the data-parallel guarantee of the built-in models."""
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.config import load_config
from ddp_scratch.parallel.world import Comm
from ddp_scratch.run.trainer import Options, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENET = [f"model.name={ROOT}/examples/cnn/lenet.py:LeNet5", "model.options.image=[12,12,1]",
         "model.options.channels=[3,4]", "model.options.kernel=3", "model.options.padding=1",
         "model.options.hidden=[8]"]
OPTIMS = {
    "adamw": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01", "optim.schedule=cosine",
              "optim.warmup_steps=3", "train.grad_clip=1.0"],
    "radam_plugin": [f"optim.name={ROOT}/examples/optimizers/radam.py:RAdam", "optim.lr=0.01",
                     "optim.weight_decay=0.01", "optim.options.decoupled_weight_decay=true"],
    "lion_plugin": [f"optim.name={ROOT}/examples/optimizers/lion.py:Lion", "optim.lr=0.001", "optim.weight_decay=0.1"],
}


def run(overrides, comm):
    cfg = load_config(None, ["data.name=synthetic", "data.n_samples=400", "data.n_features=144", "data.n_classes=4",
                             "train.dtype=float64", "train.batch_size=20", "train.max_steps=12", "train.epochs=2",
                             "data.tail=pad", "logging.progress=false", "train.check_every=4", *LENET, *overrides])
    out = tempfile.mkdtemp(prefix=f"lenet{MPI.COMM_WORLD.Get_rank()}")
    tr = Trainer(cfg, Options(out=out, quiet=True), comm=comm)
    init = B.to_numpy(tr.space.params).copy()        # a host copy (the params may live on a device)
    s = tr.run()
    return init, B.to_numpy(tr.space.params).copy(), s


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", list(OPTIMS))
def test_two_ranks_equal_one(name):
    world = MPI.COMM_WORLD
    init, dist, s = run(OPTIMS[name], Comm(timeout_s=60))
    assert s["world_size"] == world.Get_size() == 2 and s["model"].endswith("lenet.py:LeNet5")
    finals = world.allgather(dist)
    assert all(np.array_equal(finals[0], f) for f in finals)
    _, ref, s1 = run(OPTIMS[name], Comm(serial=True))
    err = np.abs(dist - ref).max() / np.abs(ref).max()
    print(f"LeNet-5 + {name}: 2 ranks vs 1 rank after {s['steps']} steps: max rel err {err:.2e}")
    np.testing.assert_allclose(dist, ref, rtol=1e-10, atol=1e-13)
    assert not np.allclose(dist, init)
    assert s["train_loss"] == pytest.approx(s1["train_loss"], rel=1e-10)
