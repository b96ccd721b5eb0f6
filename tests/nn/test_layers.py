"""Every op's and the MLP's hand-written backward against central finite differences (float64)
and against PyTorch autograd (live when torch is installed, committed fixture always). On the
active array module (tests/nn/devices.py): the strict device pass runs them on the CuPy stand-in."""
import os

import numpy as np
import pytest

from conftest import FIXTURES, require_torch, step_memory
from devices import dev, host, xp
from ddp_scratch.nn.gradcheck import numgrad as _numgrad
from ddp_scratch.nn import ops
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.mlp import MLP
from oracle_mlp import ACTS, mlp_inputs, torch_mlp_grads

EPS = 1e-6


def numgrad(f, x):
    return _numgrad(f, x, EPS)


def rel_err(a, b):
    a, b = host(a), host(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("act", ACTS)
def test_activation_backward_finite_differences(act):
    fwd, bwd, saves = ops.ACTIVATIONS[act]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4)) * 2
    x[0, 0] = 1e-3      # near the kink of relu-like functions, still differentiable at +-EPS
    dy = rng.normal(size=x.shape)
    x, dy = dev(x, dy)

    ws = {}       # the layer's workspaces: kept from forward to backward, as Layer.buf does

    def scratch(key, dtype=None):
        return ws.setdefault(key, xp().full(x.shape, np.nan).astype(dtype or x.dtype))

    def f():
        return float((fwd(x.copy(), xp().empty_like(x), lambda k, d=None: xp().empty(x.shape, d or x.dtype)) * dy).sum())
    xin = x.copy()
    y = fwd(xin, xp().empty_like(x), scratch)
    dx = bwd(dy.copy(), xin if saves == "x" else y, scratch)
    err = rel_err(dx, numgrad(f, x))
    print(f"{act}: max rel err {err:.2e}")
    assert err < 1e-6


def test_linear_backward_finite_differences():
    space = ParamSpace("float64")
    W = space.param("W", (4, 3), "normal:1", 4, 3)
    b = space.param("b", (3,), "normal:1", 4)
    space.build(0)
    rng = np.random.default_rng(2)
    x, dy = dev(rng.normal(size=(6, 4)), rng.normal(size=(6, 3)))

    def f():
        return float((ops.linear_forward(x, W.data, b.data, xp().empty((6, 3))) * dy).sum())
    space.zero_grad()
    dx = ops.linear_backward(dy, x, W.data, W, b, xp().empty((6, 4)))
    for name, got, want in (("dx", dx, numgrad(f, x)), ("dW", W.grad, numgrad(f, W.data)),
                            ("db", b.grad, numgrad(f, b.data))):
        err = rel_err(got, want)
        print(f"linear {name}: max rel err {err:.2e}")
        assert err < 1e-6


@pytest.mark.parametrize("kind", ["xent", "mse"])
def test_loss_backward_finite_differences(kind):
    rng = np.random.default_rng(3)
    logits, t, scale = rng.normal(size=(5, 4)), np.array([0, 3, 1, 1, 2]), 0.2
    target = np.eye(4)[t]
    logits, t, target = dev(logits, t, target)
    if kind == "xent":
        f = lambda: ops.softmax_xent_forward(logits, t, scale)[0]  # noqa: E731
        d = ops.softmax_xent_backward(ops.softmax_xent_forward(logits, t, scale)[2], t, scale)
    else:
        f = lambda: ops.mse_forward(logits, target, scale)[0]  # noqa: E731
        d = ops.mse_backward(ops.mse_forward(logits, target, scale)[1], scale)
    err = rel_err(d, numgrad(f, logits))
    print(f"{kind}: max rel err {err:.2e}")
    assert err < 1e-6


def test_softmax_xent_is_stable_for_huge_logits():
    logits = dev(np.array([[1e4, 0.0, -1e4], [-5e3, 5e3, 0.0]]))
    loss, correct, probs = ops.softmax_xent_forward(logits, dev(np.array([0, 2])), 0.5)
    loss, correct, probs = float(loss), int(correct), host(probs)
    assert np.isfinite(loss) and np.isfinite(probs).all()
    assert loss == pytest.approx(0.5 * 5e3)     # row 2: lse = 5e3, target logit 0
    assert correct == 1


def test_ignored_targets_contribute_nothing():
    logits = dev(np.random.default_rng(0).normal(size=(3, 4)))
    l_all = float(ops.softmax_xent_forward(logits[:2], dev(np.array([1, 2])), 1.0)[0])
    l_ign = ops.softmax_xent_forward(logits, dev(np.array([1, 2, -1])), 1.0)
    assert float(l_ign[0]) == pytest.approx(l_all)
    d = host(ops.softmax_xent_backward(l_ign[2], dev(np.array([1, 2, -1])), 1.0))
    assert (d[2] == 0).all()


def mlp_grad(act, loss="xent", seed=7):
    x, t, dims = mlp_inputs()
    x, t = dev(x, t)
    m = MLP(dims[0], dims[-1], dims[1:-1], act, dtype="float64", seed=seed, loss=loss)
    m.space.zero_grad()
    L, _ = m.loss(x, t, 1.0 / len(t))
    m.backward()
    m.space.finish_grads()
    return m, x, t, dims, float(L), host(m.space.grads).copy()


@pytest.mark.parametrize("loss", ["xent", "mse"])
@pytest.mark.parametrize("act", ACTS)
def test_mlp_backward_finite_differences(act, loss):
    m, x, t, dims, L, g = mlp_grad(act, loss)
    num = numgrad(lambda: m.loss(x, t, 1.0 / len(t))[0], m.space.params)
    err = rel_err(g, num)
    print(f"MLP {act}/{loss}: max rel err {err:.2e}")
    assert err < 1e-6


@pytest.mark.parametrize("loss", ["xent", "mse"])
@pytest.mark.parametrize("act", ACTS)
def test_mlp_against_torch_fixture(act, loss):
    ref = np.load(os.path.join(FIXTURES, "mlp_reference.npz"))
    _, _, _, _, L, g = mlp_grad(act, loss)
    np.testing.assert_allclose(L, ref[f"mlp.{act}.{loss}.loss"], rtol=1e-8)
    np.testing.assert_allclose(g, ref[f"mlp.{act}.{loss}.grad"], rtol=1e-8, atol=1e-12)
    print(f"fixture {act}/{loss}: max abs err {np.abs(g - ref[f'mlp.{act}.{loss}.grad']).max():.2e}")


@pytest.mark.parametrize("loss", ["xent", "mse"])
@pytest.mark.parametrize("act", ACTS)
def test_mlp_against_live_torch(act, loss):
    torch = require_torch()
    m, x, t, dims, L, g = mlp_grad(act, loss)
    Lt, gt = torch_mlp_grads(torch, host(m.space.params).copy(), host(x), host(t), dims, act, loss)
    print(f"torch {act}/{loss}: loss err {abs(L - Lt):.2e}, grad max abs err {np.abs(g - gt).max():.2e}")
    np.testing.assert_allclose(L, Lt, rtol=1e-8)
    np.testing.assert_allclose(g, gt, rtol=1e-8, atol=1e-12)


def test_parameters_are_views_into_one_flat_buffer():
    m, *_ = mlp_grad("relu")
    for p in m.space.plist:
        assert xp().shares_memory(p.data, m.space.params) and xp().shares_memory(p.grad, m.space.grads)
    assert m.space.params.flags.c_contiguous and m.space.grads_full.flags.c_contiguous
    before = m.space.params.copy()
    m.space.params[:] = 0     # writes through the buffer reach every layer's view
    assert all((p.data == 0).all() for p in m.space.plist)
    m.space.params[:] = before


def test_backward_accumulates_until_zero_grad():
    m, x, t, dims, L, g = mlp_grad("tanh")
    m.loss(x, t, 1.0 / len(t))
    m.backward()      # no zero_grad: a second micro-step adds
    m.space.finish_grads()
    np.testing.assert_allclose(host(m.space.grads), 2 * g, rtol=1e-12)


def test_init_is_seeded_and_schemes_differ():
    a = MLP(64, 10, [32], "relu", dtype="float64", seed=5).space.params
    b = MLP(64, 10, [32], "relu", dtype="float64", seed=5).space.params
    c = MLP(64, 10, [32], "relu", dtype="float64", seed=6).space.params
    assert (a == b).all() and not (a == c).all()
    he = MLP(400, 10, [300], "relu", init="he", dtype="float64").layers[0].W.data
    xa = MLP(400, 10, [300], "tanh", init="xavier", dtype="float64").layers[0].W.data
    assert float(he.std()) == pytest.approx(np.sqrt(2 / 400), rel=0.05)
    assert float(xa.std()) == pytest.approx(np.sqrt(2 / 700), rel=0.05)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("optim", ["sgd", "adamw", "rmsprop"])
def test_mlp_train_step_allocates_no_arrays(act, optim):
    """The hot path reuses its buffers: after warm-up, two whole train steps (forward, backward,
    finish, optimizer) leave no live bytes behind and never hold a temporary as large as one
    activation (256 x 1024 float64 = 2 MiB; a bool mask of one is 256 KiB). NumPy reports every
    array buffer to tracemalloc; what remains is its ufunc iterator buffer (8192 elements)."""
    from ddp_scratch.nn.optim import SGD, Adam, RMSProp
    m = MLP(100, 10, [1024, 1024], act, dtype="float64", seed=0)
    opt = {"sgd": lambda s: SGD(s, 0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
           "adamw": lambda s: Adam(s, 1e-3, weight_decay=0.01, decoupled=True),
           "rmsprop": lambda s: RMSProp(s, 1e-3, momentum=0.9, centered=True)}[optim](m.space)
    rng = np.random.default_rng(0)
    x, t = dev(rng.standard_normal((256, 100)), rng.integers(0, 10, 256))

    def step():
        m.space.zero_grad()
        m.loss(x, t, 1 / 256)
        m.backward()
        m.space.finish_grads()
        opt.step(1e-3)
    live, peak = step_memory(step)
    print(f"{act}/{optim}: temporaries peak {(peak) / 1024:.1f} KiB, live {live} B")
    assert live < 1024
    assert peak < 128 * 1024
