"""The MLP's elementwise kernels (nn/ops.py) against the NumPy path they replace: ReLU backward
and the bias add bit for bit (ReLU forward and the bias gradient stay NumPy: their kernels did not
pay, see ops.py; the ReLU test still runs the forward both ways), softmax cross-entropy (forward
and backward) to float rounding; float32 and float64, odd shapes, signed zeros, NaN and
infinities where they matter, ignored targets (-1). (test_layers.py runs the MLP
against torch and its allocation check with the kernels forced too.)"""
import numpy as np
import pytest

from ddp_scratch.nn import jit, ops

pytestmark = [pytest.mark.host_arrays("numba kernels run on host NumPy arrays only"),
              pytest.mark.skipif(not jit._numba(), reason="numba does not import here")]
DTYPES = ["float32", "float64"]
SHAPES = [(37, 1029), (3, 5), (1, 1)]


@pytest.fixture
def setting():
    before = jit.setting()
    yield jit.use
    jit.use(before)


def both(setting, fn, *arrays):
    """fn on copies of `arrays`, once with the NumPy path and once with the kernels."""
    out = []
    for kind in ("numpy", "numba"):
        setting(kind)
        copies = [a.copy() for a in arrays]
        out.append((fn(*copies), copies))
    return out


def same_bits(a, b):
    """Equal to the bit: -0.0 is not 0.0 here, and a NaN equals the same NaN."""
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


def awkward(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    specials = np.array([0.0, -0.0, np.nan, np.inf, -np.inf], dtype=dtype)
    flat[:min(flat.size, 5)] = specials[:min(flat.size, 5)]
    return x


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")      # NumPy's inf * 0
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_and_backward_match_bit_for_bit(dtype, shape, setting):
    x = awkward(shape, dtype)
    (a, _), (b, _) = both(setting, ops.relu_forward, x)
    same_bits(a, b)
    dy = awkward(shape, dtype, seed=1)[::-1].copy()        # specials against other y values
    ws = {}

    def bwd(dy, y):
        return ops.relu_backward(dy, y, lambda k, d=None: ws.setdefault(k, np.empty(shape, d or dtype)))
    (a, _), (b, _) = both(setting, bwd, dy, a)
    same_bits(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_add_matches_bit_for_bit(dtype, shape, setting):
    rng = np.random.default_rng(2)
    x, W = rng.standard_normal((shape[0], 7)).astype(dtype), rng.standard_normal((7, shape[1])).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    out = np.empty(shape, dtype)
    (a, _), (c, _) = both(setting, ops.linear_forward, x, W, b, out)
    same_bits(a, c)


def xent_case(dtype, n, v, ignore, seed=4):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((n, v))).astype(dtype)
    t = rng.integers(0, v, n)
    if ignore:
        t[::3] = -1
    return logits, t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, v, ignore", [(257, 10, False), (64, 3, True), (33, 32, True), (5, 130, True), (1, 1, False)])
def test_softmax_xent_matches_to_rounding(dtype, n, v, ignore, setting):
    logits, t = xent_case(dtype, n, v, ignore)
    scale = 1.0 / n
    res = []
    for kind in ("numpy", "numba"):
        setting(kind)
        probs = np.empty_like(logits)
        loss, correct, p = ops.softmax_xent_forward(logits, t, scale, out=probs)
        assert p is probs and isinstance(loss, float) and isinstance(correct, int)
        d = ops.softmax_xent_backward(p.copy(), t, scale)
        res.append((loss, correct, p.copy(), d))
    (l0, c0, p0, d0), (l1, c1, p1, d1) = res
    tol = dict(float32=1e-6, float64=1e-14)[dtype]
    err = max(abs(l1 - l0) / max(abs(l0), 1e-300), np.abs(p1 - p0).max(), np.abs(d1 - d0).max() / scale)
    print(f"softmax-xent {dtype} {n}x{v} ignore={ignore}: loss {l0:.6g} vs {l1:.6g}, max err {err:.1e}")
    assert c1 == c0
    assert l1 == pytest.approx(l0, rel=10 * tol)
    np.testing.assert_allclose(p1, p0, rtol=4 * tol, atol=tol)
    np.testing.assert_allclose(d1, d0, rtol=4 * tol, atol=tol * scale)
    if ignore:
        assert not d1[t < 0].any()


def test_softmax_xent_kernel_gives_a_nan_loss_for_a_nan_logit(setting):
    logits, t = xent_case("float32", 8, 4, False)
    logits[3, 2] = np.nan
    setting("numba")
    loss, _, _ = ops.softmax_xent_forward(logits, t, 0.125, out=np.empty_like(logits))
    assert np.isnan(loss)


# test_layers.py's MLP checks with every kernel forced (kernels: numba at every size)
@pytest.mark.parametrize("loss", ["xent", "mse"])
def test_the_mlp_with_kernels_matches_torch_and_finite_differences(loss, setting):
    import test_layers as L
    setting("numba")
    L.test_mlp_against_torch_fixture("relu", loss)
    L.test_mlp_backward_finite_differences("relu", loss)
    L.test_softmax_xent_is_stable_for_huge_logits()
    L.test_ignored_targets_contribute_nothing()


def test_an_mlp_train_step_with_kernels_allocates_no_arrays(setting):
    import test_layers as L         # (Adam's and RMSProp's fused steps: test_optim_kernels.py)
    setting("numba")
    L.test_mlp_train_step_allocates_no_arrays("relu", "sgd")
