"""ZeRO-1's optimizer side without MPI: slices of the flat buffers (SpaceShard) stepped by their
own optimizers give the update of one optimizer on the whole buffer, weight-decay masks cut
right at the slice edges; the slicing arithmetic and the memory estimate."""
import numpy as np
import pytest

from ddp_scratch.config import load_config
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.optim import build_optimizer
from jit_settings import kernels  # noqa: F401  (each test with the NumPy path and the numba kernels)
from ddp_scratch.nn.registry import memory_estimate
from ddp_scratch.parallel.zero import shard_counts

pytestmark = pytest.mark.host_arrays("steps NumPy buffers directly")


def space():
    s = ParamSpace("float64")
    s.param("w1", (7, 5), "normal:0.5")
    s.param("b1", (5,), "normal:0.5", decay=False)      # a no-decay hole in the middle
    s.param("w2", (5, 3), "normal:0.5")
    s.param("b2", (3,), "normal:0.5", decay=False)
    return s.build(seed=3)


def test_shard_counts_are_contiguous_and_differ_by_at_most_one():
    assert shard_counts(10, 3) == ([4, 3, 3], [0, 4, 7])
    assert shard_counts(58, 4) == ([15, 15, 14, 14], [0, 15, 30, 44])
    assert shard_counts(2, 3) == ([1, 1, 0], [0, 1, 2])      # more ranks than elements: one holds none


def test_decay_ranges_are_cut_to_the_slice():
    s = space()                              # decay on [0, 35) and [40, 55); 58 elements
    assert s.decay_ranges() == [(0, 35), (40, 55)]
    assert s.shard(30, 45).decay_ranges() == [(0, 5), (10, 15)]
    assert s.shard(36, 39).decay_ranges() == []
    assert s.shard(50, 58).decay_ranges() == [(0, 5)]


@pytest.mark.parametrize("sets", [
    ["optim.name=sgd", "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.1"],
    ["optim.name=adamw", "optim.weight_decay=0.1", "optim.amsgrad=true"],
    ["optim.name=rmsprop", "optim.momentum=0.5", "optim.centered=true", "optim.weight_decay=0.1"],
    ["optim.name=examples/optimizers/lion.py:Lion", "optim.weight_decay=0.1"],
], ids=["sgd", "adamw", "rmsprop", "lion"])
def test_slices_step_like_the_whole(sets):
    cfg = load_config(None, [*sets, "optim.lr=0.01", "optim.zero=1"]).optim
    whole, parts = space(), space()
    counts, displs = shard_counts(whole.n_params, 3)
    opt = build_optimizer(cfg, whole)
    shards = [parts.shard(d, d + c) for c, d in zip(counts, displs)]
    opts = [build_optimizer(cfg, sh) for sh in shards]
    for sh, o in zip(shards, opts):
        for name in o.state_names:
            assert getattr(o, name).size == sh.n_params          # state for the slice only
    rng = np.random.default_rng(0)
    for _ in range(4):
        g = rng.normal(size=whole.n_params)
        whole.grads[...] = g
        opt.step()
        for sh, o in zip(shards, opts):
            sh.grads[...] = g[sh.lo:sh.hi]
            o.step()
    print(f"{sets[0]}: max |difference| {np.abs(parts.params - whole.params).max():.1e}")
    np.testing.assert_array_equal(parts.params, whole.params)


def test_an_optimizer_that_does_not_say_it_is_elementwise_is_refused(tmp_path):
    p = tmp_path / "plain.py"
    p.write_text("from ddp_scratch.nn.optim import Optimizer\n\n\nclass Plain(Optimizer):\n"
                 "    def __init__(self, space, lr, weight_decay=0.0, maximize=False, options=None):\n"
                 "        super().__init__(space, lr, weight_decay, maximize)\n\n"
                 "    def step(self, lr=None):\n        self.p -= self.lr * self.g\n")
    cfg = load_config(None, [f"optim.name={p}:Plain", "optim.momentum=0", "optim.nesterov=false",
                             "optim.zero=1"]).optim
    with pytest.raises(ConfigError, match="does not declare elementwise = True"):
        build_optimizer(cfg, space().shard(0, 10))
    cfg.zero = 0
    build_optimizer(cfg, space())


def test_the_memory_estimate_counts_a_slice_of_the_state():
    cfg = load_config(None, ["optim.name=adamw"])
    full = memory_estimate(cfg, 64, 10, 32, 32)["optimizer"]
    half = memory_estimate(cfg, 64, 10, 32, 32, shards=2)["optimizer"]
    n = 64 * 128 + 128 + 128 * 10 + 10
    assert full == 3 * n * 4                               # m, v and the update scratch
    assert half == 4 * -(-n // 2) * 4                      # the same for half, and the gradient slice
