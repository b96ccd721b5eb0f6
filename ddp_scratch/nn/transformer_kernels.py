"""numba kernels for the GPT's elementwise and row-wise work (see nn/jit.py for how they run).

Each kernel does in one pass over its rows what the NumPy path in transformer_ops.py / ops.py /
gpt.py does in several: the callers there ask jit.active(size) and keep the NumPy code as the
reference that tests/nn/test_transformer_kernels.py compares against. The same float operations
in the same order as NumPy where that is possible; row sums (mean, variance, softmax
denominators) run sequentially here where NumPy sums pairwise, and exp/tanh come from libm, so
the results agree to a few ulps (the tests state their tolerances), not bit for bit.

Constants reach a kernel as an array `k` of the data's dtype (`consts`): a Python float literal
inside a kernel would turn float32 arithmetic into float64. Column sums (parameter gradients of
LayerNorm and biases) are taken in NCHUNK fixed blocks of rows, in parallel, then the blocks are
added in order: the result does not depend on the thread count.

Measured inside the GPT step of bench_gpt.py (4 layers, d_model 128, batch 32 x 64 tokens,
float32; benchmarks/gpt_profile.py; a LOADED 2-core machine, load 4-8, so ratios, not times):
  1 numba thread (BLAS 1):  GELU 58 -> 15 ms per step, LayerNorm 26 -> 13, attention's softmax
                            25 -> 16, whole step's non-GEMM work ~123 -> ~63 ms (GEMMs ~215-255)
  alone, 1 thread:          GELU forward 0.76 ms vs NumPy 3.9 (2048 x 512); GELU backward 0.36;
                            LayerNorm forward 0.24-0.40 vs 0.43-0.61, backward 0.31; softmax
                            shift/exp/normalise 0.36/0.71/0.26, backward 0.46 (128 x 64 x 64);
                            bias + residual 0.06; column sums 0.03 vs 0.06; embedding backward
                            in-step 0.7-0.9 ms vs NumPy's 1.2 (1.55 with 8 column blocks on 1
                            thread: hence one block per launching thread)
  2 numba threads (BLAS 2): every parallel launch waited ms for its descheduled second thread
                            (non-GEMM ~950 vs ~380 ms per step on the NumPy path): a quiet
                            machine has to tell (bench_gpt.py times both thread counts);
                            hence THREADS = 1 below.
Cross-entropy (0.2 % of the step) and the optimizer (1 %; nn/optim.py's own kernels) are not here.

Legend: N rows (B*T), C channels, D a row's width, R = B*H attention rows of T x T.
"""
import numpy as np

from . import jit
from .jit import kernel, prange

NCHUNK = 16
THREADS = 1
"""numba threads the GPT's forward and backward launch these kernels on (numba_threads()); None:
numba's own number (NUMBA_NUM_THREADS, the rank's BLAS threads). 1 because that is what paid here
(bench_gpt.py throughput, 2 BLAS threads, same run each): loaded 2-core machine, kernels on 1 numba
thread 1.14x torch, on 2 numba threads 0.53x, NumPy path 0.97x; quieter (load ~1, clean rounds),
1 thread 1.24x, 2 threads 0.35x, NumPy path 0.94x. The 2-layer addition GPT (tests/nn/test_gpt.py)
trained for over 7 minutes on 2 numba threads without finishing, 43 s on 1. bench_gpt.py times both."""


class numba_threads:
    """`with numba_threads():` the kernels launched inside run on THREADS numba threads (numba's
    setting is per launching thread: the optimizer's kernels after backward keep theirs)."""

    def __enter__(self):
        self.before = None
        if THREADS is not None and jit.active():
            nb = jit._numba()
            self.before = nb.get_num_threads()
            nb.set_num_threads(min(THREADS, self.before))
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            jit._numba().set_num_threads(self.before)
_CONSTS, _SCRATCH = {}, {}


def consts(dtype, *values):
    """The values as a cached array of `dtype` (made once per dtype and values)."""
    key = (np.dtype(dtype).str, values)
    a = _CONSTS.get(key)
    if a is None:
        a = _CONSTS[key] = np.array(values, dtype=dtype)
    return a


def scratch(name, shape, dtype):
    """A kernel's own scratch, made once per (name, shape, dtype): no allocation per step."""
    key = (name, shape, np.dtype(dtype).str)
    a = _SCRATCH.get(key)
    if a is None:
        a = _SCRATCH[key] = np.empty(shape, dtype)
    return a


def colsum_parts(a2):
    """(NCHUNK, D) partial scratch and (D,) result scratch for the column sums of a2 (N,D)."""
    return scratch("parts", (NCHUNK, a2.shape[1]), a2.dtype), scratch("colsum", (a2.shape[1],), a2.dtype)


@kernel
def colsum(out, a, part, k):
    """out (D,) = sum over rows of a (N,D); part (NCHUNK,D) scratch; k = [0]."""
    N, D = a.shape
    P = part.shape[0]
    rows = (N + P - 1) // P
    for p in prange(P):
        for j in range(D):
            part[p, j] = k[0]
        for i in range(p * rows, min(N, (p + 1) * rows)):
            for j in range(D):
                part[p, j] += a[i, j]
    for j in range(D):
        s = part[0, j]
        for p in range(1, P):
            s += part[p, j]
        out[j] = s


# ----------------------------------------------------------------------------- LayerNorm

@kernel
def layernorm_fwd(out, mean, rstd, x, w, b, has_b, k):
    """out = (x - mean) * rstd * w (+ b) per row of x (N,C); k = [0, C, eps, 1].

    Row sums in NumPy's pairwise order for C <= 128 (eight running sums over stride 8, added as
    ((0+1)+(2+3))+((4+5)+(6+7)), then the tail): the mean is NumPy's bit for bit, and the eight
    independent sums vectorise where one running sum (fastmath off) cannot: 0.45 vs 0.55 ms for
    2048 x 128 on one thread (loaded machine; NumPy's five passes 0.42)."""
    N, C = x.shape
    C8 = C - C % 8
    for i in prange(N):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = k[0]
        for j in range(0, C8, 8):
            a0 += x[i, j]
            a1 += x[i, j + 1]
            a2 += x[i, j + 2]
            a3 += x[i, j + 3]
            a4 += x[i, j + 4]
            a5 += x[i, j + 5]
            a6 += x[i, j + 6]
            a7 += x[i, j + 7]
        s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
        for j in range(C8, C):
            s += x[i, j]
        m = s / k[1]
        for j in range(C):
            out[i, j] = x[i, j] - m
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = k[0]
        for j in range(0, C8, 8):
            a0 += out[i, j] * out[i, j]
            a1 += out[i, j + 1] * out[i, j + 1]
            a2 += out[i, j + 2] * out[i, j + 2]
            a3 += out[i, j + 3] * out[i, j + 3]
            a4 += out[i, j + 4] * out[i, j + 4]
            a5 += out[i, j + 5] * out[i, j + 5]
            a6 += out[i, j + 6] * out[i, j + 6]
            a7 += out[i, j + 7] * out[i, j + 7]
        v = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
        for j in range(C8, C):
            v += out[i, j] * out[i, j]
        r = k[3] / np.sqrt(v / k[1] + k[2])
        mean[i], rstd[i] = m, r
        for j in range(C):
            y = out[i, j] * r * w[j]
            if has_b:
                y += b[j]
            out[i, j] = y


@kernel
def layernorm_bwd(dx, sums, dout, x, mean, rstd, w, part, k):
    """dx += rstd * (g - mean_C(g) - xhat * mean_C(g xhat)), g = dout * w; sums (2,C) <- the
    column sums of dout * xhat (dw) and dout (db). part (NCHUNK,2,C) scratch; k = [0, C]."""
    N, C = x.shape
    P = part.shape[0]
    rows = (N + P - 1) // P
    for p in prange(P):
        for j in range(C):
            part[p, 0, j] = k[0]
            part[p, 1, j] = k[0]
        for i in range(p * rows, min(N, (p + 1) * rows)):
            m, r = mean[i], rstd[i]
            s1, s2 = k[0], k[0]
            for j in range(C):
                xh = (x[i, j] - m) * r
                d = dout[i, j]
                part[p, 0, j] += d * xh
                part[p, 1, j] += d
                g = d * w[j]
                s1 += g
                s2 += g * xh
            m1, m2 = s1 / k[1], s2 / k[1]
            for j in range(C):
                xh = (x[i, j] - m) * r
                dx[i, j] += (dout[i, j] * w[j] - m1 - xh * m2) * r
    for q in range(2):
        for j in range(C):
            s = part[0, q, j]
            for p in range(1, P):
                s += part[p, q, j]
            sums[q, j] = s


# ----------------------------------------------------------------------------- attention softmax

# The forward softmax is two kernels around NumPy's exp: numba calls libm's expf one element at a
# time, which made a one-pass kernel cost 2-3x the NumPy path's exp alone; NumPy's SIMD exp over
# the whole (R,T,T) array, masked entries at -inf, is one cheap single-threaded pass.

@kernel
def causal_softmax_shift(att, k):
    """att (R,T,T) scores -> k[1] * scores - row max over j <= t; -inf above the diagonal.
    k = [0, scale, -inf]."""
    R, T, _ = att.shape
    for rt in prange(R * T):
        r, t = rt // T, rt % T
        mx = att[r, t, 0] * k[1]
        for j in range(1, t + 1):
            v = att[r, t, j] * k[1]
            if v > mx:
                mx = v
        for j in range(t + 1):
            att[r, t, j] = att[r, t, j] * k[1] - mx
        for j in range(t + 1, T):
            att[r, t, j] = k[2]


@kernel
def causal_softmax_norm(att, drop, p, has_drop, k):
    """att (R,T,T) holds exp(shifted scores), 0 above the diagonal -> divided by the row sums;
    with dropout p = att * drop as well. k = [0]."""
    R, T, _ = att.shape
    for rt in prange(R * T):
        r, t = rt // T, rt % T
        s = k[0]
        for j in range(t + 1):
            s += att[r, t, j]
        for j in range(t + 1):
            att[r, t, j] /= s
        if has_drop:
            for j in range(T):
                p[r, t, j] = att[r, t, j] * drop[r, t, j]


@kernel
def causal_softmax_bwd(datt, att, drop, has_drop, k):
    """datt (R,T,T) holds dp = dy v^T; in place: dpre = k[1] * att * (dp' - sum_j dp'_j att_j),
    dp' = dp * drop with dropout; 0 above the diagonal. k = [0, scale]."""
    R, T, _ = att.shape
    for rt in prange(R * T):
        r, t = rt // T, rt % T
        s = k[0]
        for j in range(t + 1):
            d = datt[r, t, j]
            if has_drop:
                d *= drop[r, t, j]
                datt[r, t, j] = d
            s += d * att[r, t, j]
        for j in range(t + 1):
            datt[r, t, j] = (datt[r, t, j] - s) * att[r, t, j] * k[1]
        for j in range(t + 1, T):
            datt[r, t, j] = k[0]


# ----------------------------------------------------------------------------- GELU (ops.py's tanh form)

# tanh(x) for float32 as Eigen's ptanh_float: x clamped to +-7.9 (tanh is 1 - 2e-7 there), then
# x P(x^2) / Q(x^2), P of degree 6, Q of degree 3: within 3.5e-7 of tanh over all float32 (measured
# against float64 tanh on 2M points of [-12, 12]). libm's tanhf, which numba calls one element at a
# time, made the fused GELU forward 2x SLOWER than NumPy's SIMD tanh (110 vs 52 ms per step at 1
# thread, loaded machine); plain arithmetic lets LLVM vectorize the loop. float64 keeps np.tanh.
TANH32 = (7.90531110763549805,
          -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
          1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03,
          1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


@kernel
def gelu_fwd(g, t, h, b, has_b, fast_tanh, k):
    """h (N,D) (+= b first) -> t = tanh(c (h + a h^3)), g = 0.5 h (1 + t).
    k = [a c, c, 1, 0.5, *TANH32]; fast_tanh: the rational tanh (float32), else np.tanh."""
    N, D = h.shape
    for i in prange(N):
        if has_b:
            for j in range(D):
                h[i, j] += b[j]
        for j in range(D):
            x = h[i, j]
            t[i, j] = (x * x * k[0] + k[1]) * x
        if fast_tanh:
            for j in range(D):
                u = min(max(t[i, j], -k[4]), k[4])
                u2 = u * u
                p = ((((((k[5] * u2 + k[6]) * u2 + k[7]) * u2 + k[8]) * u2 + k[9]) * u2 + k[10]) * u2 + k[11]) * u
                q = ((k[12] * u2 + k[13]) * u2 + k[14]) * u2 + k[15]
                t[i, j] = p / q
        else:
            for j in range(D):
                t[i, j] = np.tanh(t[i, j])
        for j in range(D):
            g[i, j] = (t[i, j] + k[2]) * h[i, j] * k[3]


@kernel
def gelu_recompute(g, h, t, k):
    """g = 0.5 h (1 + t) from the saved h and t. k = [a c, c, 1, 0.5]."""
    N, D = h.shape
    for i in prange(N):
        for j in range(D):
            g[i, j] = (t[i, j] + k[2]) * h[i, j] * k[3]


@kernel
def gelu_bwd(dg, db, h, t, part, has_b, k):
    """dg *= (1 + t) (0.5 + 0.5 c h (1 + 3a h^2) (1 - t)) in place; with has_b, db (D,) <- the
    column sums of the result (the bias gradient). part (NCHUNK,D) scratch.
    k = [0, 3a, 1, 0.5 c, 0.5]."""
    N, D = h.shape
    P = part.shape[0]
    rows = (N + P - 1) // P
    for p in prange(P):
        if has_b:
            for j in range(D):
                part[p, j] = k[0]
        for i in range(p * rows, min(N, (p + 1) * rows)):
            for j in range(D):
                x, th = h[i, j], t[i, j]
                w = ((x * x * k[1] + k[2]) * x * k[3] * (k[2] - th) + k[4]) * (th + k[2])
                d = dg[i, j] * w
                dg[i, j] = d
                if has_b:
                    part[p, j] += d
    if has_b:
        for j in range(D):
            s = part[0, j]
            for p in range(1, P):
                s += part[p, j]
            db[j] = s


# ----------------------------------------------------------------------------- residual stream, embedding

@kernel
def bias_residual(out, b, x, drop, has_b, has_drop):
    """out = (out + b) * drop + x over rows of out (N,C): a linear layer's bias, its dropout and
    the residual add."""
    N, C = out.shape
    for i in prange(N):
        for j in range(C):
            y = out[i, j]
            if has_b:
                y += b[j]
            if has_drop:
                y *= drop[i, j]
            out[i, j] = y + x[i, j]


@kernel
def embedding_bwd(dwte, dwpe, dout, idx, fresh_pe, nblocks, k):
    """dwte[idx[b,t]] += dout[b,t]; dwpe[t] (+)= sum_b dout[b,t]. dout (B,T,C); idx (B,T).
    Split over `nblocks` column blocks (the launching threads: 1 block = whole rows, read once in
    order): every block owns its columns of every row, so the scatter of repeated ids never races,
    and each element sums in batch order. k = [0]."""
    Bn, T, C = dout.shape
    W = (C + nblocks - 1) // nblocks
    for cb in prange(nblocks):
        c0, c1 = cb * W, min(C, (cb + 1) * W)
        for t in range(T):
            for c in range(c0, c1):
                if fresh_pe:
                    dwpe[t, c] = dout[0, t, c]
                else:
                    dwpe[t, c] += dout[0, t, c]
        for b in range(1, Bn):
            for t in range(T):
                for c in range(c0, c1):
                    dwpe[t, c] += dout[b, t, c]
        for b in range(Bn):
            for t in range(T):
                v = idx[b, t]
                for c in range(c0, c1):
                    dwte[v, c] += dout[b, t, c]
