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
The step splits into compute, comm, wait and other = step - compute - comm - wait (per repeat,
clipped at 0: medians over ranks do not add exactly), each as mean (`compute_s`) and std
(`compute_s_std`) over repeats.

A series is the points of one (mode, config, setting): a sweep with --compare gives one series per
compared setting, each with its own baseline. Run files that record communication (comm settings,
bytes on the wire per step, optimizer state per rank) add those columns to the CSV, to the series
tables where measured, and a "Communication" section comparing the settings; older files make the
report they always made (study/commreport.py; the number formats are study/cells.py).

Every run file is checked field by field (study/runfile.py) before anything is computed, so a
wrong file is one ValueError naming the file and the field, never a traceback; so are two files
for one point and points of one series that compare different models, batches or dtypes.

report.md gives one table per series, headed by its model, dtype and the batch it holds fixed,
with both batches and the threads per rank on every row; numbers have 4 significant figures in
plain notation (fmt), and it says why an efficiency above 100 % is suspect and when the points
of a series ran with different thread counts per rank.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_bytes, atomic_write_text
from .cells import NOISE_REL, count as _count, fmt, md as _md, mean_std as _mean_std
from .commreport import comm_columns as _comm_columns, comm_section as _comm_section
from .runfile import ENERGY_LABELS, clean, load_runs, series_key, validate_run
from .where import environment_lines, envs, hardware_line, oversubscription, threads_of

__all__ = ["load_runs", "validate_run", "aggregate", "write_csv", "make_plots", "write_report",
           "environment_lines", "hardware_line", "fmt"]

SUPERLINEAR = 1.05    # efficiency above this is remarked on under the table
ALT = {"throughput": "throughput", "efficiency": "parallel efficiency",
       "time_breakdown": "time per step by phase", "flops": "achieved FLOP/s", "energy": "measured energy",
       "comm_vs_bytes": "communication time against bytes on the wire"}
OTHER_CONTAINS = ("the optimizer update, the gradient norm (and clipping), copying the loss and "
                  "accuracy to the host, and the device synchronisation that ends the step "
                  "(host syncs); gathering the batch is counted in compute")


def _other(r) -> float:
    """step - compute - comm - wait of one run: 0 where it is below 0 or rounding noise."""
    step = r["step_time_s"]["median"]
    other = step - r["compute_s"]["median"] - r["comm_s"]["median"] - r["wait_s"]["median"]
    return other if other > NOISE_REL * step else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (mode, config, world_size), sorted; see module docstring."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(*series_key(r), r["world_size"])].append(r)
    series: dict[tuple, list[int]] = defaultdict(list)
    order = {}
    for mode, config, setting, n in groups:
        series[(mode, config, setting)].append(n)
        order[(mode, config, setting)] = min([order.get((mode, config, setting), 1 << 30)]
                                             + [r.get("setting_order") or 0 for r in groups[(mode, config, setting, n)]])
    rows = []
    # the settings of a sweep in the order its --compare gave them (none first, then bf16)
    for (mode, config, setting), worlds in sorted(series.items(),
                                                  key=lambda kv: (*kv[0][:2], order[kv[0]], kv[0][2])):
        b = 1 if 1 in worlds else min(worlds)
        base = groups[(mode, config, setting, b)]
        t_b = len(base) / sum(1.0 / r["step_time_s"]["median"] for r in base)
        for n in sorted(worlds):
            rs = sorted(groups[(mode, config, setting, n)], key=lambda r: r["repeat"])
            ts = [r["step_time_s"]["median"] for r in rs]
            speedups = [t_b / t if mode == "strong" else n * t_b / (b * t) for t in ts]
            row = {"mode": mode, "config": config, **({"setting": setting} if setting else {}), "model": rs[0]["model"],
                   "world_size": n, "baseline_world": b, "repeats": len(rs),
                   "global_batch": rs[0]["global_batch"],
                   "per_rank_batch": rs[0]["per_rank_batch"], "dtype": rs[0].get("dtype"),
                   "n_params": rs[0].get("n_params"), "threads_per_rank": "; ".join(threads_of(rs)) or None}

            def put(name, vals):
                row[name + "_mean"], row[name + "_std"] = _mean_std(vals)
            put("samples_per_s", [r["samples_per_s"] for r in rs])
            put("tokens_per_s", [r["tokens_per_s"] for r in rs])
            put("step_time_s", ts)
            put("speedup", speedups)
            put("efficiency", [s * b / n for s in speedups])
            for k in ("compute_s", "comm_s", "wait_s"):
                row[k], row[k + "_std"] = _mean_std(r[k]["median"] for r in rs)
            row["other_s"], row["other_s_std"] = _mean_std(_other(r) for r in rs)
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
            over = [o for o in map(oversubscription, rs) if o]
            row["oversubscribed"] = ("yes" if any(o[3] for o in over) else "maybe") if over else None
            row["oversubscription"] = (f"{over[0][0]} ranks x {over[0][1]} thread(s) = {over[0][0] * over[0][1]} "
                                       f"on {over[0][2]} cores") if over else None
            _comm_columns(row, rs)
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


# ------------------------------------------------------------------ report.md

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
                left_out[labels[series_key(r)]].append(str(r["world_size"]))
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


COLUMNS = (  # (header, key of the mean, scale); the std is under _std_key(key)
    ("samples/s", "samples_per_s_mean", 1.0), ("tokens/s", "tokens_per_s_mean", 1.0),
    ("step ms", "step_time_s_mean", 1e3), ("speedup", "speedup_mean", 1.0),
    ("efficiency %", "efficiency_mean", 100.0), ("compute ms", "compute_s", 1e3),
    ("comm ms", "comm_s", 1e3), ("wait ms", "wait_s", 1e3), ("other ms", "other_s", 1e3),
    ("sent MB/step", "comm_bytes_per_step_mean", 1e-6), ("optim. state MB/rank", "optim_state_bytes_per_rank_mean", 1e-6),
    ("GFLOP/s", "flops_per_s_mean", 1e-9), ("MFU %", "mfu_mean", 100.0),
    ("GFLOP/J", "ops_per_joule_mean", 1e-9), ("J/step", "joules_per_step_mean", 1.0))
OPTIONAL = ("tokens/s", "sent MB/step", "optim. state MB/rank")     # shown where some row has a value


def _std_key(key):
    return key[:-5] + "_std" if key.endswith("_mean") else key + "_std"


def _series_table(rs) -> list[str]:
    """One series: N, baseline, repeats, both batches, threads, then every measured column."""
    cols = [c for c in COLUMNS if c[0] not in OPTIONAL or any(r.get(c[1]) is not None for r in rs)]
    threads = any(r["threads_per_rank"] for r in rs)
    head = ["N", "base", "reps", "global batch", "per-rank batch"] + ["threads/rank"] * threads
    head += [c[0] for c in cols] + ["energy source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        mark = {"yes": " (oversubscribed)", "maybe": " (oversubscribed?)"}.get(r["oversubscribed"], "")
        cells = [f"{r['world_size']}{mark}", str(r["baseline_world"]), str(r["repeats"]),
                 _count(r["global_batch"]), _count(r["per_rank_batch"])]
        cells += [_md(r["threads_per_rank"] or "—")] * threads
        cells += [fmt(r[key], r.get(_std_key(key)), scale) for _, key, scale in cols]
        lines.append("| " + " | ".join(cells + [_md(r["energy_source"])]) + " |")
    return lines


def _series_notes(rs, runs) -> list[str]:
    """Under a series' table: different thread counts per rank (bold), efficiency above 100 %."""
    lines = []
    over = [r for r in rs if r["oversubscribed"]]
    if over:
        sure = [r for r in over if r["oversubscribed"] == "yes"]
        lines += ["", "**Oversubscribed: " + "; ".join(
            f"N = {r['world_size']} ran {r['oversubscription']}" + ("" if r in sure else " (if they shared them)")
            for r in over) + ". Its ranks shared cores, so its throughput, speedup and efficiency measure "
            "that sharing, not scaling: do not present them as scaling results.** "
            + ("(Each rank could use only part of its host, so the run files cannot tell whether the ranks "
               "shared those cores or were bound to cores of their own.) " if len(sure) < len(over) else "")
            + "Measure at most as many ranks x threads as a host has cores, or on more hosts."]
    per_point = {r["world_size"]: r["threads_per_rank"] for r in rs if r["threads_per_rank"]}
    if len(threads_of(runs)) > 1:
        lines += ["", "**The points of this series used different thread counts per rank ("
                  + ", ".join(f"N = {n}: {_md(t)}" for n, t in per_point.items())
                  + "), so they are not comparable: speedup and efficiency mix the change in threads "
                  "with the change in ranks.** Run the sweep again with one thread count for every "
                  "point (`--set train.threads=1`) into a new output folder."]
    high = [r for r in rs if r["efficiency_mean"] is not None and r["efficiency_mean"] > SUPERLINEAR]
    if high:
        lines += ["", "Efficiency above 100 % ("
                  + ", ".join(f"N = {r['world_size']}: {fmt(r['efficiency_mean'], scale=100.0)} %" for r in high)
                  + ") says each rank got more done per second than a rank of the baseline. That is not "
                  "real superlinear scaling unless you can explain it. Usual causes on a CPU: the baseline ran "
                  "with another number of BLAS threads per rank than the other points (see threads/rank: "
                  "with small matrices, more threads can make a rank slower, not faster, and fewer threads "
                  "make it slower for large ones), so it is not the per-rank speed the other points are "
                  "compared with; the work of a rank fits in a faster cache once it is split over more "
                  "ranks (strong scaling); or the baseline was measured while other work shared the "
                  "machine. Check threads/rank and repeat the baseline before presenting it as a gain."]
    return lines


def _series_section(label, key, rs, runs) -> list[str]:
    r0 = rs[0]
    model = f"model `{_md(r0['model'])}`" + (f" ({_count(r0['n_params'])} parameters)" if r0["n_params"] else "")
    model += f", {_md(r0['dtype'])}" if r0["dtype"] else ""
    batch = (f"per-rank batch {_count(r0['per_rank_batch'])} at every N (the global batch grows with N)"
             if key[0] == "weak" else f"global batch {_count(r0['global_batch'])} at every N (split over the ranks)")
    setting = f", setting `{_md(key[2])}`" if key[2] else ""
    return ([f"### {_md(label)}", "", f"Config `{_md(key[1])}`, {key[0]} scaling{setting}: {model}; {batch}.", ""]
            + _series_table(rs) + _series_notes(rs, runs) + [""])


def _markdown(runs, rows, plot_names, csv_name) -> str:
    from .plots import series_labels
    labels = series_labels(rows)
    env = environment_lines(runs)
    lines = ["# Scaling report", "",
             f"{len(runs)} runs from `runs/`; series: "
             + "; ".join(f"{_md(v)} (`{_md(k[0] + ':' + k[1] + (' ' + k[2] if k[2] else ''))}`)"
                         for k, v in labels.items()) + "."]
    over = sorted({r["world_size"] for r in rows if r["oversubscribed"]})
    if over:
        lines += ["", f"**Oversubscribed points (N = {', '.join(map(str, over))}): more ranks x threads than "
                  "cores, so the ranks shared cores and these points measure that, not scaling; see the notes "
                  "under the tables. The plots mark them.**"]
    lines += ["", "## Where it ran", ""]
    if env:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_md(v)} |" for k, v in env]
        missing = len(runs) - len(envs(runs))
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
        "efficiency = T_b/T_N (in %). Values are mean ± sample std over repeats, with 4 "
        "significant figures; a ± is left out where the repeats agree to rounding (below "
        f"{NOISE_REL:g} of the mean) or there is one repeat. Full numbers: `{csv_name}`.", "",
        "The step splits into compute (gathering the batch, forward and backward), comm (the "
        "gradient all-reduce as the fastest rank saw it), wait (the time a rank spent in the "
        "all-reduce beyond that: waiting for slower ranks) and other = step − compute − comm − "
        f"wait (never below 0), which holds {OTHER_CONTAINS}. Each is the median over ranks, so "
        "the parts can add up to slightly more or less than the median step.", ""]
    lines += _energy_section(runs, rows, plot_names)
    lines += ["", "## Results", ""]
    series = defaultdict(list)
    for r in rows:
        series[series_key(r)].append(r)
    for k, label in labels.items():
        lines += _series_section(label, k, series[k], [r for r in runs if series_key(r) == k])
    lines += _comm_section(rows, labels, "comm_vs_bytes.png" in plot_names)
    lines += ["## Plots", "",
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
