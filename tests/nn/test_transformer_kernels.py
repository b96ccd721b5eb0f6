"""nn/transformer_kernels.py: each fused kernel against the NumPy path it replaces (the same
call with kernels: numpy), in float32 and float64, on odd shapes, with and without bias and
dropout. Exact where the kernel does the same float operations in the same order; where it sums
rows sequentially (NumPy: pairwise) or takes exp/tanh elsewhere, within a stated tolerance.
The gradients themselves are checked on both paths in test_gpt.py (finite differences, torch)."""
import numpy as np
import pytest

from ddp_scratch.nn import jit, ops, transformer_kernels as K, transformer_ops as TO
from ddp_scratch.nn.flat import ParamSpace

pytestmark = pytest.mark.host_arrays("numba kernels run on host NumPy arrays only")

# relative to the reference's largest entry: float64 a few ulps of sums; float32 a few ulps too,
# and the float32 GELU's rational tanh within 3.5e-7 of tanh (measured worst: dh 1.2e-6)
TOL = {"float64": 1e-13, "float32": 2e-6}


@pytest.fixture(autouse=True)
def numba_available():
    if not jit._numba():
        pytest.skip("numba is not installed")
    before = jit.setting()
    yield
    jit.use(before)


def both(fn, *arrays):
    """fn(*copies) under kernels: numpy, then numba; returns the two lists of results (host copies)."""
    out = []
    for setting in ("numpy", "numba"):
        jit.use(setting)
        res = fn(*[a.copy() for a in arrays])
        out.append([np.array(r, copy=True) for r in res])
    return out


def close(what, got, want, dtype, exact=False):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(float(np.abs(want).max()), 1e-300)
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    print(f"{what} ({dtype}): max err {err:.2e} of max |ref| {scale:.2e}")
    if exact:
        assert np.array_equal(got, want), what
    else:
        assert err <= TOL[dtype], what


def params(dtype, **shapes):
    sp = ParamSpace(dtype)
    ps = {n: sp.param(n, s, "normal:0.5") for n, s in shapes.items()}
    sp.build(3)
    sp.zero_grad()
    return sp, ps


DTYPES = ["float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(dtype, bias):
    N, C = 37, 19
    rng = np.random.default_rng(0)
    x, dout = (rng.normal(size=(N, C)) * 3 + 1).astype(dtype), rng.normal(size=(N, C)).astype(dtype)

    def run(x, dout):
        sp, P = params(dtype, w=(C,), b=(C,))
        b = P["b"] if bias else None
        out, m, r = np.empty_like(x), np.empty(N, dtype), np.empty(N, dtype)
        TO.layernorm_forward(out, m, r, x, P["w"].data, None if b is None else b.data)
        dx = np.full_like(x, 0.25)                      # backward adds into dx
        TO.layernorm_backward(dx, dout, x, m, r, P["w"].data, P["w"], b, np.empty_like(x), np.empty_like(x))
        return out, m, r, dx, P["w"].grad, P["b"].grad if bias else np.zeros(1)
    ref, got = both(run, x, dout)
    for name, g, w in zip(("out", "mean", "rstd", "dx", "dw", "db"), got, ref):
        close(f"layernorm {name}", g, w, dtype)
    close("layernorm mean (NumPy's pairwise order)", got[1], ref[1], dtype, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [False, True])
def test_attention(dtype, dropout):
    Bn, H, T, hs = 3, 2, 7, 5
    C = H * hs
    rng = np.random.default_rng(1)
    qkv, dy = rng.normal(size=(Bn, T, 3 * C)).astype(dtype), rng.normal(size=(Bn, T, C)).astype(dtype)
    drop = ((rng.random((Bn, H, T, T)) > 0.3) / 0.7).astype(dtype) if dropout else None
    bias = TO.causal_bias(T, dtype)

    def run(qkv, dy):
        att, y, dqkv = np.empty((Bn, H, T, T), dtype), np.empty((Bn, T, C), dtype), np.empty_like(qkv)
        TO.attention_forward(y, att, qkv, H, bias, drop, np.empty_like(att))
        TO.attention_backward(dqkv, dy, qkv, att, H, np.empty_like(att), drop, np.empty_like(att))
        return y, att, dqkv
    ref, got = both(run, qkv, dy)
    for name, g, w in zip(("y", "att", "dqkv"), got, ref):
        close(f"attention {name}", g, w, dtype)
    assert not np.triu(got[1].reshape(-1, T, T), 1).any()         # the future gets exactly 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_gelu(dtype, bias):
    N, D = 13, 37
    rng = np.random.default_rng(2)
    h, dg = (rng.normal(size=(N, D)) * 2).astype(dtype), rng.normal(size=(N, D)).astype(dtype)
    b = rng.normal(size=D).astype(dtype) if bias else None

    def run(h, dg):
        sp, P = params(dtype, b=(D,))
        g, t = np.empty_like(h), np.empty_like(h)
        ops.gelu_forward(g, t, h, b)
        g2 = ops.gelu_from_tanh(np.empty_like(h), h, t)
        hh = h.copy()                                   # the NumPy backward overwrites h
        ops.gelu_backward(dg, hh, t, np.empty_like(h), P["b"] if bias else None)
        return g, t, h, g2, dg, P["b"].grad if bias else np.zeros(1)
    ref, got = both(run, h, dg)
    for name, g, w in zip(("g", "tanh", "h + b", "g recomputed", "dh", "db"), got, ref):
        close(f"gelu {name}", g, w, dtype)
    # from the same h and t, the same operations in the same order: bit for bit
    jit.use("numba")
    h, t = ref[2], ref[1]
    assert np.array_equal(ops.gelu_from_tanh(np.empty_like(h), h, t), ref[3])
    dh = ops.gelu_backward(dg.copy(), h.copy(), t, np.empty_like(h))
    jit.use("numpy")
    assert np.array_equal(dh, ops.gelu_backward(dg.copy(), h.copy(), t, np.empty_like(h)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_add_and_bias_grad_are_exact(dtype):
    N, C = 29, 11
    rng = np.random.default_rng(3)
    out, x, b = (rng.normal(size=s).astype(dtype) for s in ((N, C), (N, C), (C,)))
    drop = ((rng.random((N, C)) > 0.4) / 0.6).astype(dtype)
    for bb, dd in ((b, None), (None, None), (b, drop), (None, drop)):
        ref, got = both(lambda o, x: [TO.residual_add(o, bb, x, dd)], out, x)
        assert np.array_equal(got[0], ref[0])

    def grads(d):
        sp, P = params(dtype, b=(C,))
        TO.bias_grad(P["b"], d)
        TO.bias_grad(P["b"], d)                          # the second use adds
        return [P["b"].grad]
    ref, got = both(grads, out)
    close("bias grad", got[0], ref[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tied_first", [False, True])
def test_embedding_backward(dtype, tied_first):
    """Repeated ids sum; positions past T get exactly 0; with tied_first the head already wrote
    wte's gradient this step and the scatter adds onto it."""
    V, Tmax, Bn, T, C = 9, 11, 5, 7, 19
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 4, (Bn, T))                   # few ids: many repeats
    dout = rng.normal(size=(Bn, T, C)).astype(dtype)
    head = rng.normal(size=(V, C)).astype(dtype)

    def run(dout):
        sp, P = params(dtype, wte=(V, C), wpe=(Tmax, C))
        if tied_first:
            P["wte"].acc(head)
        TO.embedding_backward(dout, idx, P["wte"], P["wpe"], np.empty((Bn * T, C), dtype))
        return P["wte"].grad, P["wpe"].grad
    ref, got = both(run, dout)
    close("dwte", got[0], ref[0], dtype)
    close("dwpe", got[1], ref[1], dtype)
    assert not got[1][T:].any()


def test_kernel_scratch_is_made_once():
    a = K.scratch("t", (3, 4), "float32")
    assert K.scratch("t", (3, 4), "float32") is a and K.scratch("t", (3, 4), "float64") is not a
    assert K.consts("float32", 0, 1.5).dtype == np.float32


def test_the_gpt_launches_its_kernels_on_THREADS_and_gives_numba_its_setting_back(monkeypatch):
    from ddp_scratch.nn.gpt import GPT
    numba = jit._numba()
    jit.use("numba")
    seen, real = [], K.layernorm_fwd
    monkeypatch.setattr(K, "layernorm_fwd", lambda *a: (seen.append(numba.get_num_threads()), real(*a)))
    before = numba.get_num_threads()
    m = GPT(7, block_size=5, n_layer=1, n_head=2, d_model=8, dtype="float32", seed=0)
    x = np.zeros((2, 5), np.int64)
    m.loss(x, x, 0.1)
    m.backward()
    assert seen and set(seen) == {min(K.THREADS, before)}
    assert numba.get_num_threads() == before
