"""Transformer op pairs: embedding, LayerNorm, causal self-attention, GELU, dropout.

Each backward sits right under its forward and reads only what that forward saved. Parameter
gradients go through the flat buffer's Param API (the first contribution of a step overwrites,
later ones add: that is how the tied token embedding collects both of its uses). Gradients with
respect to a residual-stream input are ADDED into the caller's `dx` (llm.c's `dinp +=`); other
input gradients are written. A backward may overwrite its incoming gradient (a scratch buffer).

Legend: B batch, T time, C channels (d_model), H heads, hs = C/H, V vocab, N = B*T rows.
"""
import math

import numpy as np

from .. import backend as B
from . import jit
from . import transformer_kernels as K

# ----------------------------------------------------------------------------- embedding
# out[b, t] = wte[idx[b, t]] + wpe[t]


def embedding_forward(out, idx, wte, wpe):
    """out (B,T,C); idx (B,T) int; wte (V,C); wpe (block_size,C), rows 0..T-1 used."""
    B.take_into(wte, idx, out, axis=0)              # ids are in range: the tokenizer made them
    out += wpe[:idx.shape[1]]
    return out


def embedding_backward(dout, idx, wte, wpe, work=None):
    """dwte[v] += sum of the dout rows whose token is v; dwpe[t] += sum over the batch of dout[:, t].

    Written straight into the views (a scatter, and a partial slice when T < block_size), so the
    Param's readiness hook is called here, as acc() would. `work` (N,C) is scratch."""
    xp, T = B.xp, idx.shape[1]
    if jit.active(dout.size) and dout.flags.c_contiguous:
        _embedding_backward_kernel(dout, idx, wte, wpe)
        return
    if wpe.fresh:
        wpe.grad[T:] = 0
        xp.sum(dout, axis=0, out=wpe.grad[:T])
        wpe.fresh = False
    else:
        wpe.grad[:T] += dout.sum(axis=0)            # (T,C): once per step and small
    if wte.fresh:
        wte.grad.fill(0)
        wte.fresh = False
    scatter_add_rows(wte.grad, idx.ravel(), dout.reshape(-1, dout.shape[-1]), work)
    for p in (wpe, wte):
        if getattr(p, "hook", None) is not None:
            p.hook(p)


def _embedding_backward_kernel(dout, idx, wte, wpe):
    T, fresh_pe = idx.shape[1], wpe.fresh
    if fresh_pe:
        wpe.grad[T:] = 0
    if wte.fresh:
        wte.grad.fill(0)
    wte.fresh = wpe.fresh = False
    nblocks = min(jit._numba().get_num_threads(), max(1, dout.shape[-1] // 16))
    K.embedding_bwd(wte.grad, wpe.grad, dout, idx, fresh_pe, nblocks, K.consts(dout.dtype, 0))
    for p in (wpe, wte):
        if getattr(p, "hook", None) is not None:
            p.hook(p)


def scatter_add_rows(dst, index, rows, work=None):
    """dst[index[i]] += rows[i], repeated indices summed; `work` (like rows) holds the sorted rows."""
    if B.on_gpu():
        import cupyx
        cupyx.scatter_add(dst, index, rows)
        return
    # np.add.at is ~5x slower than sorting once and summing each run of equal indices.
    order = np.argsort(index, kind="stable")
    s = index[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    srt = B.take_into(rows, order, work, axis=0) if work is not None else rows[order]
    # (distinct ids, C): at most the vocabulary's rows, and written once
    dst[s[starts]] += np.add.reduceat(srt, starts, axis=0)


def _rowdot(a, b, out):
    """out[...] = sum over the last axis of a * b, without an a-sized temporary on the CPU."""
    if B.on_gpu():
        out[...] = (a * b).sum(axis=-1)
    else:
        np.einsum("...c,...c->...", a, b, out=out)
    return out


# ----------------------------------------------------------------------------- layernorm
# out = (x - mean) * rstd * w + b over C, rstd = 1 / sqrt(var + eps)


def layernorm_forward(out, mean, rstd, x, w, b, eps=1e-5):
    """x (N,C) -> out (N,C); saves mean (N,), rstd (N,)."""
    xp, C = B.xp, x.shape[-1]
    if jit.active(x.size):
        K.layernorm_fwd(out, mean, rstd, x, w, w if b is None else b, b is not None, K.consts(x.dtype, 0, C, eps, 1))
        return out
    xp.mean(x, axis=-1, out=mean)
    xp.subtract(x, mean[:, None], out=out)
    _rowdot(out, out, rstd)                         # sum of squares
    rstd /= C
    rstd += eps
    xp.sqrt(rstd, out=rstd)
    xp.reciprocal(rstd, out=rstd)
    out *= rstd[:, None]
    out *= w
    if b is not None:
        out += b
    return out


def layernorm_backward(dx, dout, x, mean, rstd, w, dw, db, xhat, work):
    """dx += rstd * (g - mean_C(g) - xhat * mean_C(g * xhat)), g = dout * w.

    dout (N,C) is overwritten; xhat and work are (N,C) scratch; dw, db are Params."""
    xp, C = B.xp, x.shape[-1]
    if jit.active(x.size):
        sums = K.scratch("ln.sums", (2, C), x.dtype)
        K.layernorm_bwd(dx, sums, dout, x, mean, rstd, w, K.scratch("ln.part", (K.NCHUNK, 2, C), x.dtype),
                        K.consts(x.dtype, 0, C))
        if db is not None:
            db.acc(sums[1])
        dw.acc(sums[0])
        return dx
    xp.subtract(x, mean[:, None], out=xhat)         # recomputed: cheaper than keeping it
    xhat *= rstd[:, None]
    if db is not None:
        db.acc_sum0(dout)
    xp.multiply(dout, xhat, out=work)
    dw.acc_sum0(work)
    g = dout
    g *= w                                          # (N,C)
    m1 = g.mean(axis=-1)                            # (N,)
    m2 = _rowdot(g, xhat, xp.empty_like(m1))
    m2 /= C
    g -= m1[:, None]
    xhat *= m2[:, None]
    g -= xhat
    g *= rstd[:, None]
    dx += g
    return dx


# ----------------------------------------------------------------------------- attention
# q, k, v = split(qkv); att = softmax(q k^T / sqrt(hs) + causal mask); y = att v, heads side by side


def causal_bias(T, dtype):
    """(T,T): 0 on and below the diagonal, -inf above (a position sees only its past)."""
    return np.triu(np.full((T, T), -np.inf), 1).astype(dtype)


def split_heads(qkv, H):
    """(B,T,3C) -> q, k, v views (B,H,T,hs) each: no copy, BLAS takes the row stride 3C."""
    Bn, T, C3 = qkv.shape
    return qkv.reshape(Bn, T, 3, H, C3 // (3 * H)).transpose(2, 0, 3, 1, 4)


def attention_forward(y, att, qkv, H, bias, drop=None, work=None):
    """qkv (B,T,3C) -> y (B,T,C); saves att (B,H,T,T) softmax probabilities.

    NumPy path: q is scaled by 1/sqrt(hs) IN PLACE inside qkv (C multiplies instead of T*T per
    row), so the saved qkv holds the scaled q that backward needs. Kernel path (jit.active): the
    softmax kernel scales the scores in its pass, q stays unscaled, and the backward kernel puts
    the scale into datt; forward and backward ask jit.active(att.size) alike, so they agree. `drop` (B,H,T,T) multiplies the probabilities
    fed to `v` (the saved att stays undropped), `work` holds that product."""
    xp = B.xp
    Bn, T, C3 = qkv.shape
    hs = C3 // (3 * H)
    q, k, v = split_heads(qkv, H)                   # (B,H,T,hs) each
    if jit.active(att.size):
        # the kernel scales the scores (and scales back in attention_backward): q stays unscaled
        xp.matmul(q, k.swapaxes(-1, -2), out=att)
        a3 = att.reshape(Bn * H, T, T)
        K.causal_softmax_shift(a3, K.consts(att.dtype, 0, 1.0 / math.sqrt(hs), -np.inf))
        xp.exp(att, out=att)
        K.causal_softmax_norm(a3, a3 if drop is None else drop.reshape(a3.shape),
                              a3 if drop is None else work.reshape(a3.shape), drop is not None,
                              K.consts(att.dtype, 0))
        yh = y.reshape(Bn, T, H, hs).swapaxes(1, 2)
        xp.matmul(att if drop is None else work, v, out=yh)
        return y
    q *= 1.0 / math.sqrt(hs)
    xp.matmul(q, k.swapaxes(-1, -2), out=att)       # (B,H,T,T)
    att += bias[:T, :T]
    # NumPy's fmax skips max's NaN bookkeeping (faster); a NaN row stays NaN through exp anyway
    mx = att.max(axis=-1, keepdims=True) if B.on_gpu() else xp.fmax.reduce(att, axis=-1, keepdims=True)
    att -= mx
    xp.exp(att, out=att)
    s = att.sum(axis=-1, keepdims=True)
    att /= s
    p = att
    if drop is not None:
        p = xp.multiply(att, drop, out=work)
    yh = y.reshape(Bn, T, H, hs).swapaxes(1, 2)     # (B,H,T,hs) view of (B,T,C)
    xp.matmul(p, v, out=yh)
    return y


def attention_backward(dqkv, dy, qkv, att, H, datt, drop=None, work=None):
    """dy (B,T,C) -> dqkv (B,T,3C) written. datt (B,H,T,T) is scratch (and work, with dropout)."""
    xp = B.xp
    Bn, T, C3 = qkv.shape
    hs = C3 // (3 * H)
    q, k, v = split_heads(qkv, H)
    dq, dk, dv = split_heads(dqkv, H)
    dyh = dy.reshape(Bn, T, H, hs).swapaxes(1, 2)   # (B,H,T,hs)
    p = att if drop is None else xp.multiply(att, drop, out=work)
    xp.matmul(p.swapaxes(-1, -2), dyh, out=dv)      # dv = p^T dy
    xp.matmul(dyh, v.swapaxes(-1, -2), out=datt)    # dp = dy v^T
    if jit.active(att.size):
        # attention_forward's kernel left q unscaled; datt comes back scaled: no dq *= scale
        R = Bn * H
        K.causal_softmax_bwd(datt.reshape(R, T, T), att.reshape(R, T, T),
                             (att if drop is None else drop).reshape(R, T, T), drop is not None,
                             K.consts(att.dtype, 0, 1.0 / math.sqrt(hs)))
        xp.matmul(datt, k, out=dq)
        xp.matmul(datt.swapaxes(-1, -2), q, out=dk)
        return dqkv
    if drop is not None:
        datt *= drop
    # softmax: dpre = att * (dp - sum_j dp_j att_j); masked entries have att = 0, so dpre = 0
    s = _rowdot(datt, att, xp.empty(att.shape[:-1], dtype=att.dtype))
    datt -= s[..., None]
    datt *= att
    xp.matmul(datt, k, out=dq)                      # gradient of the scaled q ...
    dq *= 1.0 / math.sqrt(hs)                       # ... times the scale gives the unscaled one
    xp.matmul(datt.swapaxes(-1, -2), q, out=dk)     # q here is the scaled q: pre = q' k^T
    return dqkv


# ----------------------------------------------------------------------------- GELU
# gelu_forward, gelu_from_tanh, gelu_backward live in ops.py with the other activations.


# ----------------------------------------------------------------------------- dropout
# A mask element depends only on (seed, step, site, global row, element): counter-based Philox
# skipped ahead to this rank's first row, so any split of a global batch over ranks draws the
# same masks as one process would.


_UNIFORM = {}


def _uniform_scratch(n):
    """A reused float64 host buffer for n uniform draws (the largest mask's size, kept)."""
    buf = _UNIFORM.get("buf")
    if buf is None or buf.size < n:
        buf = _UNIFORM["buf"] = np.empty(n, np.float64)
    return buf[:n]


def dropout_mask(out, p, seed, step, site, row0=0):
    """out (R, ...) <- 0 with probability p, else 1/(1-p), for global rows row0 .. row0+R-1."""
    per_row = out[0].size if out.shape[0] else 0
    start, n = row0 * per_row, out.size
    bg = np.random.Philox(key=[seed & (2**64 - 1), site], counter=[0, 0, step, 0])
    bg.advance(start // 4)                          # one counter step = four 64-bit draws
    if start % 4:
        bg.random_raw(start % 4)                    # the draws before this rank's first element
    u = np.random.Generator(bg).random(out=_uniform_scratch(n))    # one 64-bit draw per element
    if B.on_gpu() or not out.flags.c_contiguous:
        out[...] = B.xp.asarray(((u >= p) * (1.0 / (1.0 - p))).reshape(out.shape), dtype=out.dtype)
        return out
    flat = out.reshape(-1)                          # a view: no array is made per step
    np.greater_equal(u, p, out=flat)
    flat *= 1.0 / (1.0 - p)
    return out



# ----------------------------------------------------------------------------- residual stream, biases

def residual_add(out, b, x, drop=None):
    """out = drop * (out + b) + x: a projection's bias, its dropout and the residual add."""
    if jit.active(out.size):
        K.bias_residual(out, out[0] if b is None else b, x, out if drop is None else drop,
                        b is not None, drop is not None)
        return out
    if b is not None:
        out += b
    if drop is not None:
        out *= drop
    out += x
    return out


def bias_grad(p, d):
    """p (a bias Param) gets the column sums of d (N,D)."""
    if jit.active(d.size):
        part, sums = K.colsum_parts(d)
        K.colsum(sums, d, part, K.consts(d.dtype, 0))
        p.acc(sums)
    else:
        p.acc_sum0(d)
