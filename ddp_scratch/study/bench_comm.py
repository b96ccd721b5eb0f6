"""`launch.py bench-comm`: an osu-style all-reduce micro-benchmark through ddp_scratch's Comm,
an alpha-beta fit of it, and projections of step time and efficiency to large worlds.

Measure (under mpiexec):  python -m ddp_scratch.study.bench_comm OUT.json [sizes...]
Warm-up iterations are skipped, ranks meet at a barrier before timing, and the time of an
operation is the slowest rank's mean (a collective is as slow as its last rank); rank 0 writes.
"""
import json
import os
import sys
import time

import numpy as np

from ..fsutil import atomic_write_bytes, atomic_write_text
from .comm_model import fit_alpha_beta, predict_allreduce, project_efficiency

DEFAULT_SIZES = [4 << 10 << k for k in range(0, 15, 2)]      # 4 KiB .. 64 MiB


def measure(comm, sizes, iters=None, warmup=3):
    out = []
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), dtype=np.float32)
        n = iters or max(5, min(200, (64 << 20) // max(nbytes, 1)))
        for _ in range(warmup):
            comm.all_reduce_sum_(buf)
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            comm.all_reduce_sum_(buf)
        mine = (time.perf_counter() - t0) / n
        worst = max(comm.allgather(mine))
        out.append({"bytes": buf.nbytes, "seconds": worst, "iters": n,
                    "busbw_GBps": 2 * (comm.size - 1) / comm.size * buf.nbytes / worst / 1e9})
    return out


def analyse(meas, world, out_dir, alpha=None, beta=None, compute=None, worlds=(8, 16, 32, 64, 128, 256, 512, 1024)):
    """Fit, plot measured vs predicted, and project efficiency for the given models.

    compute: {name: (compute_seconds_per_step, grad_bytes)}; alpha/beta override the fit (e.g. the
    cluster's InfiniBand: alpha ~ 2e-6 s, beta = 1 / 25e9 s/B)."""
    sizes = [m["bytes"] for m in meas]
    times = [m["seconds"] for m in meas]
    fit = fit_alpha_beta(sizes, times, world)
    a = fit.alpha if alpha is None else alpha
    b = fit.beta if beta is None else beta
    res = {"world_size": world, "measured": meas,
           "fit": {"alpha_s": fit.alpha, "beta_s_per_byte": fit.beta, "r2": fit.r2,
                   "bandwidth_GBps": 1 / fit.beta / 1e9 if fit.beta else None},
           "projection_params": {"alpha_s": a, "beta_s_per_byte": b,
                                 "source": "fit" if alpha is None and beta is None else "given"},
           "predicted_here": [predict_allreduce(s, world, fit.alpha, fit.beta) for s in sizes],
           "projections": {}}
    for name, (ct, gbytes) in (compute or {}).items():
        res["projections"][name] = {"compute_s": ct, "grad_bytes": gbytes,
                                    "weak": project_efficiency(ct, gbytes, worlds, a, b, "weak"),
                                    "strong": project_efficiency(ct, gbytes, worlds, a, b, "strong")}
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "bench_comm.json"), json.dumps(res, indent=1))
    _plot(res, out_dir)
    return res


def _plot(res, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import io
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [m["bytes"] for m in res["measured"]]
    axes[0].loglog(sizes, [m["seconds"] * 1e6 for m in res["measured"]], "o", label="measured")
    axes[0].loglog(sizes, [t * 1e6 for t in res["predicted_here"]], "-",
                   label=f"alpha-beta fit (r2={res['fit']['r2']:.3f})")
    axes[0].set(xlabel="bytes", ylabel="all-reduce time (us)", title=f"{res['world_size']} ranks")
    axes[0].legend()
    for name, p in res["projections"].items():
        w = [r["world_size"] for r in p["weak"]]
        axes[1].semilogx(w, [r["efficiency"] for r in p["weak"]], "o-", label=f"{name} weak")
        axes[1].semilogx(w, [r["efficiency"] for r in p["strong"]], "s--", label=f"{name} strong")
    axes[1].set(xlabel="ranks", ylabel="predicted parallel efficiency", ylim=(0, 1.05),
                title="projection (ring all-reduce, no overlap)")
    if res["projections"]:
        axes[1].legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(os.path.join(out_dir, "bench_comm.png"), buf.getvalue())


def main(argv):
    from ..parallel.world import Comm
    out = argv[0]
    sizes = [int(s) for s in argv[1:]] or DEFAULT_SIZES
    comm = Comm(timeout_s=120)
    meas = measure(comm, sizes)
    if comm.rank == 0:
        atomic_write_text(out, json.dumps({"world_size": comm.size, "measured": meas}))
        for m in meas:
            print(f"{m['bytes']:>10d} B  {m['seconds'] * 1e6:10.1f} us  busbw {m['busbw_GBps']:.2f} GB/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
