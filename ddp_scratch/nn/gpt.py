"""Decoder-only transformer (GPT-2 layout, pre-norm blocks), every backward written by hand.

Legend (shape comments below use these):
  B batch (sequences on this rank)   T time (positions, <= block_size)   C channels (d_model)
  H heads, hs = C/H head size        V vocabulary                        N = B*T rows
  L blocks (n_layer)

forward:   x = drop(wte[idx] + wpe)                                      (B,T,C)
           L times:  x = x + drop(proj(attn(ln1(x))))
                     x = x + drop(fc2(gelu(fc(ln2(x)))))
           logits = lnf(x) @ wte^T                                       (B,T,V)  head tied to wte
           loss = cross-entropy(logits, targets)
backward:  the same list in reverse; wte collects the head's gradient first, the embedding's second.

Every activation backward needs is kept once, in per-block pools; backward scratch is one pool
shared by all blocks. Weights are stored (D_in, D_out), so y = x @ W as in ops.linear_forward.
"""
import math

import numpy as np

from .. import backend as B
from ..errors import ConfigError
from . import ops
from .flat import N_EXTRAS, ParamSpace
from .optim import optimizer_arrays
from .ops import gelu_backward, gelu_forward, gelu_from_tanh
from .transformer_kernels import numba_threads
from .transformer_ops import (attention_backward, attention_forward, bias_grad, causal_bias, dropout_mask,
                              embedding_backward, embedding_forward, layernorm_backward, layernorm_forward,
                              residual_add)


class Pool:
    """Named arrays handed out as views of flat buffers that only grow, so a smaller shape
    (evaluation, sampling) reuses the training memory instead of adding buffers."""

    def __init__(self, dtype):
        self.dtype, self.bufs = np.dtype(dtype), {}

    def __call__(self, name, shape, dtype=None):
        dtype, n = np.dtype(dtype or self.dtype), math.prod(shape)
        a = self.bufs.get(name)
        if a is None or a.size < n or a.dtype != dtype:
            a = self.bufs[name] = B.xp.empty(max(n, 1), dtype=dtype)
        return a[:n].reshape(shape)

    def nbytes(self):
        return sum(a.nbytes for a in self.bufs.values())


def _data(p):
    return None if p is None else p.data


def _rows(a, N):
    """A (B,T,C) dropout mask as (N,C) rows, or None."""
    return None if a is None else a.reshape(N, -1)


class Block:
    """x = x + drop(proj(attn(ln1(x)))); x = x + drop(fc2(gelu(fc(ln2(x)))))."""

    def __init__(self, sp, i, C, H, L, bias):
        n, std = f"h{i}.", 0.02
        pstd = 0.02 / math.sqrt(2 * L)   # GPT-2: residual projections scaled by depth

        def vec(name, size, init):       # biases and LayerNorm gains never decay (nanoGPT)
            return sp.param(n + name, (size,), init, decay=False)
        self.ln1_w = vec("ln1.w", C, "ones")                                   # (C,)
        self.ln1_b = vec("ln1.b", C, "zeros") if bias else None                # (C,)
        self.attn_w = sp.param(n + "attn.w", (C, 3 * C), f"normal:{std}")      # (C,3C) q|k|v
        self.attn_b = vec("attn.b", 3 * C, "zeros") if bias else None          # (3C,)
        self.proj_w = sp.param(n + "proj.w", (C, C), f"normal:{pstd}")         # (C,C)
        self.proj_b = vec("proj.b", C, "zeros") if bias else None              # (C,)
        self.ln2_w = vec("ln2.w", C, "ones")                                   # (C,)
        self.ln2_b = vec("ln2.b", C, "zeros") if bias else None                # (C,)
        self.fc_w = sp.param(n + "fc.w", (C, 4 * C), f"normal:{std}")          # (C,4C)
        self.fc_b = vec("fc.b", 4 * C, "zeros") if bias else None              # (4C,)
        self.fc2_w = sp.param(n + "fc2.w", (4 * C, C), f"normal:{pstd}")       # (4C,C)
        self.fc2_b = vec("fc2.b", C, "zeros") if bias else None                # (C,)
        self.i, self.H = i, H
        self.act = Pool(sp.dtype)

    def forward(self, x, Bn, T, m, train):
        """x (N,C) residual in -> (N,C) residual out; m is the model (scratch, dropout keys)."""
        a, H, (N, C) = self.act, self.H, x.shape
        self.x, self.shape = x, (Bn, T)
        self.ln1, self.m1, self.r1 = a("ln1", (N, C)), a("ln1.mean", (N,)), a("ln1.rstd", (N,))
        layernorm_forward(self.ln1, self.m1, self.r1, x, self.ln1_w.data, _data(self.ln1_b))
        self.qkv = ops.linear_forward(self.ln1, self.attn_w.data, _data(self.attn_b), a("qkv", (N, 3 * C)))
        self.att, self.y = a("att", (Bn, H, T, T)), a("y", (N, C))
        self.d_att = m.mask(a, "att.drop", (Bn, H, T, T), 3 * self.i + 1, train)
        attention_forward(self.y.reshape(Bn, T, C), self.att, self.qkv.reshape(Bn, T, 3 * C), H, m.bias,
                          self.d_att, m.tmp("attp", self.att.shape) if self.d_att is not None else None)
        self.x1 = ops.linear_forward(self.y, self.proj_w.data, None, a("x1", (N, C)))
        self.d_1 = m.mask(a, "x1.drop", (Bn, T, C), 3 * self.i + 2, train)
        residual_add(self.x1, _data(self.proj_b), x, _rows(self.d_1, N))
        self.ln2, self.m2, self.r2 = a("ln2", (N, C)), a("ln2.mean", (N,)), a("ln2.rstd", (N,))
        layernorm_forward(self.ln2, self.m2, self.r2, self.x1, self.ln2_w.data, _data(self.ln2_b))
        self.h = ops.linear_forward(self.ln2, self.fc_w.data, None, a("h", (N, 4 * C)))
        self.t = a("t", (N, 4 * C))                                      # tanh inside GELU
        g = gelu_forward(m.tmp("g", (N, 4 * C)), self.t, self.h, _data(self.fc_b))   # (N,4C) not kept
        self.x2 = ops.linear_forward(g, self.fc2_w.data, None, a("x2", (N, C)))
        self.d_2 = m.mask(a, "x2.drop", (Bn, T, C), 3 * self.i + 3, train)
        residual_add(self.x2, _data(self.fc2_b), self.x1, _rows(self.d_2, N))
        return self.x2

    def backward(self, dres, m):
        """dres (N,C): gradient w.r.t. this block's output in, w.r.t. its input out (in place)."""
        xp, tmp, H, (N, C), (Bn, T) = B.xp, m.tmp, self.H, dres.shape, self.shape
        # MLP: x2 = x1 + drop(fc2(g)), g = gelu(h), h = fc(ln2)
        d = dres if self.d_2 is None else xp.multiply(dres, self.d_2.reshape(N, C), out=tmp("dmask", (N, C)))
        g = gelu_from_tanh(tmp("g", (N, 4 * C)), self.h, self.t)         # (N,4C) recomputed
        m.acc(self.fc2_w, g.T, d)
        if self.fc2_b is not None:
            bias_grad(self.fc2_b, d)
        dg = xp.matmul(d, self.fc2_w.data.T, out=tmp("dg", (N, 4 * C)))  # (N,4C)
        gelu_backward(dg, self.h, self.t, g, self.fc_b)                  # dg <- dh, fc_b's grad; h spent
        m.acc(self.fc_w, self.ln2.T, dg)
        dln = xp.matmul(dg, self.fc_w.data.T, out=tmp("dln", (N, C)))
        layernorm_backward(dres, dln, self.x1, self.m2, self.r2, self.ln2_w.data, self.ln2_w, self.ln2_b,
                           tmp("xhat", (N, C)), tmp("lnwork", (N, C)))
        # attention: x1 = x + drop(proj(y)), y = attn(qkv), qkv = ln1 @ attn_w
        d = dres if self.d_1 is None else xp.multiply(dres, self.d_1.reshape(N, C), out=tmp("dmask", (N, C)))
        m.acc(self.proj_w, self.y.T, d)
        if self.proj_b is not None:
            bias_grad(self.proj_b, d)
        dy = xp.matmul(d, self.proj_w.data.T, out=tmp("dy", (N, C)))
        dqkv = tmp("dqkv", (N, 3 * C))
        attention_backward(dqkv.reshape(Bn, T, 3 * C), dy.reshape(Bn, T, C), self.qkv.reshape(Bn, T, 3 * C),
                           self.att, H, tmp("datt", self.att.shape), self.d_att,
                           tmp("attp", self.att.shape) if self.d_att is not None else None)
        m.acc(self.attn_w, self.ln1.T, dqkv)
        if self.attn_b is not None:
            bias_grad(self.attn_b, dqkv)
        xp.matmul(dqkv, self.attn_w.data.T, out=dln)
        layernorm_backward(dres, dln, self.x, self.m1, self.r1, self.ln1_w.data, self.ln1_w, self.ln1_b,
                           tmp("xhat", (N, C)), tmp("lnwork", (N, C)))
        return dres


class GPT:
    """The trainer's model interface (see mlp.py) plus predict() for sampling.

    Dropout (off by default) keys every mask on (seed, step, site, global row): `step` counts
    training forwards and `row0` is this rank's first row of the global batch; a trainer that
    resumes or shards sets both (set_step), so masks match a single-process run exactly."""

    def __init__(self, vocab_size, block_size=64, n_layer=4, n_head=4, d_model=128, dropout=0.0,
                 bias=True, dtype="float32", seed=0, optim=None, build=True):
        if d_model % n_head:
            raise ConfigError(f"model.d_model: expected a multiple of model.n_head ({n_head}), got {d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a probability in [0, 1), got {dropout}")
        self.V, self.Tmax, self.L, self.H, self.C = vocab_size, block_size, n_layer, n_head, d_model
        self.dropout, self.seed, self.optim = dropout, seed, optim
        sp = self.space = ParamSpace(dtype)
        self.wte = sp.param("wte", (vocab_size, d_model), "normal:0.02")   # (V,C) also the head
        self.wpe = sp.param("wpe", (block_size, d_model), "normal:0.02")   # (Tmax,C)
        self.blocks = [Block(sp, i, d_model, n_head, n_layer, bias) for i in range(n_layer)]
        self.lnf_w = sp.param("lnf.w", (d_model,), "ones", decay=False)    # (C,)
        self.lnf_b = sp.param("lnf.b", (d_model,), "zeros", decay=False) if bias else None
        self.act, self.tmp = Pool(dtype), Pool(dtype)
        self.step, self.row0, self.train_shape = 0, 0, None
        if not build:                     # parameters declared, nothing allocated (size checks)
            return
        sp.build(seed)
        self.bias = B.xp.asarray(causal_bias(block_size, dtype))          # (Tmax,Tmax)

    @classmethod
    def from_config(cls, cfg, n_out, seed, build=True):
        m = cfg.model
        return cls(n_out, m.block_size, m.n_layer, m.n_head, m.d_model, m.dropout, m.bias,
                   cfg.train.dtype, seed, cfg.optim, build)

    def describe(self):
        return f"gpt, {self.L} layers x {self.H} heads, d_model {self.C}, context {self.Tmax}"

    def set_step(self, step, row0=0):
        self.step, self.row0 = int(step), int(row0)

    # ------------------------------------------------------------------ helpers
    def mask(self, pool, name, shape, site, train):
        """A dropout mask (rows = sequences) or None when dropout is off or not training."""
        if not train or self.dropout == 0.0:
            return None
        return dropout_mask(pool(name, shape), self.dropout, self.seed, self.step, site, self.row0)

    def acc(self, p, a, b):
        """p.grad (+)= a @ b, through a scratch buffer when adding (micro-steps, tied weights)."""
        p.acc_matmul(a, b, None if p.fresh else self.tmp(f"dW{p.shape}", p.shape))

    # ------------------------------------------------------------------ forward / backward
    def forward(self, idx, train=False):
        """idx (B,T) token ids -> logits (N,V)."""
        with numba_threads():
            return self._forward(idx, train)

    def _forward(self, idx, train):
        xp = B.xp
        Bn, T = idx.shape
        if T > self.Tmax:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.Tmax}")
        N, C, a = Bn * T, self.C, self.act
        x = embedding_forward(a("emb", (Bn, T, C)), idx, self.wte.data, self.wpe.data)   # (B,T,C)
        self.d_emb = self.mask(a, "emb.drop", (Bn, T, C), 0, train)
        if self.d_emb is not None:
            x *= self.d_emb
        x = x.reshape(N, C)
        for blk in self.blocks:
            x = blk.forward(x, Bn, T, self, train)
        self.xL, self.lnf = x, a("lnf", (N, C))
        self.mf, self.rf = a("lnf.mean", (N,)), a("lnf.rstd", (N,))
        layernorm_forward(self.lnf, self.mf, self.rf, x, self.lnf_w.data, _data(self.lnf_b))
        self.logits = xp.matmul(self.lnf, self.wte.data.T, out=a("logits", (N, self.V)))   # (N,V)
        self.idx = idx
        return self.logits

    def loss(self, x, t, scale, train=True):
        """x (B,T) ids, t (B,T) or (N,) next ids (-1 = ignore) -> (sum of losses * scale, n_correct)."""
        logits = self.forward(x, train)
        self._t, self._scale = t.reshape(-1), scale
        probs = self.act("probs", logits.shape)                                        # (N,V)
        loss, correct, self._probs = ops.softmax_xent_forward(logits, self._t, scale, out=probs)
        if train:
            self.train_shape = tuple(x.shape)
            self.step += 1
        return loss, correct

    def backward(self):
        with numba_threads():
            self._backward()

    def _backward(self):
        xp, tmp = B.xp, self.tmp
        Bn, T = self.idx.shape
        N, C = Bn * T, self.C
        dlogits = ops.softmax_xent_backward(self._probs, self._t, self._scale)     # (N,V)
        self.acc(self.wte, dlogits.T, self.lnf)                                   # head's use of wte
        dln = xp.matmul(dlogits, self.wte.data, out=tmp("dln", (N, C)))           # (N,C)
        dres = tmp("dres", (N, C))
        dres.fill(0)
        layernorm_backward(dres, dln, self.xL, self.mf, self.rf, self.lnf_w.data, self.lnf_w, self.lnf_b,
                           tmp("xhat", (N, C)), tmp("lnwork", (N, C)))
        for blk in reversed(self.blocks):
            blk.backward(dres, self)
        if self.d_emb is not None:
            dres *= self.d_emb.reshape(N, C)
        embedding_backward(dres.reshape(Bn, T, C), self.idx, self.wte, self.wpe,   # adds the input use
                           tmp("dln", (N, C)))                                      # dln is spent: scratch

    def predict(self, x):
        """x (B,T) ids -> logits (B,T,V), no dropout."""
        Bn, T = x.shape
        return self.forward(x, train=False).reshape(Bn, T, self.V)

    # ------------------------------------------------------------------ accounting
    def flops_per_step(self, n_tokens, T=None):
        """Forward + backward FLOPs for n_tokens in sequences of T (default block_size).

        Per token and block: QKV, proj, fc, fc2 matmuls 2*(3+1+4+4)*C^2 = 24 C^2, attention scores
        and att@v 2*2*T*C (full T x T: the masked half is computed too); the head 2*C*V.
        Backward costs twice the forward: every matmul has a dW and a dX product, attention four."""
        T = T or self.Tmax
        fwd = n_tokens * (self.L * (24 * self.C ** 2 + 4 * T * self.C) + 2 * self.C * self.V)
        return 3 * fwd

    def memory_bytes(self, Bn, T):
        """Analytic bytes: activations kept for backward, and backward/forward scratch."""
        N, C, H, L, V, p = Bn * T, self.C, self.H, self.L, self.V, self.dropout > 0
        att = Bn * H * T * T
        block = 16 * N * C + 4 * N + att + (att + 2 * N * C if p else 0)
        act = N * C * (1 + p) + L * block + N * C + 2 * N + 2 * N * V   # emb, blocks, lnf, logits+probs
        scratch = 16 * N * C + att + (N * C + att if p else 0)
        it = self.space.itemsize
        return act * it, scratch * it

    def activation_bytes(self, rows):
        """Activations and scratch for `rows` sequences of the full context."""
        return sum(self.memory_bytes(rows, self.Tmax))

    def memory_report(self, n_items):
        """Bytes per rank for the local batch of the last training step (or n_items tokens)."""
        Bn, T = self.train_shape or (max(1, n_items // self.Tmax), self.Tmax)
        it, P = self.space.itemsize, self.space.n_params
        n_state = optimizer_arrays(self.optim)
        act, scratch = self.memory_bytes(Bn, T)
        mem = {"params": P * it, "grads": (P + N_EXTRAS) * it,
               "optimizer": (n_state + 1) * P * it,   # state arrays + one update scratch
               "activations": act, "workspace": scratch}
        out = {f"memory_{k}_bytes": int(v) for k, v in mem.items()}
        out["memory_total_bytes"] = int(sum(mem.values()))
        return out

    def pool_bytes(self):
        """What the pools actually hold (tests check memory_bytes against it)."""
        return self.act.nbytes() + sum(b.act.nbytes() for b in self.blocks), self.tmp.nbytes()
