"""The optimizers' updates of nn/optim.py as fused numba kernels (nn/jit.py): one pass over the
flat buffers, on the rank's threads, instead of one single-threaded NumPy pass per operator.

Each kernel performs, element by element, the same float operations in the same order as the
NumPy code in optim.py (scalars passed in the array's dtype, fastmath off), so the two agree bit
for bit (tests/nn/test_optim_kernels.py). Unlike the NumPy path, a kernel leaves the gradient
buffer as it found it (maximize and the L2 term live in a register): nothing reads the gradient
after the step, and not writing it back saves one of the five or six streams over memory.

Weight decay applies to some parameters only (ParamSpace.decay_ranges): `Segments` cuts the
buffer into runs that do or do not decay, and each parallel chunk walks the runs it overlaps.

Measured on a 2-core machine that other processes kept busy (MLP 784-1024-1024-10, 1.86M float32
parameters, SGD momentum): alone, 0.51 ms on one numba thread against NumPy's 1.1-1.5 ms (fastest
of 50); inside the train step (bench_mlp's per-call profile, after the backward GEMMs, buffers
out of cache) 1.09-1.17 ms on one thread against 1.98-2.58 ms. Two numba threads could not be
measured there (a parallel region waited for a busy core: 10-13 ms): bench_mlp's profile reports
the kernels on 1 and 2 threads beside the NumPy path, for a quiet machine to decide.
"""
import math

import numpy as np      # the segment table only: a host array (kernels run on NumPy arrays alone)

from .jit import kernel, prange

CHUNK = 1 << 14      # elements per parallel work item: 64 KiB of float32 per stream


class Segments:
    """The flat buffer [0, n) as runs that alternately do / do not take weight decay:
    bounds (k+1,) int64 from 0 to n, decay (k,) bool."""

    def __init__(self, decay_ranges, n):
        bounds, decay, at = [0], [], 0
        for a, b in decay_ranges:
            if a > at:
                bounds.append(a)
                decay.append(False)
            bounds.append(b)
            decay.append(True)
            at = b
        if at < n or not decay:
            bounds.append(n)
            decay.append(False)
        self.bounds, self.decay = np.array(bounds, dtype=np.int64), np.array(decay, dtype=np.bool_)


# Every kernel: for each chunk [a, b) of CHUNK elements (in parallel), for each run s of the
# segments that overlaps it, the update on [a, min(b, bounds[s+1])) with dec = decay[s]. The
# inner loop runs over views of the run from index 0: numba then knows no index is negative and
# LLVM vectorises it; indexing the whole buffers from a (a signed start) keeps the negative-index
# wrap-around check in the loop, unvectorised: measured 1.9 ms instead of 0.55 ms for SGD momentum
# over the MLP's 1.86M float32 parameters on one thread.

@kernel
def prep_grad(p, g, bounds, decay, maximize, l2, wd):
    """optim.Optimizer._prep_grad: g = -g; g += p * wd where the parameter decays (in place)."""
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(c * CHUNK + CHUNK, n)
        s = 0
        while bounds[s + 1] <= a:
            s += 1
        while a < b:
            e, dec = min(b, bounds[s + 1]), l2 and decay[s]
            P, G = p[a:e], g[a:e]
            for i in range(P.shape[0]):
                gi = G[i]
                if maximize:
                    gi = -gi
                if dec:
                    gi = gi + P[i] * wd
                G[i] = gi
            a, s = e, s + 1


@kernel
def sgd(p, g, buf, bounds, decay, maximize, l2, wd, lr, momentum, mu, first, damp, damp1, nesterov):
    """optim.SGD: the torch.optim.SGD rule (momentum: mu; damp: dampening != 0; damp1 = 1 - dampening)."""
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(c * CHUNK + CHUNK, n)
        s = 0
        while bounds[s + 1] <= a:
            s += 1
        while a < b:
            e, dec = min(b, bounds[s + 1]), l2 and decay[s]
            P, G, M = p[a:e], g[a:e], buf[a:e]
            for i in range(P.shape[0]):
                gi = G[i]
                if maximize:
                    gi = -gi
                if dec:
                    gi = gi + P[i] * wd
                if momentum:
                    if first:
                        bi = gi
                    elif damp:
                        bi = M[i] * mu + gi * damp1
                    else:
                        bi = M[i] * mu + gi
                    M[i] = bi
                    if nesterov:
                        gi = gi + bi * mu
                    else:
                        gi = bi
                P[i] = P[i] - gi * lr
            a, s = e, s + 1


@kernel
def adam(p, g, m, v, vmax, bounds, decay, maximize, l2, wd, keep, b1, omb1, b2, omb2, amsgrad, bc2_sqrt, eps,
         step):
    """optim.Adam: keep = 1 - lr wd (decoupled decay; 1, an exact no-op, otherwise), omb = 1 - beta,
    step = lr / (1 - b1^t). Not 20 arguments: CPython's tuple free list keeps the dispatcher's
    20-tuples (up to 2000 of them), which the allocation tests see as memory growing per step."""
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(c * CHUNK + CHUNK, n)
        s = 0
        while bounds[s + 1] <= a:
            s += 1
        while a < b:
            e, dec = min(b, bounds[s + 1]), decay[s]
            P, G, M, V = p[a:e], g[a:e], m[a:e], v[a:e]
            X = vmax[a:e] if amsgrad else V
            for i in range(P.shape[0]):
                gi, pi = G[i], P[i]
                if maximize:
                    gi = -gi
                if l2 and dec:
                    gi = gi + pi * wd
                if dec:
                    pi = pi * keep
                mi = M[i] * b1 + gi * omb1
                vi = V[i] * b2 + gi * gi * omb2
                M[i], V[i] = mi, vi
                if amsgrad:
                    vm = X[i]
                    if vi > vm or vi != vi:          # np.maximum: NaN wins
                        vm = vi
                    X[i] = vm
                    d = math.sqrt(vm)
                else:
                    d = math.sqrt(vi)
                d = d / bc2_sqrt + eps
                P[i] = pi - mi / d * step
            a, s = e, s + 1


@kernel
def rmsprop(p, g, sq, buf, gavg, bounds, decay, maximize, l2, wd, alpha, oma, centered, momentum, mu, eps, lr):
    """optim.RMSProp: oma = 1 - alpha; buf / gavg unused (any array) without momentum / centered."""
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        a, b = c * CHUNK, min(c * CHUNK + CHUNK, n)
        s = 0
        while bounds[s + 1] <= a:
            s += 1
        while a < b:
            e, dec = min(b, bounds[s + 1]), l2 and decay[s]
            P, G, S = p[a:e], g[a:e], sq[a:e]
            M, A = buf[a:e] if momentum else S, gavg[a:e] if centered else S
            for i in range(P.shape[0]):
                gi = G[i]
                if maximize:
                    gi = -gi
                if dec:
                    gi = gi + P[i] * wd
                si = S[i] * alpha + gi * gi * oma
                S[i] = si
                if centered:
                    ga = A[i] * alpha + gi * oma
                    A[i] = ga
                    d = math.sqrt(si - ga * ga)
                else:
                    d = math.sqrt(si)
                d = gi / (d + eps)
                if momentum:
                    d = M[i] * mu + d
                    M[i] = d
                P[i] = P[i] - d * lr
            a, s = e, s + 1
