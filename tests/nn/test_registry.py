"""Models by name, and the memory a model will need, known before anything is allocated (arrays on
the active array module: tests/nn/devices.py)."""
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT
from devices import dev
from ddp_scratch.config import load_config
from ddp_scratch.nn.registry import build_model, memory_estimate


@pytest.mark.parametrize("config, overrides, d_in, n_out", [
    ("mlp_digits.yaml", [], 64, 10),
    ("mlp_digits.yaml", ["model.hidden=[]", "train.dtype=float64", "optim.name=adam", "optim.amsgrad=true"], 64, 10),
    ("gpt_addition.yaml", [], 13, 13),
    ("gpt_addition.yaml", ["model.bias=false", "model.dropout=0.1", "optim.name=rmsprop",
                           "optim.momentum=0.9", "optim.centered=true"], 13, 13),
])
def test_a_declared_model_allocates_nothing_and_counts_like_the_built_one(config, overrides, d_in, n_out):
    cfg = load_config(f"{ROOT}/experiments/{config}", overrides)
    build_model(cfg, d_in, n_out, 0, build=False)       # module imports out of the measurement
    tracemalloc.start()
    dry = build_model(cfg, d_in, n_out, 0, build=False)
    est = memory_estimate(cfg, d_in, n_out, rows=16, eval_rows=16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    built = build_model(cfg, d_in, n_out, 0)
    assert dry.space.n_params == built.space.n_params
    assert peak < 200_000, f"declaring the model allocated {peak} bytes"
    it = np.dtype(cfg.train.dtype).itemsize
    assert est["params"] == built.space.params.nbytes == built.space.n_params * it
    assert est["grads"] == built.space.grads_full.nbytes


def test_the_estimate_covers_what_a_training_step_allocates():
    """The activation estimate is not below what the GPT's pools really hold after a step."""
    from ddp_scratch.nn.optim import build_optimizer
    cfg = load_config(f"{ROOT}/experiments/gpt_addition.yaml", ["model.dropout=0.1"])
    model = build_model(cfg, 13, 13, 0)
    opt = build_optimizer(cfg.optim, model.space)
    x = dev(np.random.default_rng(0).integers(0, 13, (8, 32)))
    model.space.zero_grad()
    model.loss(x, x, 1.0 / x.size)
    model.backward()
    model.space.finish_grads()
    opt.step(1e-3)
    act, tmp = model.pool_bytes()
    assert model.activation_bytes(8) >= act + tmp


def test_step_times_grow_instead_of_preallocating_max_steps():
    from ddp_scratch.study.metrics import StepTimes
    t = StepTimes()
    assert t.a.shape[0] == 1024
    for i in range(3000):
        t.add(0.001, 0.0, 0.002)
    assert t.n == 3000 and t.a.shape[0] == 4096 and t.rows().shape == (3000, 3)
    assert t.rate(10) == pytest.approx(10 / 0.002)
