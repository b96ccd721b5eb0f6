"""Aggregate per-run JSON files of a scaling sweep into CSV, plots and markdown.

Layout: ``DIR/runs/<name>.json`` (one file per (mode, config, world, repeat)),
outputs ``DIR/scaling.csv``, ``DIR/plots/*.png`` + ``*.pdf`` (study/plots.py) and ``DIR/report.md``.

Definitions (T = a run's median-across-ranks per-step time, b = baseline world,
the smallest world of the series, normally 1; T_b = harmonic mean over its
repeats, i.e. the mean *rate*, so the baseline row's mean efficiency is 1):
    strong: speedup = T_b / T_N,          efficiency = b*T_b / (N*T_N)
    weak:   speedup = N*T_b / (b*T_N),    efficiency = T_b / T_N
so in both modes speedup is the throughput ratio and efficiency = speedup*b/N.
Each repeat at N is compared with the baseline *mean* (repeats are not paired)
and the row reports mean and sample std (ddof=1; 0 for a single repeat).
The step splits into compute, comm, wait and other = step - compute - comm - wait
(clipped at 0: medians over ranks do not add exactly).

Every run file is checked field by field (study/runfile.py) before anything is computed, so a
wrong file is one ValueError naming the file and the field, never a traceback.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_text
from .runfile import ENERGY_LABELS, clean, load_runs, validate_run

__all__ = ["load_runs", "validate_run", "aggregate", "write_csv", "make_plots", "write_report",
           "environment_lines", "hardware_line"]

ALT = {"throughput": "throughput", "efficiency": "parallel efficiency",
       "time_breakdown": "time per step by phase", "flops": "achieved FLOP/s", "energy": "measured energy"}
OTHER_CONTAINS = ("the optimizer update, the gradient norm (and clipping), copying the loss and "
                  "accuracy to the host, and the device synchronisation that ends the step "
                  "(host syncs); gathering the batch is counted in compute")


def _mean_std(values):
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) * (v - m) for v in vals) / (len(vals) - 1))


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
            row["other_s"] = max(0.0, row["step_time_s_mean"] - row["compute_s"] - row["comm_s"]
                                 - row["wait_s"])
            put("flops_per_s", [r["flops_per_s"] for r in rs])
            row["mfu_mean"] = _mean_std(r["mfu"] for r in rs)[0]
            put("ops_per_joule", [r["energy"]["ops_per_joule"] for r in rs])
            put("joules_per_step", [r["energy"]["joules_per_step"] for r in rs])
            put("joules_per_sample", [None if r["energy"]["joules_per_step"] is None
                                      else r["energy"]["joules_per_step"] / r["global_batch"] for r in rs])
            row["joules_per_epoch_mean"] = _mean_std(r["energy"]["joules_per_epoch"] for r in rs)[0]
            row["mean_watts_mean"] = _mean_std(r["energy"]["mean_watts"] for r in rs)[0]
            row["peak_mem_bytes_max"] = max(r["peak_mem_bytes"]["max"] for r in rs)
            row["energy_source"] = "|".join(sorted({r["energy"]["source"] for r in rs}))
            row["energy_measured"] = all(r["energy"]["source"].startswith("measured") for r in rs)
            rows.append(row)
    return rows


def _csv_text(rows: list[dict]) -> str:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def write_csv(rows: list[dict], path) -> str:
    """CSV with the union of row keys (first-seen order); None -> empty cell."""
    return atomic_write_text(path, _csv_text(rows))


def make_plots(rows: list[dict], outdir, subtitle: str = "") -> list[str]:
    """Write every plot as 300 dpi PNG + PDF into outdir; returns the paths written."""
    from .plots import render_plots
    return [atomic_write_bytes(Path(outdir) / name, data)
            for name, data in render_plots(rows, subtitle).items()]


# ------------------------------------------------------------------ where the runs ran

def _envs(runs):
    return [r["environment"] for r in runs if isinstance(r.get("environment"), dict)]


def _distinct(values, limit=4):
    seen = []
    for v in values:
        if v not in (None, "", []) and v not in seen:
            seen.append(v)
    more = f" (+{len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more if seen else None


def _gpu_text(e, limit=60):
    """"4 × NVIDIA H100 80GB HBM3" for the GPUs NVML saw on one run's host; None for none."""
    names = [clean(g.get("name"), limit) or "unnamed GPU" for g in (e.get("gpus") or [])]
    return ", ".join(f"{names.count(x)} × {x}" for x in dict.fromkeys(names)) or None


def _dates(envs, length=16):
    """'first' or 'first to last' of the runs' UTC dates, cut to `length` (16: minutes, 10: days)."""
    days = sorted({clean(e.get("date_utc"), 25).replace("T", " ")[:length] for e in envs
                   if isinstance(e.get("date_utc"), str) and e["date_utc"][:4].isdigit()})
    if not days:
        return None
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def environment_lines(runs) -> list[tuple[str, str]]:
    """(what, value) pairs for the report's "Where it ran" table; [] when no run recorded it."""
    envs = _envs(runs)
    if not envs:
        return []
    hosts = sorted({clean(h, 60) for e in envs for h in (e.get("hosts") or [])})
    gpus = _distinct(_gpu_text(e) for e in envs)
    nvml = any(isinstance(e.get("gpus"), list) for e in envs)

    def cores(e):
        parts = [f"{e['logical_cores']} logical cores" if e.get("logical_cores") is not None else None,
                 f"{e['cores_available']} available to each rank" if e.get("cores_available") is not None
                 else None]
        return ", ".join(p for p in parts if p) or None

    def commit(e):
        if not e.get("git_commit"):
            return None
        return clean(e["git_commit"], 40)[:12] + (" (with uncommitted changes)" if e.get("git_dirty") else "")

    def field(k, n=120):
        return _distinct(clean(e.get(k), n) for e in envs)
    numpy = _distinct(" / ".join(clean(e.get(k), 60) for k in ("numpy", "blas") if e.get(k)) for e in envs)
    out = [("Hosts", f"{', '.join(hosts[:8])}{' …' if len(hosts) > 8 else ''} ({len(hosts)} host"
                     f"{'s' if len(hosts) != 1 else ''})" if hosts else None),
           ("CPU", field("cpu_model")), ("Cores", _distinct(cores(e) for e in envs)),
           ("GPUs", (gpus + (f" (driver {field('gpu_driver', 40)})" if field("gpu_driver", 40) else ""))
            if gpus else ("none found by NVML" if nvml else None)),
           ("Threads per rank", _distinct(clean(e.get("threads_per_rank"), 20) for e in envs)),
           ("MPI", field("mpi_library")), ("NumPy / BLAS", numpy), ("Python", field("python")),
           ("OS", field("os")), ("Date (UTC)", _dates(envs)), ("Commit", _distinct(commit(e) for e in envs))]
    return [(k, v if v else "not recorded") for k, v in out]


def hardware_line(runs) -> str:
    """The plots' subtitle: hardware and date, from the runs' environment (else their device)."""
    envs = _envs(runs)
    parts = []
    if envs:
        gpus = _distinct((_gpu_text(e, 40) for e in envs), 2)
        cpu = _distinct((clean(e.get("cpu_model"), 40) for e in envs), 2)
        parts += [p for p in (gpus, cpu) if p]
        hosts = {clean(h, 60) for e in envs for h in (e.get("hosts") or [])}
        if hosts:
            parts.append(f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}")
        threads = _distinct((clean(e.get("threads_per_rank"), 8) for e in envs), 2)
        if threads:
            parts.append(f"{threads} thread{'' if threads == '1' else 's'}/rank")
    if not parts:
        devices = _distinct((f"{clean(r.get('device'), 40)} ({clean(r.get('backend'), 20) or 'backend ?'})"
                             for r in runs if r.get("device")), 2)
        parts.append(devices or "hardware not recorded")
    parts.append(_dates(envs, 10) or "date not recorded")
    return " · ".join(parts)


# ------------------------------------------------------------------ report.md

def _fmt(mean, std=None, scale=1.0, spec=".4g"):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    s = format(mean * scale, spec)
    return s if not std else f"{s} ± {format(std * scale, spec)}"


def _md(s) -> str:
    return clean(s, 200).replace("|", "\\|")


def _energy_section(runs, rows, plotted) -> list[str]:
    sources = sorted({r["energy"]["source"] for r in runs})
    lines = ["## Energy", ""]
    for s in sources:
        lines.append(f"- `{_md(s)}`: {ENERGY_LABELS.get(s, 'as labelled by the trainer')}")
    estimated = [s for s in sources if s.startswith("estimated")]
    if estimated:
        lines += ["", "**Some energy figures below are estimates, not measurements.**"]
    lines.append("")
    if "energy.png" in plotted:
        from .plots import series_labels
        labels, left_out = series_labels(rows), defaultdict(list)
        for r in rows:
            if not r["energy_measured"]:
                left_out[labels[(r["mode"], r["config"])]].append(str(r["world_size"]))
        lines.append("`plots/energy.png` shows measured energy only." + (
            " Left out, because their energy is not measured: "
            + "; ".join(f"{_md(k)} at N = {', '.join(v)}" for k, v in left_out.items()) + "." if left_out else ""))
    else:
        lines.append("No energy plot: no run measured its energy." + (
            " An estimate from FLOP and byte counts (Horowitz) gives a FLOP/J fixed by the model and an "
            "estimate from run time x nominal power (TDP) gives a FLOP/J proportional to FLOP/s, so a "
            "plot of either would only restate the FLOP/s plot." if estimated else "")
            + " Measured energy needs readable RAPL counters (/sys/class/powercap/intel-rapl, usually "
            "root on Linux) or NVML on an NVIDIA GPU.")
    return lines


def _results_table(rows) -> list[str]:
    head = ["mode", "config", "N", "base", "reps", "samples/s", "step ms", "speedup",
            "efficiency", "compute ms", "comm ms", "wait ms", "other ms", "GFLOP/s", "MFU",
            "FLOP/J", "J/step", "energy source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["mode"], _md(r["config"]), str(r["world_size"]), str(r["baseline_world"]),
                 str(r["repeats"]),
                 _fmt(r["samples_per_s_mean"], r["samples_per_s_std"]),
                 _fmt(r["step_time_s_mean"], r["step_time_s_std"], 1e3),
                 _fmt(r["speedup_mean"], r["speedup_std"]),
                 _fmt(r["efficiency_mean"], r["efficiency_std"]),
                 _fmt(r["compute_s"], scale=1e3), _fmt(r["comm_s"], scale=1e3),
                 _fmt(r["wait_s"], scale=1e3), _fmt(r["other_s"], scale=1e3),
                 _fmt(r["flops_per_s_mean"], r["flops_per_s_std"], 1e-9),
                 _fmt(r["mfu_mean"]),
                 _fmt(r["ops_per_joule_mean"], r["ops_per_joule_std"]),
                 _fmt(r["joules_per_step_mean"], r["joules_per_step_std"]),
                 _md(r["energy_source"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(runs, rows, plot_names, csv_name) -> str:
    from .plots import series_labels
    labels = series_labels(rows)
    env = environment_lines(runs)
    lines = ["# Scaling report", "",
             f"{len(runs)} runs from `runs/`; series: "
             + "; ".join(f"{_md(v)} (`{_md(k[0] + ':' + k[1])}`)" for k, v in labels.items()) + ".",
             "", "## Where it ran", ""]
    if env:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_md(v)} |" for k, v in env]
        missing = len(runs) - len(_envs(runs))
        if missing:
            lines += ["", f"{missing} of {len(runs)} run files have no environment record."]
    else:
        devices = sorted({f"{clean(r.get('device'), 40)} ({clean(r.get('backend'), 20)}, "
                          f"{clean(r.get('dtype'), 20)})" for r in runs if r.get("device")})
        lines.append("Not recorded: these run files predate the environment record (hosts, CPU, "
                     "threads, MPI, BLAS, date, commit). Device: "
                     + (_md(", ".join(devices)) if devices else "not recorded") + ".")
    lines += [
        "", "## Definitions", "",
        "T = per-run median-across-ranks step time. Speedup and efficiency are "
        "relative to `baseline_world` (world 1 when present, else the smallest "
        "world of the series): strong efficiency = b·T_b/(N·T_N), weak "
        "efficiency = T_b/T_N. Values are mean ± sample std over repeats. "
        f"Full numbers: `{csv_name}`.", "",
        "The step splits into compute (gathering the batch, forward and backward), comm (the "
        "gradient all-reduce as the fastest rank saw it), wait (the time a rank spent in the "
        "all-reduce beyond that: waiting for slower ranks) and other = step − compute − comm − "
        f"wait (never below 0), which holds {OTHER_CONTAINS}. Each is the median over ranks, so "
        "the parts can add up to slightly more or less than the median step.", ""]
    lines += _energy_section(runs, rows, plot_names)
    lines += ["", "## Results", ""] + _results_table(rows)
    lines += ["", "## Plots", "",
              "Each plot is a 300 dpi PNG with a vector PDF copy of the same name next to it "
              "(for posters and LaTeX).", ""]
    for name in plot_names:
        if name.endswith(".png"):
            lines += [f"![{ALT.get(name[:-4], name[:-4])}](plots/{name})", ""]
    return "\n".join(lines)


def write_report(directory) -> str:
    """load_runs + aggregate + CSV + plots + ``DIR/report.md``; returns its path.

    Everything is rendered in memory first, then written plots, CSV, report.md in that order, so
    a failed write (ValueError naming the path) leaves the earlier report.md as it was. Plot files
    this version no longer writes (an energy plot without measured energy, the older
    flops_energy.*) are removed so that no stale plot sits next to the report."""
    from .plots import KNOWN_PLOTS, render_plots
    d = Path(directory)
    runs = load_runs(d)
    rows = aggregate(runs)
    plots = render_plots(rows, hardware_line(runs))
    md = _markdown(runs, rows, list(plots), "scaling.csv")
    target = d
    try:
        for name, data in plots.items():
            target = d / "plots" / name
            atomic_write_bytes(target, data)
        for name in sorted(set(KNOWN_PLOTS) - set(plots)):
            target = d / "plots" / name
            if target.is_file() and not target.is_symlink():
                target.unlink()
        target = d / "scaling.csv"
        atomic_write_text(target, _csv_text(rows))
        target = d / "report.md"
        return atomic_write_text(target, md)
    except UserError as e:                  # fsutil's one line for a failed write
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"cannot write {clean(str(target), 300)}: {e.strerror or e} "
                         "(expected a writable folder)") from None
