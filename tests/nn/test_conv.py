"""The image layers (nn/conv.py) and the LeNet-5 plug-in (examples/cnn/lenet.py): hand-written
backward against float64 finite differences and torch autograd (max errors printed), max-pool
ties as torch breaks them, FLOPs counted from the GEMMs of a step, a step that allocates no
array, and a memory estimate that covers the workspaces. On the active array module
(tests/nn/devices.py)."""
import os
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, require_torch, step_memory
from devices import dev, host
from ddp_scratch import backend as B
from ddp_scratch.nn import batch_threads as BT
from ddp_scratch.config import load_config
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn.conv import Conv2d, Flatten, MaxPool2d
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.gradcheck import check_layer, check_model
from ddp_scratch.nn.layers import Activation
from ddp_scratch.nn.optim import Adam
from ddp_scratch.nn.registry import build_model, memory_estimate

sys.path.insert(0, os.path.join(ROOT, "examples", "cnn"))
from lenet import LeNet5, Options  # noqa: E402

LENET = os.path.join(ROOT, "examples", "cnn", "lenet.py") + ":LeNet5"


def report_ok(r):
    print(r.text())
    assert r.ok, r.failures
    return r


@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, hw", [
    (1, 2, 3, 1, 0, (5, 6)),
    (2, 3, 5, 1, 2, (6, 6)),            # LeNet's first layer: 'same' padding
    (3, 2, (3, 2), 2, (1, 0), (7, 6)),  # rectangular kernel and padding, stride 2, odd sizes
    (2, 2, 2, 3, 0, (8, 8)),            # stride beyond the kernel: inputs no window reads
    (2, 3, 1, 1, 0, (3, 3)),            # 1x1
])
def test_conv2d_against_finite_differences_and_torch(c_in, c_out, kernel, stride, padding, hw):
    space = ParamSpace("float64")
    layer = Conv2d(space, "c", c_in, c_out, kernel, stride, padding)
    x = np.random.default_rng(1).standard_normal((2, *hw, c_in))
    r = report_ok(check_layer(layer, space, x, entries=0))
    assert {row.what for row in r.rows} >= {"input", "c.W", "c.b"}


@pytest.mark.parametrize("bias, need_dx", [(False, True), (True, False)])
def test_conv2d_without_bias_or_input_gradient(bias, need_dx):
    space = ParamSpace("float64")
    layer = Conv2d(space, "c", 2, 3, 3, 1, 1, bias=bias, need_dx=need_dx)
    r = report_ok(check_layer(layer, space, np.random.default_rng(2).standard_normal((2, 5, 5, 2)), entries=0))
    inp = next(row for row in r.rows if row.what == "input")
    assert (inp.fd_rel is not None) == need_dx                  # the input gradient is checked iff computed
    assert (inp.note == "not computed: the layer was built with need_dx=False") == (not need_dx)
    assert ("c.b" in {row.what for row in r.rows}) == bias


@pytest.mark.parametrize("kernel, stride, hw", [(2, 2, (6, 6)), (2, 2, (7, 5)), (3, 2, (7, 7)), (2, 3, (8, 7)),
                                                (3, 1, (5, 4)), (1, 1, (3, 3))])
def test_maxpool_against_finite_differences_and_torch(kernel, stride, hw):
    x = np.random.default_rng(3).standard_normal((2, *hw, 3))
    report_ok(check_layer(MaxPool2d(kernel, stride, "float64"), ParamSpace("float64"), x, entries=0))


def test_maxpool_ties_go_to_the_first_maximum_as_in_torch():
    torch = require_torch()
    x = np.random.default_rng(4).integers(0, 3, (2, 7, 7, 3)).astype(np.float64)     # many ties
    dy = np.random.default_rng(5).standard_normal((2, 3, 3, 3))
    for k, s in ((2, 2), (3, 2)):
        pool = MaxPool2d(k, s, "float64")
        y = host(pool.forward(dev(x).copy())).copy()
        dx = host(pool.backward(dev(dy[:, :y.shape[1], :y.shape[2]]).copy()))
        xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        yt = torch.nn.functional.max_pool2d(xt, k, s)
        yt.backward(torch.tensor(dy[:, :y.shape[1], :y.shape[2]].transpose(0, 3, 1, 2)))
        err = np.abs(dx - xt.grad.numpy().transpose(0, 2, 3, 1)).max()
        print(f"pool {k}/{s} with ties: max abs err vs torch {err:.1e}")
        np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
        assert err == 0


def test_maxpool_backward_survives_an_in_place_relu_on_its_output():
    x = dev(np.random.default_rng(6).standard_normal((2, 6, 6, 2)))
    dy = dev(np.random.default_rng(7).standard_normal((2, 3, 3, 2)))
    pool = MaxPool2d(2, 2, "float64")
    pool.forward(x)
    want = host(pool.backward(dy.copy())).copy()
    relu = Activation("relu", "float64")
    relu.forward(pool.forward(x))            # changes the pooled output in place
    np.testing.assert_array_equal(host(pool.backward(dy.copy())), want)


def test_flatten():
    report_ok(check_layer(Flatten("float64"), ParamSpace("float64"), np.ones((2, 3, 4, 2)), entries=0))


# ----------------------------------------------------------------------------- LeNet-5

def test_lenet_small_against_finite_differences_and_torch():
    model, x, t = LeNet5.gradcheck_inputs(np.random.default_rng(0))
    report_ok(check_model(model, x, t, entries=0))


def test_lenet_full_size_against_torch():
    """The Fashion-MNIST configuration itself (28x28, 6 and 16 filters, 120-84-10), float64."""
    torch = require_torch()
    m = LeNet5(784, 10, Options(), dtype="float64", seed=3)
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((5, 784)), rng.integers(0, 10, 5)
    m.space.zero_grad()
    loss, _ = m.loss(*dev(x, t), 1 / 5)
    loss = float(loss)
    m.backward()
    m.space.finish_grads()
    params = {p.name: torch.tensor(host(p.data).copy(), requires_grad=True) for p in m.space.plist}
    lt = m.torch_twin(torch, params)(torch.tensor(x), torch.tensor(t), 1 / 5)
    lt.backward()
    theirs = np.concatenate([params[p.name].grad.numpy().ravel() for p in m.space.plist])
    err = np.abs(host(m.space.grads) - theirs).max() / np.abs(theirs).max()
    print(f"LeNet-5 28x28 ({m.space.n_params:,} parameters): loss {loss:.6f} vs torch {lt.item():.6f}, "
          f"gradient max rel err {err:.1e}")
    assert m.space.n_params == 61706
    assert abs(loss - lt.item()) < 1e-12 and err < 1e-10


class CountingXP:
    """The active array module with matmul counted: 2 * (output elements) * (inner dimension)."""

    def __init__(self):
        self.flops, self.xp = 0, B.xp

    def __getattr__(self, name):
        return getattr(self.xp, name)

    def matmul(self, a, b, out=None):
        self.flops += 2 * int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))) * \
            (a.shape[-2] if a.ndim > 1 else 1) * a.shape[-1] * (b.shape[-1] if b.ndim > 1 else 1)
        return self.xp.matmul(a, b, out=out)


def test_lenet_flops_are_the_gemms_of_one_step(monkeypatch):
    m = LeNet5(784, 10, Options(), dtype="float32")
    rng = np.random.default_rng(0)
    x, t = dev(rng.standard_normal((6, 784)).astype(np.float32), rng.integers(0, 10, 6))
    counter = CountingXP()
    monkeypatch.setattr(B, "xp", counter)
    m.space.zero_grad()
    m.loss(x, t, 1 / 6)
    m.backward()
    print(f"counted {counter.flops:,} FLOPs, analytic {m.flops_per_step(6):,} (6 rows)")
    assert counter.flops == m.flops_per_step(6)


@pytest.mark.parametrize("threads", [1, 2])
def test_lenet_train_step_allocates_no_arrays(threads):
    """Forward, backward and AdamW on 64 Fashion-sized rows: after warm-up nothing stays and no
    temporary as large as one feature map (64 x 28 x 28 x 6 float32 = 1.2 MB) appears; also with
    the batch split over 2 threads (nn/batch_threads.py: the chunks write into the same
    workspaces, and tracemalloc sees every thread's allocations)."""
    m = LeNet5(784, 10, Options(), dtype="float32")
    opt = Adam(m.space, 1e-3, weight_decay=1e-4, decoupled=True)
    rng = np.random.default_rng(0)
    x, t = dev(rng.standard_normal((64, 784)).astype(np.float32), rng.integers(0, 10, 64))

    def step():
        m.space.zero_grad()
        m.loss(x, t, 1 / 64)
        m.backward()
        m.space.finish_grads()
        opt.step(1e-3)
    BT.set_threads(threads)
    try:
        live, peak = step_memory(step)
        live20, peak20 = step_memory(step, warmup=0, steps=20 if threads == 1 else 8)
    finally:
        BT.set_threads(None)
    print(f"LeNet step on {threads} thread(s): temporaries peak {peak / 1024:.1f} KiB, live {live} B after 2 steps, "
          f"{live20} B after more")
    assert max(live, live20) < 8192        # array views (~100 B each) replaced per step, none accumulated
    assert max(peak, peak20) < 128 * 1024


def test_lenet_memory_estimate_covers_its_workspaces_and_declares_nothing():
    cfg = load_config(os.path.join(ROOT, "examples", "cnn", "lenet_fashion.yaml"), [f"model.name={LENET}"])
    est = memory_estimate(cfg, 784, 10, rows=32, eval_rows=50)
    m = build_model(cfg, 784, 10, 0)
    x, t = dev(np.zeros((32, 784), np.float32), np.zeros(32, np.int64))
    m.space.zero_grad()
    m.loss(x, t, 1 / 32)
    m.backward()
    held = sum(a.nbytes for layer in [m, *m.layers] for a in layer._ws.values())
    print(f"workspaces after a step of 32 rows: {held:,} B; activation_bytes(32) = {m.activation_bytes(32):,} B")
    assert held <= m.activation_bytes(32) <= 1.6 * held
    assert est["activations"] == m.activation_bytes(32) + m.activation_bytes(50)
    assert est["params"] == m.space.params.nbytes


def test_lenet_options_that_do_not_fit_the_data_are_one_line():
    cfg = load_config(os.path.join(ROOT, "examples", "cnn", "lenet_fashion.yaml"),
                      [f"model.name={LENET}", "model.options.image=[28,28,3]"])
    with pytest.raises(ConfigError, match=r"^model.options.image: 28x28x3 = 2352 values per row, but the data's rows "
                                          r"have 784 features$"):
        build_model(cfg, 784, 10, 0, build=False)
    cfg = load_config(os.path.join(ROOT, "examples", "cnn", "lenet_fashion.yaml"),
                      [f"model.name={LENET}", "model.options.kernel=13", "model.options.padding=0"])
    with pytest.raises(ConfigError, match=r"^model.options.kernel: 13 is too large for 28x28 images with padding 0 "
                                          r"and pool 2: expected 1 to 9 \(or model.options.pool 1 to 1\)$"):
        build_model(cfg, 784, 10, 0, build=False)


# ----------------------------------------------------------------------------- batch threads, layouts

def _run_layers(layers, space, x, threads):
    """Forward and backward through `layers` with the batch split over `threads` threads: every
    output, every input gradient and the flat gradient, as copies."""
    BT.set_threads(threads)
    try:
        space.zero_grad()
        outs, h = [], x
        for layer in layers:
            h = layer.forward(h)
            outs.append(h.copy())
        d = np.random.default_rng(11).standard_normal(h.shape).astype(h.dtype)
        for layer in reversed(layers):
            d = layer.backward(d)
            if d is not None:
                outs.append(d.copy())
        return outs + [space.grads.copy()]
    finally:
        BT.set_threads(None)


@pytest.mark.host_arrays("the batch split is the CPU-only path (nn/batch_threads.py): on a device every layer takes the plain path")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_threads_give_the_plain_result_bit_for_bit(monkeypatch, dtype):
    """The CPU fast path (nn/batch_threads.py: im2col, padding, bias, pooling split over the
    batch) against the plain call it replaces, on every layout and border case: 2 threads, and 3
    for chunks of unequal size (7 images)."""
    monkeypatch.setattr(BT, "MIN_WORK", 0)              # split even these small batches
    space = ParamSpace(dtype)
    layers = [Conv2d(space, "c1", 1, 3, 5, padding=2), MaxPool2d(2, dtype=dtype),          # patch-major, tiled pool
              Conv2d(space, "c2", 3, 4, 3, stride=2, padding=1), MaxPool2d(3, 1, dtype),   # pixel-major, overlaps
              Conv2d(space, "c3", 4, 2, 1, bias=False)]
    space.build(0)
    assert [layers[0].pixel_major, layers[2].pixel_major] == [False, True]
    x = np.random.default_rng(10).standard_normal((7, 12, 13, 1)).astype(dtype)
    plain = _run_layers(layers, space, x, 1)
    for threads in (2, 3):
        split = _run_layers(layers, space, x, threads)
        for a, b in zip(plain, split):
            np.testing.assert_array_equal(a, b)
    print(f"{dtype}: {len(plain)} arrays equal with 1, 2 and 3 threads")


@pytest.mark.host_arrays("the batch split is the CPU-only path (nn/batch_threads.py): on a device every layer takes the plain path")
def test_over_batch_covers_the_batch_once_and_raises_a_chunks_error(monkeypatch):
    monkeypatch.setattr(BT, "MIN_WORK", 0)
    BT.set_threads(3)
    try:
        for n in (1, 2, 3, 10):
            seen = np.zeros(n, int)

            def mark(lo, hi):
                seen[lo:hi] += 1
            BT.over_batch(n, mark, work=n)
            assert seen.tolist() == [1] * n

        def fail(lo, hi):
            if lo > 0:
                raise ValueError("chunk")
        with pytest.raises(ValueError, match="chunk"):
            BT.over_batch(9, fail, work=9)
    finally:
        BT.set_threads(None)


def test_conv_layouts_agree():
    """Pixel-major and patch-major im2col (chosen by the channel count) compute the same layer."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 9, 8, 3))
    results = []
    for pixel_major in (True, False):
        space = ParamSpace("float64")
        layer = Conv2d(space, "c", 3, 4, (3, 2), stride=2, padding=(1, 0))
        space.build(0)
        layer.pixel_major = pixel_major
        space.zero_grad()
        y = host(layer.forward(dev(x))).copy()
        dx = host(layer.backward(dev(np.ones_like(y)))).copy()
        results.append((y, dx, host(space.grads).copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_over_batch_in_a_forked_child_starts_its_own_pool(monkeypatch):
    """A child forked after the pool started has no pool threads: over_batch there must not wait
    on the parent's (it would hang)."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    monkeypatch.setattr(BT, "MIN_WORK", 0)
    BT.set_threads(2)
    try:
        BT.over_batch(4, lambda lo, hi: None, work=4)             # the parent's pool is running
        pid = os.fork()
        if pid == 0:                                              # the child: exit 0 only if it got through
            seen = np.zeros(4, int)

            def mark(lo, hi):
                seen[lo:hi] += 1
            BT.over_batch(4, mark, work=4)
            os._exit(0 if seen.tolist() == [1] * 4 else 1)
        for _ in range(200):                                      # 10 s at most
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("over_batch hung in a forked child")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        BT.set_threads(None)
