"""Pure forward/backward pairs. Each backward sits right under its forward.

Conventions: shapes in comments use N = rows (batch, or batch*time), D_in/D_out = features,
V = classes. A backward may overwrite the incoming gradient `dy` in place (it is a workspace that
nobody reads afterwards) and returns the gradient with respect to the forward's input.
"""
import math

from .. import backend as B
from . import jit
from .jit import prange

# ----------------------------------------------------------------------------- linear
# y = x @ W + b            x (N, D_in), W (D_in, D_out), b (D_out,) -> y (N, D_out)


def linear_forward(x, W, b, out):
    B.xp.matmul(x, W, out=out)
    if b is not None:
        if jit.active(out.size) and out.ndim == 2 and out.flags.c_contiguous:
            _add_row(out, b)
        else:
            out += b
    return out


@jit.kernel
def _add_row(out, b):
    """out += b, rows in parallel (bias add): 256 x 1024 float32 in 0.025 ms on one numba thread,
    0.019 on two, against NumPy's 0.056."""
    for r in prange(out.shape[0]):
        o = out[r]
        for j in range(o.shape[0]):
            o[j] += b[j]


def linear_backward(dy, x, W, dW_param, db_param, dx_out=None, work=None):
    """dW += x^T dy; db += sum_N dy; returns dx = dy W^T (skipped when dx_out is None)."""
    dW_param.acc_matmul(x.T, dy, work)
    if db_param is not None:
        # NumPy's column sums: a numba kernel (blocks of columns, row after row) took 0.048 ms on
        # one thread, 0.031 on two, against 0.040 here for 256 x 1024 float32: not worth one
        db_param.acc_sum0(dy)
    if dx_out is None:
        return None
    return B.xp.matmul(dy, W.T, out=dx_out)


# ----------------------------------------------------------------------------- activations
# Each forward works in place on its input (the linear layer's private output buffer) where the
# backward can be written in terms of the output y alone; GELU needs x, so it writes to `out`.
# `ws(key, dtype=None)` hands out scratch arrays of the input's shape that the caller keeps
# between steps (Layer.buf): no activation allocates an array per step. A workspace a forward
# fills for its backward (GELU's tanh) is read back under the same key.

def relu_forward(x):
    # against a row of zeros, not the scalar 0: NumPy's array-array maximum is vectorised, the
    # array-scalar one is ~3x slower; over wide rows, as a convolution's rows are its few channels.
    # No numba kernel: in place over 256 x 1024 float32 the fused loop took 0.12-0.17 ms on one
    # thread against this path's 0.05-0.08 (and 0.064 on two), so it does not pay.
    v = wide_rows(x)
    B.xp.maximum(v, _zeros_row(v), out=v)
    return x


def relu_backward(dy, y, ws):
    # the kernel (dy * (y > 0) in one pass, no mask array) measured 0.042 ms on one numba thread,
    # 0.029 on two, against 0.087 here (256 x 1024 float32, in cache)
    if jit.active(dy.size) and dy.flags.c_contiguous and y.flags.c_contiguous:
        _relu_grad(dy.reshape(-1), y.reshape(-1), dy.dtype.type(1), dy.dtype.type(0))
        return dy
    dy *= B.xp.greater(y, 0, out=ws("mask", bool))      # a bool mask: as fast as y > 0, no new array
    return dy


@jit.kernel
def _relu_grad(dy, y, one, zero):
    """dy *= (y > 0), a multiply as in NumPy (so -0.0, NaN * 0 come out the same)."""
    for i in prange(dy.shape[0]):
        dy[i] = dy[i] * (one if y[i] > zero else zero)


_ZEROS = {}


def wide_rows(x, width=1024):
    """x viewed as rows of up to `width` values (a whole number of its own rows each) when it is
    contiguous and its rows are short, else x. An operation against one row (a bias, a row of
    zeros) then runs in long inner loops: a convolution's output has rows of its few channels,
    and NumPy spends ~4x longer on 6-value inner loops than on 768-value ones."""
    n = x.shape[-1] if x.ndim else 1
    if n >= width or not x.flags.c_contiguous:
        return x
    rows, k = x.size // n, 1
    while 2 * k * n <= width and rows % (2 * k) == 0:
        k *= 2
    return x.reshape(-1, k * n)


def _zeros_row(x):
    """A cached row of zeros (never written) matching x's last axis; broadcasts over the rows."""
    key = (B.name, x.shape[-1], x.dtype.str)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = B.xp.zeros(x.shape[-1], dtype=x.dtype)
    return z


LEAKY_SLOPE = 0.01


def leaky_relu_forward(x, ws):
    # for 0 < slope < 1: leaky(x) = max(x, slope x)
    return B.xp.maximum(x, B.xp.multiply(x, LEAKY_SLOPE, out=ws("t")), out=x)


def leaky_relu_backward(dy, y, ws):
    # for slope > 0, sign(y) == sign(x): d = 1 where y > 0, else slope
    d = B.xp.greater(y, 0, out=ws("t"))
    d *= 1.0 - LEAKY_SLOPE
    d += LEAKY_SLOPE
    dy *= d
    return dy


def sigmoid_forward(x, ws):
    """1 / (1 + e^-x), stable for large |x|: with e = exp(-|x|) it is 1/(1+e) for x >= 0 and
    e/(1+e) for x < 0, i.e. (1/(1+e)) * (1 + [x<0] (e - 1))."""
    xp = B.xp
    neg = xp.less(x, 0, out=ws("mask", bool))
    e = xp.abs(x, out=ws("t"))
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    xp.add(e, 1.0, out=x)
    xp.reciprocal(x, out=x)
    e -= 1.0
    e *= neg
    e += 1.0
    x *= e
    return x


def sigmoid_backward(dy, y, ws):
    d = B.xp.subtract(1.0, y, out=ws("t"))
    d *= y
    dy *= d
    return dy


def tanh_forward(x):
    return B.xp.tanh(x, out=x)


def tanh_backward(dy, y, ws):
    d = B.xp.multiply(y, y, out=ws("t"))
    B.xp.subtract(1.0, d, out=d)
    dy *= d
    return dy


ELU_ALPHA = 1.0


def elu_forward(x, ws):
    # x for x > 0, alpha (e^x - 1) otherwise: max(x, 0) + alpha expm1(min(x, 0))
    xp = B.xp
    n = xp.minimum(x, _zeros_row(x), out=ws("t"))
    xp.expm1(n, out=n)
    n *= ELU_ALPHA
    xp.maximum(x, _zeros_row(x), out=x)
    x += n
    return x


def elu_backward(dy, y, ws):
    # d/dx = 1 for x > 0 (y > 0), alpha e^x = y + alpha otherwise: min(y, 0) + alpha + [y>0] (1 - alpha)
    xp = B.xp
    d = xp.minimum(y, _zeros_row(y), out=ws("t"))
    d += ELU_ALPHA
    g = xp.greater(y, 0, out=ws("u"))
    g *= 1.0 - ELU_ALPHA
    d += g
    dy *= d
    return dy


# GELU, tanh approximation (as GPT-2 and torch's approximate='tanh'):
#   g = 0.5 h (1 + t),  t = tanh(c (h + a h^3)),  c = sqrt(2/pi), a = 0.044715
# Forward keeps t instead of g: backward then needs no tanh, and g (for the next layer's dW) is
# two multiplies away, so the GPT keeps the same 4C per row either way.
_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_forward(g, t, h, b=None):
    """h (N,D) (+= b (D,) first: the linear layer's bias, fused) -> g (N,D); saves t (N,D).
    Written without temporaries."""
    xp = B.xp
    if h.ndim == 2 and jit.active(h.size):
        K = _kernels()
        K.gelu_fwd(g, t, h, h[0] if b is None else b, b is not None, h.dtype == B.xp.float32,
                   K.consts(h.dtype, _A * _C, _C, 1, 0.5, *K.TANH32))
        return g
    if b is not None:
        h += b
    xp.multiply(h, h, out=t)
    t *= _A * _C
    t += _C
    t *= h                                          # u
    xp.tanh(t, out=t)
    gelu_from_tanh(g, h, t)
    return g


def gelu_from_tanh(g, h, t):
    xp = B.xp
    if h.ndim == 2 and jit.active(h.size):
        K = _kernels()
        K.gelu_recompute(g, h, t, K.consts(h.dtype, _A * _C, _C, 1, 0.5))
        return g
    xp.add(t, 1.0, out=g)
    g *= h
    g *= 0.5
    return g


def gelu_backward(dg, h, t, w, db=None):
    """dh = dg * (0.5 (1 + t) + 0.5 h (1 - t^2) c (1 + 3a h^2)), in place in dg; w (N,D) scratch.
    With `db` (a Param: the bias added before the GELU) its gradient, the column sums of dh, too.

    Factored as (1 + t) (0.5 + w (1 - t)) with w = 0.5 c h (1 + 3a h^2): 11 passes, no tanh.
    h is overwritten: it is spent once w holds its polynomial, and reusing it saves a scratch.
    The kernel does it in one pass (the same operations in the same order) and leaves h alone."""
    xp = B.xp
    if dg.ndim == 2 and jit.active(dg.size):
        K = _kernels()
        part, sums = K.colsum_parts(dg)
        K.gelu_bwd(dg, sums, h, t, part, db is not None, K.consts(h.dtype, 0, 3 * _A, 1, 0.5 * _C, 0.5))
        if db is not None:
            db.acc(sums)
        return dg
    xp.multiply(h, h, out=w)
    w *= 3 * _A
    w += 1.0
    w *= h
    w *= 0.5 * _C
    xp.subtract(1.0, t, out=h)
    w *= h
    w += 0.5
    xp.add(t, 1.0, out=h)
    w *= h
    dg *= w
    if db is not None:
        db.acc_sum0(dg)
    return dg


def _kernels():
    from . import transformer_kernels      # numba's kernels load with the first fused call
    return transformer_kernels


# name -> (forward(x, out, ws) -> y, backward(dy, saved, ws) -> dx, what backward needs: "y" or "x")
ACTIVATIONS = {
    "relu": (lambda x, out, ws: relu_forward(x), relu_backward, "y"),
    "leaky_relu": (lambda x, out, ws: leaky_relu_forward(x, ws), leaky_relu_backward, "y"),
    "sigmoid": (lambda x, out, ws: sigmoid_forward(x, ws), sigmoid_backward, "y"),
    "tanh": (lambda x, out, ws: tanh_forward(x), tanh_backward, "y"),
    "elu": (lambda x, out, ws: elu_forward(x, ws), elu_backward, "y"),
    # GELU keeps its input h and the tanh t; its backward overwrites h (a spent linear output)
    "gelu": (lambda h, out, ws: gelu_forward(out, ws("gelu_t"), h),
             lambda dg, h, ws: gelu_backward(dg, h, ws("gelu_t"), ws("t")), "x"),
}


# ----------------------------------------------------------------------------- losses
# Both losses return the SUM over rows times `scale` (1 / global number of items), so that the
# per-rank gradients add up under an all-reduce SUM to the gradient of the global mean loss.
# On the CPU they are Python numbers; on a GPU 0-d device arrays, since reading a number back
# waits for the device's queue: the trainer reads a step's statistics once, together.

def number(x, kind=float):
    """A reduction's result as a number: a Python one on the CPU, a 0-d device array (no read) on a GPU."""
    if B.on_gpu():
        return x.astype(B.xp.float64) if kind is float else x
    return kind(x)


def _all_valid(valid):
    """Whether no target is ignored: a shortcut worth a read on the CPU; on a GPU the masked path
    costs less than the read."""
    return False if B.on_gpu() else bool(valid.all())


def softmax_xent_forward(logits, targets, scale, out=None):
    """logits (N, V), targets (N,) int, -1 = ignore. Returns (loss_sum*scale, n_correct, probs).

    log-sum-exp with the row max subtracted, so no exp ever overflows. probs is written into
    `out` (N, V) when given (a workspace reused every step), else into a new array."""
    xp = B.xp
    if out is not None and logits.shape[-1] <= XENT_KERNEL_MAX_CLASSES and _xent_fused(logits, targets, out):
        loss, correct = _xent_rows(logits, targets, out)
        return loss * scale, correct, out
    z = xp.subtract(logits, logits.max(axis=1, keepdims=True), out=out)    # (N, V)
    valid = targets >= 0
    all_valid = _all_valid(valid)
    t = targets if all_valid else xp.where(valid, targets, 0)
    zt = z[xp.arange(len(t)), t]                      # (N,) target logit, taken before exp
    probs = xp.exp(z, out=z)
    s = probs.sum(axis=1, keepdims=True)              # (N, 1)
    probs /= s
    nll = xp.log(s[:, 0]) - zt
    loss = number(nll.sum() if all_valid else (nll * valid).sum()) * scale
    hit = logits.argmax(axis=1) == t
    correct = number(hit.sum() if all_valid else (hit & valid).sum(), int)
    return loss, correct, probs


def softmax_xent_backward(probs, targets, scale):
    """dlogits = (softmax - onehot) * scale, zero on ignored rows; written into probs."""
    xp = B.xp
    if _xent_fused(probs, targets, probs):
        _xent_rows_backward(probs, targets, probs.dtype.type(scale))
        return probs
    valid = targets >= 0
    all_valid = _all_valid(valid)
    t = targets if all_valid else xp.where(valid, targets, 0)
    probs[xp.arange(len(t)), t] -= 1.0
    probs *= scale
    if not all_valid:
        xp.multiply(probs, valid[:, None], out=probs)     # no mask indexing: on a GPU it reads back
    return probs


# The forward kernel computes one scalar exp per logit, NumPy a SIMD one: over few classes NumPy's
# per-call and per-row overheads dominate and the kernel wins (one thread, float32: 256 x 10
# 0.074 -> 0.017 ms, 1024 x 16 0.154 -> 0.093), from ~64 classes NumPy's exp does (256 x 64 0.077
# vs 0.085, 1024 x 65 0.25 vs 0.45, 512 x 1000 1.2 vs 2.7). The backward kernel wins at every size
# measured (256 x 10 0.018 -> 0.004, 1024 x 65 0.039 -> 0.016, 512 x 1000 0.056 -> 0.043).
XENT_KERNEL_MAX_CLASSES = 32


def _xent_fused(logits, targets, out):
    """Whether softmax cross-entropy runs as a kernel. Its NumPy path is a dozen calls over small
    arrays, bound by per-call overhead rather than memory, so the kernels pay from a few thousand
    logits: `auto` counts each logit 16 times against jit.MIN_ELEMENTS."""
    return (jit.active(16 * logits.size) and logits.ndim == 2 and targets.ndim == 1
            and logits.flags.c_contiguous and out.flags.c_contiguous and out.shape == logits.shape)


@jit.serial
def _xent_rows(logits, targets, probs):
    """softmax_xent_forward's work row by row (serial: N rows of V classes are a few microseconds);
    returns (sum of the valid rows' -log p_target, as float64, number of valid rows predicted right).
    Agrees with the NumPy path to float rounding (its exp and log are NumPy's own SIMD routines,
    its sums pairwise), not bit for bit."""
    loss, correct = 0.0, 0
    for r in range(logits.shape[0]):
        z, p, t = logits[r], probs[r], targets[r]
        m, am = z[0], 0
        for j in range(1, z.shape[0]):
            if z[j] > m or (z[j] != z[j] and m == m):       # max and first argmax; NaN wins as in NumPy
                m, am = z[j], j
        s = z[0] - z[0]
        for j in range(z.shape[0]):
            e = math.exp(z[j] - m)
            p[j] = e
            s += e
        for j in range(p.shape[0]):
            p[j] = p[j] / s
        if t >= 0:
            loss += math.log(s) - (z[t] - m)
            correct += am == t
    return loss, correct


@jit.serial
def _xent_rows_backward(probs, targets, scale):
    """softmax_xent_backward: p[t] -= 1, p *= scale; rows with target -1 zeroed (times 0, as NumPy)."""
    for r in range(probs.shape[0]):
        p, t = probs[r], targets[r]
        if t >= 0:
            p[t] -= 1
        for j in range(p.shape[0]):
            p[j] = p[j] * scale if t >= 0 else p[j] * scale * 0


def mse_forward(y, target, scale):
    """Mean over features of (y - t)^2, summed over rows, times scale (torch MSELoss for scale=1/N)."""
    diff = y - target
    loss = number((diff * diff).sum()) / y.shape[1] * scale
    return loss, diff


def mse_backward(diff, scale):
    diff *= 2.0 * scale / diff.shape[1]
    return diff
