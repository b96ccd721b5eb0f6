"""Batch chunks on the rank's threads: the one CPU-only fast path of the image layers (nn/conv.py).

Only the GEMMs of a convolution use more than one core through BLAS; im2col, the bias add,
col2im and max pooling are copies and elementwise loops that NumPy runs on one core. But NumPy
releases the GIL inside those loops, so images [lo, hi) of a batch can run on one thread while
the next images run on another. `over_batch(n, fn, work)` is that split: fn(lo, hi) for
disjoint chunks of [0, n), the first on the caller's thread, the rest on a small pool, all
finished when it returns. Each chunk writes only its own images' rows, so the result is the
plain call fn(0, n)'s, bit for bit (tests/nn/test_conv.py compares them).

The plain call is what runs on CuPy (the GPU runs each whole array op in parallel already), with
one thread, and for small work (under MIN_WORK elements, where the hand-off costs more than it
saves).

OFF BY DEFAULT (one thread) until it is shown to pay: set_threads(n) turns it on. OpenBLAS's
workers busy-wait ~0.1 s after every GEMM (a GEMM comes every few ms in a step), so with the
rank's BLAS threads on its cores our chunk threads share those cores with spinning threads. On a
loaded 2-core machine LeNet's step at batch 256 was slower split than plain (median 0.55x to
0.96x over paired windows in five same-run comparisons; best windows 27.2 vs 31.9 steps/s).
OPENBLAS_THREAD_TIMEOUT=4 stops the spinning (a worker thread's op right after a GEMM then takes
as long as after idling, instead of 2x), and with it the split step was 1.18x the plain one (median
of 8 paired windows; best windows 1.09x) on the same loaded machine. Whether that holds, and what
the timeout costs the GEMMs, is for a quiet machine to tell: bench_cnn.py --batch-threads 2, with
and without OPENBLAS_THREAD_TIMEOUT=4.
"""
import os
from concurrent.futures import ThreadPoolExecutor, wait

from .. import backend as B

MIN_WORK = 1 << 16              # elements one call touches below which it runs unsplit
_state = {"threads": None, "pool": None, "workers": 0}


def _forget_pool():
    """A forked child has none of its parent's threads: it starts its own pool when it needs one."""
    _state["pool"], _state["workers"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def threads():
    """Threads a batch is split over: set_threads()'s, else 1 (off by default: see above)."""
    return _state["threads"] or 1


def set_threads(n):
    """Use n threads from now on (1: always the plain call); None: back to the default (1).
    Cheap: the pool stays (a benchmark switches between n and 1 every step)."""
    _state["threads"] = None if n is None else max(1, int(n))


def over_batch(n, fn, work):
    """fn(lo, hi) over [0, n): in chunks on threads() threads, or once as fn(0, n) on CuPy, with
    one thread, or when `work` (elements the call touches) is small."""
    t = min(threads(), n)
    if t <= 1 or B.name != "numpy" or work < MIN_WORK:
        fn(0, n)
        return
    pool = _state["pool"]
    if _state["workers"] < t - 1:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = _state["pool"] = ThreadPoolExecutor(t - 1, thread_name_prefix="ddp-batch")
        _state["workers"] = t - 1
    bounds = [n * k // t for k in range(t + 1)]
    futures = [pool.submit(fn, bounds[k], bounds[k + 1]) for k in range(1, t)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        wait(futures)             # never return while a chunk still writes
    for f in futures:
        f.result()                # a chunk's exception, raised here
