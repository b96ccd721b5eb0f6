"""`launch.py bench-comm`: an osu-style all-reduce micro-benchmark through ddp_scratch's Comm,
an alpha-beta fit of it, and projections of step time and efficiency to large worlds.

Measure (under mpiexec):  python -m ddp_scratch.study.bench_comm OUT.json [--algorithm=ring] [sizes...]
What is timed: MPI's Allreduce through Comm (default), or with --algorithm=ring the hand-written
ring of `comm.algorithm: ring` (parallel/ring.py), whose cost is exactly the model's
2(N-1)α + 2(N-1)/N·n·β: fitting both shows what MPI's own algorithms gain over it.
Warm-up iterations are skipped, ranks meet at a barrier before timing, and the time of an
operation is the slowest rank's mean (a collective is as slow as its last rank); rank 0 writes.
busbw is the bus bandwidth 2(N-1)/N x bytes / time, the figure NCCL-tests and OSU report.

Bandwidths are GB/s, gigabytes per second (not gigabits: divide Gbit/s by 8). Given projection
values outside what any interconnect has (check_given) are refused in one line, and the plot
draws only finite values with numeric warnings silenced, so nothing but the result reaches stderr.
"""
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from ..fsutil import atomic_write_bytes, atomic_write_text
from .comm_model import fit_alpha_beta, predict_allreduce, project_efficiency

DEFAULT_SIZES = [4 << 10 << k for k in range(0, 15, 2)]      # 4 KiB .. 64 MiB
GBPS = "GB/s (gigabytes per second; divide Gbit/s by 8)"
MAX_ALPHA_US = 1e6                        # 1 s of latency per message: no interconnect is that slow
BANDWIDTH_GBPS = (1e-3, 1e4)              # 1 MB/s .. 10 TB/s
BUSBW_NOTE = ("busbw = bus bandwidth 2(N-1)/N x bytes / time, in GB/s (gigabytes per second), the figure "
              "NCCL-tests and OSU report")


def check_given(alpha_us=None, bandwidth_gbps=None):
    """ValueError (one line, naming the flag) unless each value given is plausible for an
    interconnect: a latency up to 1 s, a bandwidth from 1 MB/s to 10 TB/s."""
    if alpha_us is not None:
        if not (math.isfinite(alpha_us) and alpha_us > 0):
            raise ValueError(f"--alpha-us: expected a positive number of microseconds of latency, e.g. 2, "
                             f"got {alpha_us:g}")
        if alpha_us > MAX_ALPHA_US:
            raise ValueError(f"--alpha-us: expected a latency of at most {MAX_ALPHA_US:,.0f} microseconds "
                             f"(1 s; an interconnect has about 1 to 100), got {alpha_us:g}")
    if bandwidth_gbps is not None:
        lo, hi = BANDWIDTH_GBPS
        if not (math.isfinite(bandwidth_gbps) and bandwidth_gbps > 0):
            raise ValueError(f"--bandwidth-gbps: expected a positive number of {GBPS}, e.g. 25, "
                             f"got {bandwidth_gbps:g}")
        if not lo <= bandwidth_gbps <= hi:
            raise ValueError(f"--bandwidth-gbps: expected {lo:g} to {hi:,.0f} {GBPS}, that is 1 MB/s to "
                             f"10 TB/s, got {bandwidth_gbps:g}")


def measure(comm, sizes, iters=None, warmup=3, algorithm="mpi"):
    out = []
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), dtype=np.float32)
        reduce = comm.all_reduce_sum_
        if algorithm == "ring":
            from ..parallel.ring import RingAllReduce
            reduce = RingAllReduce(comm, buf.size, buf.dtype).all_reduce_
        n = iters or max(5, min(200, (64 << 20) // max(nbytes, 1)))
        for _ in range(warmup):
            reduce(buf)
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            reduce(buf)
        mine = (time.perf_counter() - t0) / n
        worst = max(comm.allgather(mine))
        out.append({"bytes": buf.nbytes, "seconds": worst, "iters": n,
                    "busbw_GBps": 2 * (comm.size - 1) / comm.size * buf.nbytes / worst / 1e9})
    return out


R2_POOR = 0.9      # below this the alpha-beta fit explains too little of the timings to project with


def _params_text(alpha_s, beta_s_per_byte, plot=False):
    bw = 1 / beta_s_per_byte / 1e9 if beta_s_per_byte else float("inf")
    if plot:
        return f"α = {alpha_s * 1e6:.3g} µs, {bw:.3g} GB/s"
    return f"alpha = {alpha_s * 1e6:.3g} us, bandwidth {bw:.3g} {GBPS}"


def projection_text(res, plot=False) -> str:
    """Which alpha and bandwidth the projection used, in words (console, or plot with plot=True)."""
    p = res["projection_params"]
    params = _params_text(p["alpha_s"], p["beta_s_per_byte"], plot)
    if p["source"] == "given":
        return f"with the given {params}, not the fit" if plot else \
            f"projection with the given {params} from --alpha-us and --bandwidth-gbps, not the fit"
    return f"with the fit: {params}" if plot else f"projection with the fit: {params}"


def fit_warning(res) -> str | None:
    """A `warning:` line when the fit is poor (r2 below R2_POOR), saying what to do; else None."""
    r2 = res["fit"]["r2"]
    if r2 >= R2_POOR:
        return None
    used = ("the projection does not use it (given values)" if res["projection_params"]["source"] == "given"
            else "the projection built on it is unreliable")
    return (f"warning: poor alpha-beta fit (r2 {r2:.2f} < {R2_POOR}): the timings are noisy or outside the "
            f"ring model, and {used}; measure again on a quieter machine (no other jobs running), or "
            f"project with your interconnect's --alpha-us in microseconds and --bandwidth-gbps in {GBPS}")


def projection_lines(res) -> list[str]:
    """The projection for the console: per model its compute and gradients, then one row of
    predicted efficiency (%) per mode, weak and strong, under one row of world sizes."""
    out = []
    for name, p in res["projections"].items():
        worlds = [r["world_size"] for r in p["weak"]]
        cells = {mode: [f"{100 * r['efficiency']:.3g}" for r in p[mode]] for mode in ("weak", "strong")}
        # one width for every column, from the longest cell, and two spaces before each: columns
        # never run together (0.0233 and 0.00582 did)
        w = max(len(c) for c in [*map(str, worlds), *cells["weak"], *cells["strong"]])
        out += [f"{name}: compute {p['compute_s'] * 1e3:.3g} ms/step, gradients {_size_label(p['grad_bytes'])}; "
                "predicted parallel efficiency (%):",
                "  ranks " + "".join(f"  {n:>{w}}" for n in worlds)]
        out += [f"  {mode:<6}" + "".join(f"  {c:>{w}}" for c in cells[mode]) for mode in ("weak", "strong")]
    return out


def analyse(meas, world, out_dir, alpha=None, beta=None, compute=None, worlds=(8, 16, 32, 64, 128, 256, 512, 1024),
            environment=None, algorithm="mpi"):
    """Fit, plot measured vs predicted, and project efficiency for the given models.

    compute: {name: (compute_seconds_per_step, grad_bytes)}; alpha/beta override the fit (e.g. the
    cluster's InfiniBand: alpha ~ 2e-6 s, beta = 1 / 25e9 s/B). environment: describe() of the
    machine that measured (study/environment.py), shown in the plot's subtitle. Given alpha/beta
    must be plausible (check_given), else ValueError before anything is written."""
    check_given(None if alpha is None else alpha * 1e6,
                None if beta is None else (1 / beta / 1e9 if beta > 0 else 0.0))
    sizes = [m["bytes"] for m in meas]
    times = [m["seconds"] for m in meas]
    fit = fit_alpha_beta(sizes, times, world)
    a = fit.alpha if alpha is None else alpha
    b = fit.beta if beta is None else beta
    res = {"world_size": world, "algorithm": algorithm, "measured": meas,
           "fit": {"alpha_s": fit.alpha, "beta_s_per_byte": fit.beta, "r2": fit.r2,
                   "bandwidth_GBps": 1 / fit.beta / 1e9 if fit.beta else None,
                   "r2_poor_below": R2_POOR, "poor": fit.r2 < R2_POOR},
           "projection_params": {"alpha_s": a, "beta_s_per_byte": b,
                                 "source": "fit" if alpha is None and beta is None else "given"},
           "predicted_here": [predict_allreduce(s, world, fit.alpha, fit.beta) for s in sizes],
           "projections": {}, "environment": environment}
    res["projection_note"] = projection_text(res)
    for name, (ct, gbytes) in (compute or {}).items():
        res["projections"][name] = {"compute_s": ct, "grad_bytes": gbytes,
                                    "weak": project_efficiency(ct, gbytes, worlds, a, b, "weak"),
                                    "strong": project_efficiency(ct, gbytes, worlds, a, b, "strong")}
    os.makedirs(out_dir, exist_ok=True)
    files = _plot(res)
    atomic_write_text(os.path.join(out_dir, "bench_comm.json"), json.dumps(res, indent=1))
    for name, data in files.items():
        atomic_write_bytes(os.path.join(out_dir, name), data)
    return res


def _subtitle(res):
    env = res.get("environment") or {}
    gpus = [g.get("name") for g in env.get("gpus") or [] if g.get("name")]
    parts = [f"{len(gpus)} × {gpus[0]}" if gpus else None, env.get("cpu_model"),
             f"{res['world_size']} ranks", (env.get("date_utc") or "")[:10] or "date not recorded"]
    return " · ".join(str(p).replace("$", r"\$") for p in parts if p)


def _size_label(nbytes):
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= f:
            return f"{nbytes / f:.4g} {unit}"
    return f"{nbytes:g} B"


def _plot(res):
    """{file name: bytes}: bench_comm.png (300 dpi) and bench_comm.pdf, drawn without pyplot."""
    import io
    from matplotlib import rc_context
    from .plots import RC
    with rc_context(RC), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        fig = figure(res)
        out = {}
        for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=300, bbox_inches="tight", pad_inches=0.1, metadata=meta)
            out[f"bench_comm.{ext}"] = buf.getvalue()
    return out


def _drawable(sizes, seconds):
    """(sizes, microseconds) of the points a log-log axis can show: finite and positive."""
    pts = [(s, t * 1e6) for s, t in zip(sizes, seconds) if math.isfinite(t * 1e6) and 0 < t * 1e6 < 1e300]
    return [p[0] for p in pts], [p[1] for p in pts]


def figure(res):
    """The measured-vs-fit and projection figure of analyse()'s result (a matplotlib Figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    sizes = [m["bytes"] for m in res["measured"]]
    fit, pp = res["fit"], res["projection_params"]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("All-reduce: measured, alpha-beta fit, projection to large worlds",
                 fontweight="bold", fontsize=14)
    sub = fig.subfigures(1, 1)
    sub.suptitle(_subtitle(res), fontsize=9.5, color="0.3")
    ax, ax2 = sub.subplots(1, 2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    what = "hand-written ring" if res.get("algorithm") == "ring" else "MPI_Allreduce"
    ax.plot(*_drawable(sizes, [m["seconds"] for m in res["measured"]]), "o", color="#0072B2",
            label=f"measured: {what} ({res['world_size']} ranks, slowest rank)")
    ax.plot(*_drawable(sizes, res["predicted_here"]), "-", color="#E69F00",
            label=f"fit: {_params_text(fit['alpha_s'], fit['beta_s_per_byte'], True)}, r² = {fit['r2']:.2f}")
    if pp["source"] == "given":
        given = [predict_allreduce(s, res["world_size"], pp["alpha_s"], pp["beta_s_per_byte"]) for s in sizes]
        ax.plot(*_drawable(sizes, given), "--", color="0.4",
                label=f"given: {_params_text(pp['alpha_s'], pp['beta_s_per_byte'], True)}")
    ticks = sizes[::max(1, len(sizes) // 4)]
    ax.set_xticks(ticks, [_size_label(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="message size (gradient bytes)", ylabel="all-reduce time (µs)",
           title=f"{what[0].upper() + what[1:]} on {res['world_size']} ranks" + (f" — poor fit (r² < {R2_POOR})" if fit["poor"] else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=9)
    for i, (name, p) in enumerate(res["projections"].items()):
        color = ("#0072B2", "#009E73", "#CC79A7", "#D55E00")[i % 4]
        w = [r["world_size"] for r in p["weak"]]
        ax2.plot(w, [100 * r["efficiency"] for r in p["weak"]], "o-", color=color,
                 label=f"{name}, weak scaling")
        ax2.plot(w, [100 * r["efficiency"] for r in p["strong"]], "s--", color=color,
                 label=f"{name}, strong scaling")
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(w, [str(n) for n in w])
        ax2.minorticks_off()
    ax2.set(xlabel="ranks (world size, log scale)", ylabel="predicted parallel efficiency (%)",
            ylim=(0, 105), title="Projection (ring all-reduce, no overlap)\n" + projection_text(res, True))
    ax2.grid(True, alpha=0.3)
    if res["projections"]:
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=9, ncols=2)
    else:
        ax2.axis("off")
        ax2.text(0.5, 0.5, "no model to project\n(--configs names none)", transform=ax2.transAxes,
                 ha="center", va="center", color="0.35")
    return fig


def main(argv):
    from ..parallel.world import Comm
    out = argv[0]
    algorithm = next((x.split("=", 1)[1] for x in argv[1:] if x.startswith("--algorithm=")), "mpi")
    sizes = [int(s) for s in argv[1:] if not s.startswith("--")] or DEFAULT_SIZES
    comm = Comm(timeout_s=120)
    with np.errstate(all="ignore"):     # the sums in place of ones overflow to inf, silently in MPI
        meas = measure(comm, sizes, algorithm=algorithm)
    if comm.rank == 0:
        atomic_write_text(out, json.dumps({"world_size": comm.size, "algorithm": algorithm, "measured": meas}))
        what = "the hand-written ring all-reduce" if algorithm == "ring" else "all-reduce"
        print(f"{what} (sum of float32) on {comm.size} ranks: time = the slowest rank's mean; "
              f"{BUSBW_NOTE}", flush=True)
        for m in meas:
            print(f"{m['bytes']:>10d} B  {m['seconds'] * 1e6:10.1f} us  busbw {m['busbw_GBps']:.2f} GB/s", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:        # Ctrl-C through the launcher: stop quietly, write nothing
        os._exit(130)
