"""Poster-ready plots of a scaling report (rows of study/report.py's aggregate).

Every figure comes as a 300 dpi PNG and a vector PDF of the same name; labels are words with
units ("MLP, weak scaling", "throughput (k samples/s)"), the hardware and date sit in a subtitle,
legends sit outside the axes and every linear y axis starts at 0 with headroom, so nothing is clipped or
covered. Only measured quantities are plotted: the energy plot appears only for measured energy,
because an estimate from FLOP counts or from run time x nominal power only restates FLOP/s.

Throughput is shown in each series' own unit: tokens/s for a series that records tokens_per_s (a
GPT, whose "samples" are windows), samples/s otherwise, one panel per unit, so a slow unit is never
flattened against a fast one. Ideal scaling (the baseline's rate x N/b) is drawn dashed in its
series' colour, with a legend entry of its own. Rate plots are log-log (see rate_plot): the ideal
is a straight line. Oversubscribed points (more ranks x threads than cores: they measure the
sharing, not scaling) are ringed and named in the legend; "mean ± std over repeats" is said only
where some point has two repeats or more.

Matplotlib is imported lazily and drawn on the Agg canvas, never through pyplot: importing this
module stays cheap for ranks and never touches a display or the global backend.
"""
from __future__ import annotations

import io
import math
import warnings
from collections import defaultdict

from .runfile import clean, series_key

__all__ = ["render_plots", "series_labels", "KNOWN_PLOTS", "DPI"]

DPI = 300
NAMES = ("throughput", "efficiency", "time_breakdown", "flops", "energy", "comm_vs_bytes")
KNOWN_PLOTS = tuple(f"{n}.{ext}" for n in (*NAMES, "flops_energy") for ext in ("png", "pdf"))
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")  # Okabe-Ito
MARKERS = "osD^v<>"
PHASES = (("compute_s", "compute (batch, forward, backward)", "#0072B2"),
          ("comm_s", "communication (all-reduce)", "#E69F00"),
          ("wait_s", "waiting for slower ranks", "#D55E00"),
          ("other_s", "other (optimizer, host syncs)", "#BBBBBB"))
MODEL_NAMES = {"mlp": "MLP", "gpt": "GPT", "cnn": "CNN", "transformer": "Transformer"}
SOURCES = {"measured-rapl": "RAPL CPU-package counters", "measured-nvml": "NVML GPU energy counter"}
RC = {"font.size": 11, "axes.titlesize": 11.5, "axes.labelsize": 11, "xtick.labelsize": 10,
      "ytick.labelsize": 10, "legend.fontsize": 10, "axes.spines.top": False,
      "axes.spines.right": False, "pdf.fonttype": 42, "svg.fonttype": "none"}
PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
            (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))
WORDS = {"k": "thousand ", "M": "million ", "G": "billion ", "T": "trillion "}   # for counted units


def _tx(s, limit=120) -> str:
    """User text safe for matplotlib: one line, and '$' never starts mathtext."""
    return clean(s, limit).replace("$", r"\$")


def series_labels(rows) -> dict:
    """{(mode, config, setting): "MLP, weak scaling"}, the compared setting after it where there is
    one ("MLP, weak scaling, comm.algorithm=ring"); the config is added where two series would read
    alike."""
    base = {}
    for r in rows:
        model = clean(r["model"], 40)
        k = series_key(r)
        base.setdefault(k, f"{MODEL_NAMES.get(model.lower(), model)}, {r['mode']} scaling")
    count = defaultdict(int)
    for k, v in base.items():
        count[(v, k[2])] += 1
    return {k: (v if count[(v, k[2])] == 1 else f"{v} ({clean(k[1], 40)})") + (f", {clean(k[2], 80)}" if k[2] else "")
            for k, v in base.items()}


def _finite(values):
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _nan(x):
    return float("nan") if x is None else float(x)


def _prefix(values):
    """(factor, SI prefix) that brings the largest finite value into [1, 1000)."""
    top = max((abs(v) for v in _finite(values)), default=0.0)
    if top == 0:
        return 1.0, ""
    return next(((f, p) for f, p in PREFIXES if top >= f), PREFIXES[-1])


def _y_from_zero(ax, values, headroom=1.15, at_least=0.0):
    top = max(_finite(values) + [at_least])
    ax.set_ylim(0, top * headroom if top > 0 else 1.0)


def _log_y(ax, values):
    """A log y axis over the positive values with some room, ticks at 1, 2, 5 x 10^k in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    pos = [v for v in _finite(values) if v > 0]
    if not pos:
        return _y_from_zero(ax, values)
    lo, hi = min(pos), max(pos)
    ax.set_yscale("log")
    ax.set_ylim(lo / 1.4, hi * 1.4)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))


def _ranks_axis(ax, worlds):
    if len(worlds) > 1:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks (world size, log scale)")
    else:
        ax.set_xlim(worlds[0] * 0.5, worlds[0] * 1.5)
        ax.set_xlabel("ranks (world size)")
    ax.minorticks_off()
    ax.set_xticks(worlds)
    ax.set_xticklabels([str(w) for w in worlds])
    ax.grid(True, alpha=0.3)


class _Plotter:
    def __init__(self, rows, subtitle):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        self.Figure, self.Canvas, self.Line2D = Figure, FigureCanvasAgg, Line2D
        self.rows, self.subtitle = rows, _tx(subtitle, 160)
        self.worlds = sorted({r["world_size"] for r in rows})
        self.series = defaultdict(list)
        for r in rows:
            self.series[series_key(r)].append(r)
        self.labels = series_labels(rows)
        bases = {k[:2] for k in self.series}
        if len(bases) == 1 and all(k[2] for k in self.series):
            # settings compared in one sweep: the legends name the setting alone, the subtitle the rest
            k0 = next(iter(self.series))
            self.subtitle = _tx(self.labels[k0][:-len(", " + clean(k0[2], 80))], 60) + " · " + self.subtitle
            self.labels = {k: clean(k[2], 80) for k in self.series}
        self.repeats = max(r["repeats"] for r in rows) >= 2
        self.over_handle = None
        self.style = {k: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)])
                      for i, k in enumerate(self.series)}
        self.out = {}

    def figure(self, title, ncols=1, width=6.4, height=4.4):
        self.over_handle = None
        fig = self.Figure(figsize=(width, height), layout="constrained")
        self.Canvas(fig)
        fig.suptitle(_tx(title), fontweight="bold", fontsize=14)
        sub = fig.subfigures(1, 1)
        sub.suptitle(self.subtitle, fontsize=9.5, color="0.3")
        return fig, sub, sub.subplots(1, ncols, squeeze=False)[0]

    def legend(self, sub, handles, width=6.4):
        """Below the axes, in two columns where the longest label fits half the figure's width."""
        handles = handles + ([self.over_handle] if self.over_handle else [])
        wide = max(len(h.get_label()) for h in handles) * 0.075 > width / 2 - 0.7
        sub.legend(handles=handles, loc="outside lower center", ncols=1 if wide else min(2, len(handles)),
                   frameon=False)

    def save(self, fig, name):
        for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=DPI, bbox_inches="tight", pad_inches=0.1, metadata=meta)
            self.out[f"{name}.{ext}"] = buf.getvalue()

    def lines(self, ax, key, scale, rows_of=None, keys=None):
        """Mean ± std per series (those in keys, default all) as error-bar lines; returns the legend
        handles and plotted values."""
        handles, values = [], []
        for k, rs in self.series.items():
            if keys is not None and k not in keys:
                continue
            rs = rs if rows_of is None else rows_of(rs)
            if not rs:
                continue
            color, marker = self.style[k]
            y = [_nan(r[key + "_mean"]) / scale for r in rs]
            e = [_nan(r[key + "_std"]) / scale for r in rs]
            handles.append(ax.errorbar([r["world_size"] for r in rs], y, yerr=e if self.repeats else None,
                                       color=color, marker=marker, ms=6, lw=1.8, capsize=3,
                                       label=_tx(self.labels[k], 70)))
            values += [a + (b if math.isfinite(b) else 0.0) for a, b in zip(y, e)]
            self.ring(ax, [(r["world_size"], v) for r, v in zip(rs, y) if r.get("oversubscribed")])
        return handles, values

    def ring(self, ax, points):
        """A red ring around each oversubscribed point, and one legend entry for the figure."""
        if not points:
            return
        ax.scatter([x for x, _ in points], [y for _, y in points], s=260, facecolors="none",
                   edgecolors="#D55E00", linewidths=1.6, zorder=5)
        self.over_handle = self.Line2D([], [], ls="none", marker="o", ms=13, mfc="none", mec="#D55E00", mew=1.6,
                                       label="oversubscribed: ranks shared cores (not scaling)")

    def ideal(self, ax, key, scale, keys):
        """Ideal scaling per series, dashed in its colour: the baseline rate x N/b, a straight line
        on the log-log axes of the rate plots. Returns one legend handle per series (none for a
        series with one world) and the plotted values."""
        handles, values = [], []
        for k in keys:
            rs = self.series[k]
            base = next(r for r in rs if r["world_size"] == r["baseline_world"])
            lo, hi = min(r["world_size"] for r in rs), max(r["world_size"] for r in rs)
            rate = _nan(base[key + "_mean"]) / scale
            if hi == lo or not math.isfinite(rate):
                continue
            xs = [lo, hi]
            ys = [rate * x / base["baseline_world"] for x in xs]
            ax.plot(xs, ys, ls="--", lw=1.2, color=self.style[k][0], alpha=0.8)
            handles.append(self.Line2D([], [], ls="--", lw=1.2, color=self.style[k][0], alpha=0.8,
                                       label=f"ideal: linear from N = {base['baseline_world']}"
                                       if len(self.series) == 1 else _tx(f"{self.labels[k]}: ideal (linear)", 90)))
            values += ys
        return handles, values

    def over_repeats(self):
        return " (mean ± std over repeats)" if self.repeats else ""

    def unit_groups(self):
        """[(key, unit, series keys)]: tokens/s for the series that record tokens_per_s at every
        point, samples/s for the others; one entry per unit in use."""
        groups = defaultdict(list)
        for k, rs in self.series.items():
            tokens = all(r["tokens_per_s_mean"] is not None for r in rs)
            groups[("tokens_per_s", "tokens/s") if tokens else ("samples_per_s", "samples/s")].append(k)
        return [(key, unit, ks) for (key, unit), ks in sorted(groups.items(), reverse=True)]

    def rate_plot(self, name, title, what, groups, words=False):
        """One panel per (key, unit, series) group, each with its own scale, plus ideal scaling."""
        width = 6.4 if len(groups) == 1 else 11.0
        entries = 2 * len(self.series) if len(self.worlds) > 1 else len(self.series)     # each with its ideal
        fig, sub, axes = self.figure(title, ncols=len(groups), width=width,
                                     height=4.4 + 0.25 * max(0, entries - 4))     # the axes keep their height
        handles = []
        for ax, (key, unit, keys) in zip(axes, groups):
            f, p = _prefix([r[key + "_mean"] for k in keys for r in self.series[k]])
            if words:   # "thousand samples/s"; no "milli-samples": below 1/s stays in samples/s
                f, p = (f, WORDS[p]) if p in WORDS else (1.0, "")
            values = []
            for k in keys:                  # each series' entry, then its ideal's
                got, measured = self.lines(ax, key, f, keys=[k])
                ideal, top = self.ideal(ax, key, f, [k])
                handles += got + ideal
                values += measured + top
            worlds = sorted({r["world_size"] for k in keys for r in self.series[k]})
            if len(worlds) > 1:
                # Log-log: ideal scaling (rate proportional to N) is a straight line, each doubling
                # of ranks is one step along x, and a point's shortfall from ideal is its vertical
                # distance at any rate, from 1 to 64 ranks alike. (Log x with linear y drew the ideal
                # as a curve; linear x would crowd 1, 2 and 4 ranks against the axis.)
                _log_y(ax, values)
            else:
                _y_from_zero(ax, values)
            if len(groups) > 1:         # the panel's title names its unit; a short axis label
                ax.set_title(f"{unit.replace('/s', ' per second')}, all ranks", fontsize=11)
                ax.set_ylabel(f"{what} ({p}{unit})")
            else:
                ax.set_ylabel(f"{what}, all ranks ({p}{unit})")
            _ranks_axis(ax, worlds)
        self.legend(sub, handles, width)
        self.save(fig, name)

    def efficiency(self):
        fig, sub, (ax,) = self.figure("Parallel efficiency" + self.over_repeats())
        handles, values = self.lines(ax, "efficiency", 0.01)
        handles.append(ax.axhline(100.0, color="0.2", ls="--", lw=1.2, label="ideal (100 %)"))
        _y_from_zero(ax, values, 1.1, at_least=100.0)
        ax.set_ylabel("parallel efficiency (% of ideal)")
        _ranks_axis(ax, self.worlds)
        self.legend(sub, handles)
        self.save(fig, "efficiency")

    def time_breakdown(self):
        steps = [r["step_time_s_mean"] for r in self.rows]
        f, p = _prefix(steps)
        unit = {"": "s", "m": "ms", "µ": "µs", "n": "ns"}.get(p, "s")
        f = f if unit != "s" else 1.0
        n = len(self.series)
        fig, sub, axes = self.figure("Time per training step", ncols=n, width=max(6.4, 4.2 * n), height=4.6)
        all_tops = []
        for ax, (k, rs) in zip(axes, self.series.items()):
            pos = list(range(len(rs)))
            bottom = [0.0] * len(rs)
            for key, label, color in PHASES:
                h = [max(0.0, _nan(r[key]) / f) if r[key] is not None else 0.0 for r in rs]
                ax.bar(pos, h, 0.6, bottom=bottom, color=color, label=label, edgecolor="white", lw=0.5)
                bottom = [a + b for a, b in zip(bottom, h)]
            step = [_nan(r["step_time_s_mean"]) / f for r in rs]
            std = [_nan(r["step_time_s_std"]) / f for r in rs]
            ax.hlines(step, [x - 0.36 for x in pos], [x + 0.36 for x in pos], colors="k", lw=2,
                      label="measured step time" + (" (± std over repeats)" if self.repeats else ""))
            if self.repeats:
                ax.errorbar(pos, step, yerr=std, fmt="none", ecolor="k", capsize=4, lw=1)
            tops = [max(b, s + (d if math.isfinite(d) else 0.0)) for b, s, d in zip(bottom, step, std)]
            for x, s, t in zip(pos, step, tops):
                ax.annotate(f"{s:.3g}", (x, t), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=9)
            all_tops.append(tops)
            _y_from_zero(ax, tops, 1.18)
            ax.set_xticks(pos)
            ax.set_xticklabels([f"{r['world_size']}" + ("\noversub-\nscribed" if r.get("oversubscribed") else "")
                                for r in rs])
            ax.set_xlim(-0.6 - 0.5 * (len(rs) == 1), len(rs) - 0.4 + 0.5 * (len(rs) == 1))
            ax.set_xlabel("ranks (world size)")
            ax.set_ylabel(f"time per step ({unit})")
            ax.set_title(_tx(self.labels[k], 60))
            ax.grid(True, axis="y", alpha=0.3)
        if n > 1 and len({k[:2] for k in self.series}) == 1:     # settings of one sweep: one scale to compare
            for ax in axes:
                _y_from_zero(ax, [t for tops in all_tops for t in tops], 1.18)
        handles, labels = axes[0].get_legend_handles_labels()
        sub.legend(handles, labels, loc="outside lower center", ncols=2 if n == 1 else 3, frameon=False)
        self.save(fig, "time_breakdown")

    def energy(self):
        def measured(rs):
            return [r for r in rs if r["energy_measured"]]
        pts = measured(self.rows)
        if not _finite([r["joules_per_sample_mean"] for r in pts] + [r["ops_per_joule_mean"] for r in pts]):
            return
        srcs = sorted({s for r in pts for s in r["energy_source"].split("|")})
        title = "Measured energy (" + ", ".join(SOURCES.get(s, s) for s in srcs) + ")"
        fig, sub, (ax1, ax2) = self.figure(title, ncols=2, width=10.5)
        for ax, key, unit, what in ((ax1, "joules_per_sample", "J", "energy per training sample"),
                                    (ax2, "ops_per_joule", "FLOP/J", "energy efficiency")):
            f, p = _prefix([r[key + "_mean"] for r in pts])
            handles, values = self.lines(ax, key, f, measured)
            _y_from_zero(ax, values)
            ax.set_ylabel(f"{what} ({p}{unit})")
            ax.set_title(_tx(what), fontsize=11)
            _ranks_axis(ax, sorted({r["world_size"] for r in pts}))
        self.legend(sub, handles)
        self.save(fig, "energy")


    def comm_vs_bytes(self):
        """Communication time per step against the bytes a rank sent per step: one line per
        series (setting) through its rank counts, each point named by its N. One rank sends
        nothing and is left out; no figure where no point sent anything."""
        pts = {k: [r for r in rs if (r.get("comm_bytes_per_step_mean") or 0) > 0 and r["comm_s"] is not None]
               for k, rs in self.series.items()}
        pts = {k: rs for k, rs in pts.items() if rs}
        if not pts:
            return
        rows = [r for rs in pts.values() for r in rs]
        fx, px = _prefix([r["comm_bytes_per_step_mean"] for r in rows])
        fy, py = _prefix([r["comm_s"] + (r.get("comm_s_std") or 0) for r in rows])
        unit = {"": "s", "m": "ms", "µ": "µs", "n": "ns"}.get(py, "s")
        fy = fy if unit != "s" else 1.0
        fig, sub, (ax,) = self.figure("Communication time vs bytes on the wire" + self.over_repeats(), height=4.8)
        handles, xs, ys = [], [], []
        for k, rs in pts.items():
            color, marker = self.style[k]
            x = [r["comm_bytes_per_step_mean"] / fx for r in rs]
            y = [r["comm_s"] / fy for r in rs]
            e = [_nan(r.get("comm_s_std")) / fy for r in rs]
            src = {s for r in rs for s in (r.get("comm_bytes_per_step_source") or "").split("|") if s}
            how = "counted" if src == {"counted"} else "modelled" if src == {"model"} else "/".join(sorted(src))
            label = self.labels[k] + (f" (bytes {how})" if how else "")
            handles.append(ax.errorbar(x, y, yerr=e if self.repeats else None, color=color, marker=marker, ms=7,
                                       lw=1.5, capsize=3, mfc=color if how == "counted" else "white",
                                       label=_tx(label, 90)))
            for r, a, b in zip(rs, x, y):
                ax.annotate(f"N = {r['world_size']}", (a, b), xytext=(6, 4), textcoords="offset points",
                            fontsize=9, color=color)
            xs += x
            ys += [a + (b if math.isfinite(b) else 0.0) for a, b in zip(y, e)]
        ax.set_xlim(0, max(xs) * 1.25)
        _y_from_zero(ax, ys, 1.25)
        ax.set_xlabel(f"bytes one rank sends per step ({px}B)")
        ax.set_ylabel(f"communication time per step ({unit})")
        ax.grid(True, alpha=0.3)
        if any(h.get_label().endswith("(bytes modelled)") for h in handles):
            handles.append(self.Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=7,
                                       label="bytes modelled: 2(N−1)/N × gradient (MPI's own algorithm is hidden)"))
        if any(r["world_size"] == 1 for r in self.rows):
            ax.text(0.01, 0.99, "1 rank sends nothing: not shown", transform=ax.transAxes, ha="left", va="top",
                    fontsize=9, color="0.35")
        self.legend(sub, handles)
        self.save(fig, "comm_vs_bytes")


def render_plots(rows: list[dict], subtitle: str = "") -> dict[str, bytes]:
    """{file name: bytes} of every plot (PNG and PDF) for the aggregated rows."""
    if not rows:
        raise ValueError("no rows to plot")
    import numpy as np
    from matplotlib import rc_context
    with rc_context(RC), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)     # extreme valid values: no stderr noise
        p = _Plotter(rows, subtitle)
        p.rate_plot("throughput", "Throughput" + p.over_repeats(), "throughput", p.unit_groups(),
                    words=True)
        p.efficiency()
        p.time_breakdown()
        p.rate_plot("flops", "Achieved FLOP/s (model FLOPs ÷ measured time)", "FLOP/s",
                    [("flops_per_s", "FLOP/s", list(p.series))])
        p.energy()
        p.comm_vs_bytes()
    return p.out
