"""Host round trips per step are a budget (the strict CuPy stand-in counts them; DDP_TEST_DEVICE=strict).

A device->host read stalls the GPU's queue until everything before it has run. One read per
training step is needed (the loss, correct count and stop flags that travel in the gradient
buffer's statistics slots, and the gradient norm); the optimizer needs none; an evaluation reads
its sums once, not once per batch."""
import os

import pytest

STRICT = os.environ.get("DDP_TEST_DEVICE") == "strict"
pytestmark = pytest.mark.skipif(not STRICT, reason="counts CuPy transfers: runs in the strict pass "
                                "(DDP_TEST_DEVICE=strict, part of make test)")

MODELS = {
    "mlp": ["data.name=synthetic", "data.n_samples=512", "model.hidden=[64,64]", "train.batch_size=64"],
    "mlp-clip-accumulate": ["data.name=synthetic", "data.n_samples=512", "model.hidden=[64]",
                            "train.batch_size=64", "train.grad_clip=0.5", "comm.accumulate=2"],
    "gpt": ["model.name=gpt", "data.name=addition", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
            "train.batch_size=16"],
}


def trainer(tmp_path, sets):
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import Options, Trainer
    cfg = load_config(None, sets + ["logging.progress=false", "optim.name=adamw"])
    return Trainer(cfg, Options(out=str(tmp_path), quiet=True), comm=Comm(serial=True))


@pytest.mark.parametrize("name", list(MODELS))
def test_one_host_read_per_training_step_none_in_the_optimizer(tmp_path, name):
    import cupy
    from ddp_scratch import backend as B
    assert B.on_gpu() and getattr(B.xp, "STRICT", False)
    tr = trainer(tmp_path, MODELS[name])
    for i in range(2):                       # warm-up: workspaces, first-use reads
        tr.train_step(0, i % tr.spe)
    cupy.transfers.reset(trace=True)
    steps = 5
    for i in range(steps):
        tr.train_step(0, (2 + i) % tr.spe)
    print(f"{name}: {cupy.transfers.d2h} device->host reads in {steps} steps: {cupy.transfers.where[:8]}")
    assert cupy.transfers.d2h <= steps, cupy.transfers.where
    cupy.transfers.reset(trace=True)
    tr.opt.step(1e-3)
    assert cupy.transfers.d2h == 0, cupy.transfers.where


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_an_evaluation_reads_its_sums_once_not_per_batch(tmp_path, name):
    import cupy
    tr = trainer(tmp_path, MODELS[name] + ["train.eval_batch=32"])
    split = "test"
    tr.task.evaluate(tr.model, split, tr.comm)                 # warm-up
    cupy.transfers.reset(trace=True)
    tr.task.evaluate(tr.model, split, tr.comm)
    print(f"{name}: evaluation of {split}: {cupy.transfers.d2h} reads: {cupy.transfers.where[:8]}")
    assert cupy.transfers.d2h <= 2, cupy.transfers.where
