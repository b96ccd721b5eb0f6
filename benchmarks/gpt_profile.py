"""Where the GPT train step's time goes, and what its GEMMs alone cost (bench_gpt.py uses both).

profile_scratch: the step of bench_gpt.ours_step_fn run with each op of nn/gpt.py timed in place
(the module's op names swapped for timed wrappers), every B.xp.matmul timed too, so each call
splits into GEMM and the rest (bench_cnn.py's split, per op kind here).

gemm_step_fn: the step's GEMMs alone: every matmul one training step makes, recorded with its
very operands and out= buffers (same shapes, strides and layouts, batched attention products
included), replayed in order on a private copy of the model. Its rate is the step's
matmul-bound ceiling: what the step would reach if everything but its matrix products took no time.
"""
import statistics
import time

# op name in nn/gpt.py (or nn/ops.py) -> the kind of work it is reported under
OPS = {"embedding_forward": "embedding", "embedding_backward": "embedding",
       "layernorm_forward": "LayerNorm", "layernorm_backward": "LayerNorm",
       "attention_forward": "attention", "attention_backward": "attention",
       "gelu_forward": "GELU", "gelu_from_tanh": "GELU", "gelu_backward": "GELU",
       "dropout_mask": "dropout", "residual_add": "residual adds (with the projections' biases)",
       "bias_grad": "bias gradients (column sums)"}
OPS_MODULE = {"linear_forward": "linear forward (GEMM + bias)",
              "softmax_xent_forward": "cross-entropy", "softmax_xent_backward": "cross-entropy"}


class RecordingXP:
    """The array module with matmul timed (seconds into .gemm) and, while .calls is a list, recorded."""

    def __init__(self, xp):
        self.xp, self.gemm, self.calls = xp, 0.0, None

    def __getattr__(self, name):
        return getattr(self.xp, name)

    def matmul(self, a, b, out=None):
        t0 = time.perf_counter()
        r = self.xp.matmul(a, b, out=out)
        self.gemm += time.perf_counter() - t0
        if self.calls is not None:
            self.calls.append((a, b, r))
        return r


def _timed(fn, name, acc, rec):
    def wrapper(*a, **k):
        g0, t0 = rec.gemm, time.perf_counter()
        r = fn(*a, **k)
        acc[name][0] += time.perf_counter() - t0
        acc[name][1] += rec.gemm - g0
        return r
    return wrapper


def profile_scratch(model, opt, step, reps=20, warmup=3):
    """Median ms per step of each kind of work, GEMM and rest, measured inside `step`.

    Returns {"total_ms", "gemm_ms", "parts": [{"part", "ms", "gemm_ms"}]}: each op kind's time
    excluding its GEMMs, then the GEMMs (wherever they ran), then "other" (residual adds, dropout
    multiplies and what the op list does not name), which is the step's time not in any wrapper."""
    from ddp_scratch import backend as B
    from ddp_scratch.nn import gpt, ops
    rec = RecordingXP(B.xp)
    names = list(OPS) + list(OPS_MODULE) + ["optimizer step"]
    acc = {n: [0.0, 0.0] for n in names}
    saved_g = {n: getattr(gpt, n) for n in OPS}
    saved_o = {n: getattr(ops, n) for n in OPS_MODULE}
    saved_opt = opt.step
    rows = []
    B.xp = rec
    try:
        for n in OPS:
            setattr(gpt, n, _timed(saved_g[n], n, acc, rec))
        for n in OPS_MODULE:
            setattr(ops, n, _timed(saved_o[n], n, acc, rec))
        opt.step = _timed(saved_opt, "optimizer step", acc, rec)
        for r in range(reps + warmup):
            for v in acc.values():
                v[0] = v[1] = 0.0
            rec.gemm = 0.0
            t0 = time.perf_counter()
            step()
            total = time.perf_counter() - t0
            if r >= warmup:
                rows.append((total, rec.gemm, {n: tuple(v) for n, v in acc.items()}))
    finally:
        B.xp = rec.xp
        for n, f in saved_g.items():
            setattr(gpt, n, f)
        for n, f in saved_o.items():
            setattr(ops, n, f)
        opt.step = saved_opt

    def med(f):
        return 1e3 * statistics.median(f(row) for row in rows)
    kinds = {}
    for n in names:
        kinds.setdefault(OPS.get(n) or OPS_MODULE.get(n) or n, []).append(n)
    parts = [{"part": k, "ms": med(lambda row, ns=ns: sum(row[2][n][0] - row[2][n][1] for n in ns)),
              "calls": ns} for k, ns in kinds.items()]
    total, gemm = med(lambda row: row[0]), med(lambda row: row[1])
    parts.append({"part": "GEMM (all matmuls, forward and backward)", "ms": gemm, "calls": []})
    parts.append({"part": "other (gradient norm and clip, zero/finish grads, dropout multiplies in backward)",
                  "ms": med(lambda row: row[0] - row[1] - sum(v[0] - v[1] for v in row[2].values())),
                  "calls": []})
    return {"total_ms": total, "gemm_ms": gemm, "parts": parts}


def gemm_step_fn(model_ceiling, step):
    """The GEMMs of one `step` of `model_ceiling` (a model no other side uses), replayed in order."""
    from ddp_scratch import backend as B
    rec = RecordingXP(B.xp)
    rec.calls = []
    B.xp = rec
    try:
        step()
    finally:
        B.xp = rec.xp
    np = rec.xp
    calls = [(a, b, out) for a, b, out in rec.calls]

    def replay():
        for a, b, out in calls:
            np.matmul(a, b, out=out)
        return 0.0
    replay.shapes = [(tuple(a.shape), tuple(b.shape)) for a, b, _ in calls]
    replay.flops = sum(2 * a.shape[-1] * out.size for a, _, out in calls)
    return replay


def print_profile(prof, title):
    print(f"  {title}: {prof['total_ms']:.2f} ms per step in the profile, "
          f"GEMM {prof['gemm_ms']:.2f} ms ({100 * prof['gemm_ms'] / prof['total_ms']:.0f} %)")
    for p in sorted(prof["parts"], key=lambda p: -p["ms"]):
        print(f"    {p['part']:60s} {p['ms']:7.3f} ms {100 * p['ms'] / prof['total_ms']:5.1f} %")


# ----------------------------------------------------------------------------- numba's compile cost

FIRST_STEP = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
import common
common.set_threads({threads})
import numpy as np
t0 = time.perf_counter()
import bench_gpt
from ddp_scratch.nn import jit
jit.use("numba")
model, opt = bench_gpt.build_ours({batch})
rng = np.random.default_rng(1)
x, t = rng.integers(0, bench_gpt.V, ({batch}, model.Tmax)), rng.integers(0, bench_gpt.V, ({batch}, model.Tmax))
step = bench_gpt.ours_step_fn(model, opt, x, t)


def one():
    s = time.perf_counter()
    step()
    return time.perf_counter() - s


t1 = time.perf_counter()
first = one()
steady = min(one() for _ in range(3))
print(json.dumps({{"import_build_s": t1 - t0, "first_step_s": first, "steady_step_s": steady}}))
"""


def compile_cost(threads, batch):
    """numba's cost on a fresh machine and on a later run: the first training step in a new
    process with an empty NUMBA_CACHE_DIR (every kernel compiled), then again with that cache
    filled (kernels loaded from it), each against a steady step of the same process."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    code = FIRST_STEP.format(bench=here, threads=threads, batch=batch)
    out = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        for run in ("empty_cache", "cached"):
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
            if r.returncode:
                return {"error": r.stderr.strip().splitlines()[-1:]}
            out[run] = json.loads(r.stdout.strip().splitlines()[-1])
            out[run]["kernels_s"] = out[run]["first_step_s"] - out[run]["steady_step_s"]
    return out
