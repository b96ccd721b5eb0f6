"""Pure forward/backward pairs. Each backward sits right under its forward.

Conventions: shapes in comments use N = rows (batch, or batch*time), D_in/D_out = features,
V = classes. A backward may overwrite the incoming gradient `dy` in place (it is a workspace that
nobody reads afterwards) and returns the gradient with respect to the forward's input.
"""
import math

from . import backend as B

# ----------------------------------------------------------------------------- linear
# y = x @ W + b            x (N, D_in), W (D_in, D_out), b (D_out,) -> y (N, D_out)


def linear_forward(x, W, b, out):
    B.xp.matmul(x, W, out=out)
    if b is not None:
        out += b
    return out


def linear_backward(dy, x, W, dW_param, db_param, dx_out=None, work=None):
    """dW += x^T dy; db += sum_N dy; returns dx = dy W^T (skipped when dx_out is None)."""
    dW_param.acc_matmul(x.T, dy, work)
    if db_param is not None:
        db_param.acc_sum0(dy)
    if dx_out is None:
        return None
    return B.xp.matmul(dy, W.T, out=dx_out)


# ----------------------------------------------------------------------------- activations
# Each forward works in place on its input (the linear layer's private output buffer) where the
# backward can be written in terms of the output y alone; GELU needs x, so it writes to `out`.

def relu_forward(x):
    # against a row of zeros, not the scalar 0: NumPy's array-array maximum is vectorised, the
    # array-scalar one is ~3x slower
    return B.xp.maximum(x, _zeros_row(x), out=x)


def relu_backward(dy, y):
    dy *= (y > 0)
    return dy


_ZEROS = {}


def _zeros_row(x):
    """A cached row of zeros (never written) matching x's last axis; broadcasts over the rows."""
    key = (B.name, x.shape[-1], x.dtype.str)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = B.xp.zeros(x.shape[-1], dtype=x.dtype)
    return z


def leaky_relu_forward(x, slope=0.01):
    B.xp.copyto(x, x * slope, where=x < 0)
    return x


def leaky_relu_backward(dy, y, slope=0.01):
    # for slope > 0, sign(y) == sign(x)
    dy *= B.xp.where(y > 0, 1.0, slope).astype(dy.dtype, copy=False)
    return dy


def sigmoid_forward(x):
    xp = B.xp
    # stable for large |x|: exp of a non-positive number only
    neg = x < 0
    e = xp.exp(-xp.abs(x))
    pos = 1.0 / (1.0 + e)
    x[...] = pos
    xp.copyto(x, e * pos, where=neg)
    return x


def sigmoid_backward(dy, y):
    dy *= y * (1.0 - y)
    return dy


def tanh_forward(x):
    return B.xp.tanh(x, out=x)


def tanh_backward(dy, y):
    dy *= 1.0 - y * y
    return dy


def elu_forward(x, alpha=1.0):
    xp = B.xp
    xp.copyto(x, alpha * xp.expm1(xp.minimum(x, 0)), where=x < 0)
    return x


def elu_backward(dy, y, alpha=1.0):
    # d/dx = 1 for x > 0, alpha * e^x = y + alpha otherwise
    dy *= B.xp.where(y > 0, 1.0, y + alpha).astype(dy.dtype, copy=False)
    return dy


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x, out):
    """GELU, tanh approximation (as GPT-2 and torch's approximate='tanh')."""
    xp = B.xp
    u = _GELU_C * (x + 0.044715 * x ** 3)
    xp.tanh(u, out=out)
    out += 1.0
    out *= 0.5 * x
    return out


def gelu_backward(dy, x):
    xp = B.xp
    t = xp.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    du = _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) du
    dy *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    return dy


# name -> (forward(x, out) -> y, backward(dy, saved) -> dx, what backward needs: "y" or "x")
ACTIVATIONS = {
    "relu": (lambda x, out: relu_forward(x), relu_backward, "y"),
    "leaky_relu": (lambda x, out: leaky_relu_forward(x), leaky_relu_backward, "y"),
    "sigmoid": (lambda x, out: sigmoid_forward(x), sigmoid_backward, "y"),
    "tanh": (lambda x, out: tanh_forward(x), tanh_backward, "y"),
    "elu": (lambda x, out: elu_forward(x), elu_backward, "y"),
    "gelu": (gelu_forward, gelu_backward, "x"),
}


# ----------------------------------------------------------------------------- losses
# Both losses return the SUM over rows times `scale` (1 / global number of items), so that the
# per-rank gradients add up under an all-reduce SUM to the gradient of the global mean loss.

def softmax_xent_forward(logits, targets, scale, out=None):
    """logits (N, V), targets (N,) int, -1 = ignore. Returns (loss_sum*scale, n_correct, probs).

    log-sum-exp with the row max subtracted, so no exp ever overflows. probs is written into
    `out` (N, V) when given (a workspace reused every step), else into a new array."""
    xp = B.xp
    z = xp.subtract(logits, logits.max(axis=1, keepdims=True), out=out)    # (N, V)
    valid = targets >= 0
    all_valid = bool(valid.all())
    t = targets if all_valid else xp.where(valid, targets, 0)
    zt = z[xp.arange(len(t)), t]                      # (N,) target logit, taken before exp
    probs = xp.exp(z, out=z)
    s = probs.sum(axis=1, keepdims=True)              # (N, 1)
    probs /= s
    nll = xp.log(s[:, 0]) - zt
    loss = float(nll.sum() if all_valid else (nll * valid).sum()) * scale
    hit = logits.argmax(axis=1) == t
    correct = int(hit.sum() if all_valid else (hit & valid).sum())
    return loss, correct, probs


def softmax_xent_backward(probs, targets, scale):
    """dlogits = (softmax - onehot) * scale, zero on ignored rows; written into probs."""
    xp = B.xp
    valid = targets >= 0
    all_valid = bool(valid.all())
    t = targets if all_valid else xp.where(valid, targets, 0)
    probs[xp.arange(len(t)), t] -= 1.0
    probs *= scale
    if not all_valid:
        probs[~valid] = 0
    return probs


def mse_forward(y, target, scale):
    """Mean over features of (y - t)^2, summed over rows, times scale (torch MSELoss for scale=1/N)."""
    diff = y - target
    loss = float((diff * diff).sum()) / y.shape[1] * scale
    return loss, diff


def mse_backward(diff, scale):
    diff *= 2.0 * scale / diff.shape[1]
    return diff
