"""alpha-beta (latency-bandwidth) model of ring all-reduce.

A ring all-reduce of B bytes over N ranks is a reduce-scatter plus an
all-gather, each N-1 steps moving B/N bytes per rank:

    t(B, N) = 2(N-1) * alpha + 2(N-1)/N * B * beta

alpha: per-message latency (s), beta: inverse bandwidth (s/byte). The model
ignores the reduction arithmetic and contention, which is why the fit also
reports r2: a poor r2 means the measurements are outside the model's regime.

It is exactly the cost of `comm.algorithm: ring` (parallel/ring.py: 2(N-1)
Sendrecv steps of n/N bytes each); `bench-comm --algorithm ring` fits it to
that ring's timings. MPI_Allreduce picks its own algorithm (MPICH: recursive
doubling for small messages, Rabenseifner's reduce-scatter + all-gather for
large ones, with 2 log2(N) latency terms instead of 2(N-1) and the same
bandwidth term), so for MPI the fitted alpha is an effective one and the
projection to large N overestimates its latency cost.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["AlphaBeta", "fit_alpha_beta", "predict_allreduce", "project_efficiency"]


class AlphaBeta(NamedTuple):
    alpha: float
    beta: float
    r2: float


def _design(sizes: np.ndarray, worlds: np.ndarray) -> np.ndarray:
    return np.column_stack([2.0 * (worlds - 1), 2.0 * (worlds - 1) / worlds * sizes])


def fit_alpha_beta(sizes_bytes: Sequence[float], times_s: Sequence[float],
                   world_size: int | Sequence[int], relative: bool = True) -> AlphaBeta:
    """Least-squares alpha, beta (both >= 0) and r2 (on the raw times).

    ``world_size`` may be one N or one per sample, so timings from several
    world sizes can be fitted jointly. ``relative`` minimises relative rather
    than absolute residuals: timing noise is roughly proportional to the time,
    so plain least squares lets the 100 MB messages drown out the small ones
    that alone determine alpha.
    """
    sizes = np.asarray(sizes_bytes, dtype=np.float64).ravel()
    times = np.asarray(times_s, dtype=np.float64).ravel()
    worlds = np.broadcast_to(np.asarray(world_size, dtype=np.float64), sizes.shape)
    if sizes.shape != times.shape:
        raise ValueError(f"{sizes.size} sizes but {times.size} times")
    if np.any(worlds < 2):
        raise ValueError("all-reduce timings need world_size >= 2 (N=1 has no comm)")
    X = _design(sizes, worlds)
    if sizes.size < 2 or np.linalg.matrix_rank(X) < 2:
        raise ValueError("need >= 2 samples with distinct message sizes to fit alpha and beta")
    if relative and np.any(times <= 0):
        raise ValueError("relative fit needs positive times")
    w = 1.0 / times if relative else np.ones_like(times)
    Xw, tw = X * w[:, None], times * w
    (alpha, beta), *_ = np.linalg.lstsq(Xw, tw, rcond=None)
    # Noise on tiny alphas can push the unconstrained fit negative, which is
    # unphysical and breaks extrapolation; re-fit with that term pinned to 0
    # (the exact 2-variable NNLS solution).
    if alpha < 0 or beta < 0:
        col = 1 if alpha < 0 else 0
        x = Xw[:, col]
        coef = max(float(x @ tw / (x @ x)), 0.0)
        alpha, beta = (0.0, coef) if col == 1 else (coef, 0.0)
    resid = times - X @ np.array([alpha, beta])
    ss_tot = float(np.sum((times - times.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return AlphaBeta(float(alpha), float(beta), r2)


def predict_allreduce(nbytes, world_size, alpha: float, beta: float):
    """Predicted ring all-reduce seconds; 0 for N <= 1. Broadcasts over arrays."""
    b = np.asarray(nbytes, dtype=np.float64)
    n = np.asarray(world_size, dtype=np.float64)
    safe_n = np.maximum(n, 1.0)
    t = np.where(n > 1, 2 * (safe_n - 1) * alpha + 2 * (safe_n - 1) / safe_n * b * beta, 0.0)
    return float(t) if t.ndim == 0 else t


def project_efficiency(compute_time_s: float, grad_bytes: float,
                       worlds: Sequence[int], alpha: float, beta: float,
                       mode: str = "weak") -> list[dict]:
    """Predicted per-step time and parallel efficiency for each N in ``worlds``.

    ``compute_time_s`` is the single-rank step compute time. ``weak``: each
    rank keeps that batch, so compute stays constant and efficiency is
    T1/TN. ``strong``: the global batch is split, compute shrinks as 1/N and
    efficiency is T1/(N*TN). No compute/comm overlap is assumed, so this is
    the pessimistic bound for a bucketed/overlapped implementation.
    """
    if mode not in ("weak", "strong"):
        raise ValueError(f"mode must be 'weak' or 'strong', got {mode!r}")
    rows = []
    for n in worlds:
        if n < 1:
            raise ValueError(f"world size must be >= 1, got {n}")
        compute = compute_time_s / n if mode == "strong" else compute_time_s
        comm = predict_allreduce(grad_bytes, n, alpha, beta)
        step = compute + comm
        eff = compute_time_s / (n * step) if mode == "strong" else compute_time_s / step
        rows.append({"world_size": int(n), "compute_s": compute, "comm_s": comm,
                     "step_s": step, "efficiency": eff,
                     # samples/s relative to one rank, in both modes
                     "speedup": eff * n})
    return rows
