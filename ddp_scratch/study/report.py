"""Aggregate per-run JSON files of a scaling sweep into CSV, plots and markdown.

Layout: ``DIR/runs/<name>.json`` (one file per (mode, config, world, repeat)),
outputs ``DIR/scaling.csv``, ``DIR/plots/*.png`` and ``DIR/report.md``.

Definitions (T = a run's median-across-ranks per-step time, b = baseline world,
the smallest world of the series, normally 1; T_b = harmonic mean over its
repeats, i.e. the mean *rate*, so the baseline row's mean efficiency is 1):
    strong: speedup = T_b / T_N,          efficiency = b*T_b / (N*T_N)
    weak:   speedup = N*T_b / (b*T_N),    efficiency = T_b / T_N
so in both modes speedup is the throughput ratio and efficiency = speedup*b/N.
Each repeat at N is compared with the baseline *mean* (repeats are not paired)
and the row reports mean and sample std (ddof=1; 0 for a single repeat).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from ..fsutil import atomic_write_bytes, atomic_write_text

__all__ = ["load_runs", "validate_run", "aggregate", "write_csv", "make_plots",
           "write_report"]

STAT_KEYS = ("step_time_s", "compute_s", "comm_s", "wait_s", "peak_mem_bytes")
ENERGY_KEYS = ("source", "joules_per_step", "joules_per_epoch", "ops_per_joule",
               "mean_watts")
REQUIRED = ("mode", "config", "model", "world_size", "repeat", "global_batch",
            "per_rank_batch", "steps", "samples_per_s", "tokens_per_s",
            "flops_per_s", "mfu", "energy") + STAT_KEYS

ENERGY_LABELS = {
    "measured-rapl": "measured: Intel RAPL package counters (host-wide, all processes)",
    "measured-nvml": "measured: NVML GPU total-energy counter (whole device)",
    "estimated-horowitz45nm": "ESTIMATED, not measured: FLOP and DRAM-byte counts x "
                              "Horowitz ISSCC'14 45 nm per-op energies (dynamic "
                              "energy only, a lower bound)",
    "estimated-tdp": "ESTIMATED, not measured: run time x nominal TDP/power limit",
}


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_run(run, name: str) -> dict:
    """Raise ValueError naming ``name`` if ``run`` does not follow the schema."""
    def bad(msg):
        raise ValueError(f"{name}: {msg}")
    if not isinstance(run, dict):
        bad(f"expected a JSON object, got {type(run).__name__}")
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        bad(f"missing keys {missing}")
    if run["mode"] not in ("strong", "weak"):
        bad(f"mode must be 'strong' or 'weak', got {run['mode']!r}")
    if not isinstance(run["world_size"], int) or run["world_size"] < 1:
        bad(f"world_size must be an int >= 1, got {run['world_size']!r}")
    for k in ("samples_per_s", "flops_per_s"):
        if not _is_num(run[k]):
            bad(f"{k} must be a number, got {run[k]!r}")
    for k in STAT_KEYS:
        s = run[k]
        if not isinstance(s, dict) or not all(_is_num(s.get(q)) for q in ("min", "median", "max")):
            bad(f"{k} must be an object with numeric min/median/max, got {s!r}")
    if not isinstance(run["energy"], dict):
        bad("energy must be an object")
    missing = [k for k in ENERGY_KEYS if k not in run["energy"]]
    if missing:
        bad(f"energy is missing keys {missing}")
    return run


def load_runs(directory) -> list[dict]:
    """Read and validate every ``DIR/runs/*.json``, sorted by file name."""
    run_dir = Path(directory) / "runs"
    files = sorted(run_dir.glob("*.json"))
    if not files:
        raise ValueError(f"no run files found in {run_dir}")
    runs = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f}: invalid JSON: {e}") from e
        runs.append(validate_run(data, str(f)))
    return runs


def _mean_std(values):
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (mode, config, world_size), sorted; see module docstring."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["mode"], r["config"], r["world_size"])].append(r)
    series: dict[tuple, list[int]] = defaultdict(list)
    for mode, config, n in groups:
        series[(mode, config)].append(n)
    rows = []
    for (mode, config), worlds in sorted(series.items()):
        b = 1 if 1 in worlds else min(worlds)
        base = groups[(mode, config, b)]
        t_b = len(base) / sum(1.0 / r["step_time_s"]["median"] for r in base)
        for n in sorted(worlds):
            rs = sorted(groups[(mode, config, n)], key=lambda r: r["repeat"])
            ts = [r["step_time_s"]["median"] for r in rs]
            speedups = [t_b / t if mode == "strong" else n * t_b / (b * t) for t in ts]
            row = {"mode": mode, "config": config, "model": rs[0]["model"],
                   "world_size": n, "baseline_world": b, "repeats": len(rs),
                   "global_batch": rs[0]["global_batch"],
                   "per_rank_batch": rs[0]["per_rank_batch"]}

            def put(name, vals):
                row[name + "_mean"], row[name + "_std"] = _mean_std(vals)
            put("samples_per_s", [r["samples_per_s"] for r in rs])
            put("tokens_per_s", [r["tokens_per_s"] for r in rs])
            put("step_time_s", ts)
            put("speedup", speedups)
            put("efficiency", [s * b / n for s in speedups])
            for k in ("compute_s", "comm_s", "wait_s"):
                row[k] = _mean_std(r[k]["median"] for r in rs)[0]
            put("flops_per_s", [r["flops_per_s"] for r in rs])
            row["mfu_mean"] = _mean_std(r["mfu"] for r in rs)[0]
            put("ops_per_joule", [r["energy"]["ops_per_joule"] for r in rs])
            put("joules_per_step", [r["energy"]["joules_per_step"] for r in rs])
            row["joules_per_epoch_mean"] = _mean_std(r["energy"]["joules_per_epoch"] for r in rs)[0]
            row["mean_watts_mean"] = _mean_std(r["energy"]["mean_watts"] for r in rs)[0]
            row["peak_mem_bytes_max"] = max(r["peak_mem_bytes"]["max"] for r in rs)
            row["energy_source"] = "|".join(sorted({r["energy"]["source"] for r in rs}))
            rows.append(row)
    return rows


def write_csv(rows: list[dict], path) -> str:
    """CSV with the union of row keys (first-seen order); None -> empty cell."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return atomic_write_text(path, buf.getvalue())


def _series(rows):
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[f"{r['mode']}:{r['config']}"].append(r)
    return out


def _nan(x):
    return float("nan") if x is None else float(x)


def _ranks_axis(ax, worlds):
    if len(worlds) > 1:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(worlds)
    ax.set_xticklabels([str(w) for w in worlds])
    ax.set_xlabel("ranks (world size)")
    ax.grid(True, alpha=0.3)


def make_plots(rows: list[dict], outdir) -> list[str]:
    """Write throughput, efficiency, time-breakdown and FLOP/s+ops/J PNGs."""
    # Lazy and pyplot-free: importing this module must stay cheap for ranks,
    # and an explicit Agg canvas never touches a display or global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no rows to plot")
    outdir = Path(outdir)
    worlds = sorted({r["world_size"] for r in rows})
    ser = _series(rows)
    paths = []

    def new(ncols=1, width=6.0):
        fig = Figure(figsize=(width * ncols, 4.2))
        FigureCanvasAgg(fig)
        return fig, fig.subplots(1, ncols, squeeze=False)[0]

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        paths.append(atomic_write_bytes(outdir / name, buf.getvalue()))

    def bars(ax, key, scale=1.0):
        colors = {}
        for label, rs in ser.items():
            x = [r["world_size"] for r in rs]
            y = [_nan(r[key + "_mean"]) * scale for r in rs]
            e = [_nan(r[key + "_std"]) * scale for r in rs]
            cont = ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
            colors[label] = cont.lines[0].get_color()
        return colors

    fig, (ax,) = new()
    colors = bars(ax, "samples_per_s")
    for label, rs in ser.items():
        base = next(r for r in rs if r["world_size"] == r["baseline_world"])
        xs = [r["world_size"] for r in rs]
        ideal = [_nan(base["samples_per_s_mean"]) * n / base["baseline_world"] for n in xs]
        ax.plot(xs, ideal, "--", color=colors[label], alpha=0.6, label=f"{label} ideal")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("samples / s")
    ax.set_title("Throughput (mean ± std over repeats)")
    _ranks_axis(ax, worlds)
    ax.legend(fontsize=8)
    save(fig, "throughput.png")

    fig, (ax,) = new()
    bars(ax, "efficiency")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    top = max([_nan(r["efficiency_mean"]) + _nan(r["efficiency_std"]) for r in rows] + [1.0])
    ax.set_ylim(0, max(1.1, top * 1.05) if math.isfinite(top) else 1.1)
    ax.set_ylabel("parallel efficiency")
    ax.set_title("Parallel efficiency vs baseline world")
    _ranks_axis(ax, worlds)
    ax.legend(fontsize=8)
    save(fig, "efficiency.png")

    fig, axes = new(ncols=len(ser), width=4.5)
    for ax, (label, rs) in zip(axes, ser.items()):
        x = [str(r["world_size"]) for r in rs]
        bottom = [0.0] * len(rs)
        for k, color in (("compute_s", "tab:blue"), ("comm_s", "tab:orange"),
                         ("wait_s", "tab:gray")):
            h = [_nan(r[k]) * 1e3 for r in rs]
            ax.bar(x, h, bottom=bottom, color=color, label=k[:-2])
            bottom = [a + (0.0 if math.isnan(c) else c) for a, c in zip(bottom, h)]
        ax.set_title(label)
        ax.set_xlabel("ranks")
        ax.set_ylabel("ms per step (median over ranks)")
        ax.legend(fontsize=8)
    save(fig, "time_breakdown.png")

    fig, (ax1, ax2) = new(ncols=2)
    bars(ax1, "flops_per_s", 1e-9)
    ax1.set_ylabel("GFLOP/s (all ranks)")
    ax1.set_title("Achieved FLOP/s")
    bars(ax2, "ops_per_joule")
    ax2.set_ylabel("FLOP / J")
    srcs = sorted({r["energy_source"] for r in rows})
    ax2.set_title("Energy efficiency [" + ", ".join(srcs) + "]", fontsize=9)
    for ax in (ax1, ax2):
        _ranks_axis(ax, worlds)
        ax.legend(fontsize=8)
    save(fig, "flops_energy.png")
    return [str(p) for p in paths]


def _fmt(mean, std=None, scale=1.0, spec=".4g"):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    s = format(mean * scale, spec)
    return s if not std else f"{s} ± {format(std * scale, spec)}"


def write_report(directory) -> str:
    """load_runs + aggregate + CSV + plots + ``DIR/report.md``; returns its path."""
    d = Path(directory)
    runs = load_runs(d)
    rows = aggregate(runs)
    csv_path = write_csv(rows, d / "scaling.csv")
    plots = make_plots(rows, d / "plots")
    sources = sorted({r["energy"]["source"] for r in runs})
    lines = [
        "# Scaling report", "",
        f"{len(runs)} runs from `runs/`; models: "
        f"{', '.join(sorted({r['model'] for r in runs}))}; series: "
        f"{', '.join(sorted({r['mode'] + ':' + r['config'] for r in runs}))}.", "",
        "T = per-run median-across-ranks step time. Speedup and efficiency are "
        "relative to `baseline_world` (world 1 when present, else the smallest "
        "world of the series): strong efficiency = b·T_b/(N·T_N), weak "
        "efficiency = T_b/T_N. Values are mean ± sample std over repeats. "
        f"Full numbers: `{os.path.relpath(csv_path, d)}`.", "",
        "## Energy source", "",
    ]
    for s in sources:
        lines.append(f"- `{s}`: {ENERGY_LABELS.get(s, 'as labelled by the trainer')}")
    if any(not s.startswith("measured") for s in sources):
        lines += ["", "**Some energy figures below are estimates, not measurements.**"]
    head = ["mode", "config", "N", "base", "reps", "samples/s", "step ms", "speedup",
            "efficiency", "compute ms", "comm ms", "wait ms", "GFLOP/s", "MFU",
            "FLOP/J", "J/step", "energy source"]
    lines += ["", "## Results", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["mode"], r["config"], str(r["world_size"]), str(r["baseline_world"]),
                 str(r["repeats"]),
                 _fmt(r["samples_per_s_mean"], r["samples_per_s_std"]),
                 _fmt(r["step_time_s_mean"], r["step_time_s_std"], 1e3),
                 _fmt(r["speedup_mean"], r["speedup_std"]),
                 _fmt(r["efficiency_mean"], r["efficiency_std"]),
                 _fmt(r["compute_s"], scale=1e3), _fmt(r["comm_s"], scale=1e3),
                 _fmt(r["wait_s"], scale=1e3),
                 _fmt(r["flops_per_s_mean"], r["flops_per_s_std"], 1e-9),
                 _fmt(r["mfu_mean"]),
                 _fmt(r["ops_per_joule_mean"], r["ops_per_joule_std"]),
                 _fmt(r["joules_per_step_mean"], r["joules_per_step_std"]),
                 r["energy_source"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    for p in plots:
        name = Path(p).stem.replace("_", " ")
        lines += [f"![{name}]({Path(os.path.relpath(p, d)).as_posix()})", ""]
    return atomic_write_text(d / "report.md", "\n".join(lines))
