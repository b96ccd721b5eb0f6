"""The communication dimensions of a scaling report (study/report.py): per row the settings a
point communicated with, the bytes one rank sent per step and the optimizer state per rank, and
report.md's Communication table comparing the settings of a sweep (scaling --compare). Run files
written before these fields have none of them: no columns, no section."""
from __future__ import annotations

from .cells import fmt, mean_std, md as _md, nbytes as _bytes
from .runfile import series_key

BYTES_FROM = {"counted": "counted: what the hand-written ring sent",
              "model": "model: 2(N−1)/N × the gradient buffer, what a bandwidth-optimal all-reduce sends "
                       "(MPI_Allreduce's own algorithm is not visible to the run)",
              "none": "none: one rank sends nothing"}
COMM_FIELDS = ("comm", "comm_bytes_per_step", "optim_state_bytes_per_rank")


def comm_columns(row, rs):
    """The communication settings, bytes on the wire per step (per rank) and optimizer state per
    rank of one row, where its run files record them (older ones do not: no columns)."""
    if not any(k in r for r in rs for k in COMM_FIELDS):
        return
    comm = next((r["comm"] for r in rs if r.get("comm")), None) or {}
    row["comm_algorithm"], row["comm_compress"] = comm.get("algorithm"), comm.get("compress")
    row["comm_error_feedback"] = comm.get("error_feedback")
    if "zero" in comm:
        row["optim_zero"] = comm["zero"]
    row["comm_bytes_per_step_mean"], row["comm_bytes_per_step_std"] = mean_std(r.get("comm_bytes_per_step")
                                                                               for r in rs)
    row["comm_bytes_per_step_source"] = "|".join(sorted({r["comm_bytes_per_step_source"] for r in rs
                                                         if r.get("comm_bytes_per_step_source")})) or None
    row["optim_state_bytes_per_rank_mean"] = mean_std(r.get("optim_state_bytes_per_rank") for r in rs)[0]


def comm_section(rows, labels, plotted) -> list[str]:
    """Per setting and world size: what was communicated, how much, how long, and the optimizer
    state per rank. Nothing for run files that predate the communication record."""
    if not any("comm_algorithm" in r for r in rows):
        return []
    zero = any("optim_zero" in r for r in rows)
    head = ["series", "N", "algorithm", "compression", "error feedback"] + ["ZeRO"] * zero
    head += ["sent per rank and step", "bytes from", "comm ms/step", "optimizer state per rank"]
    lines = ["## Communication", "",
             "What each setting sends and what it costs: bytes one rank sent per training step (the gradient "
             "all-reduce), the communication time per step (as the fastest rank saw it, without waiting for "
             "slower ranks; mean ± std over repeats) and the optimizer state one rank holds. "
             + ("Where the bytes come from: " + "; ".join(BYTES_FROM.values()) + ". ")
             + "The optimizer state is shown where the runs measured it (— : not recorded by this version).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ef = r.get("comm_error_feedback")
        cells = [_md(labels[series_key(r)]), str(r["world_size"]), _md(r.get("comm_algorithm") or "—"),
                 _md(r.get("comm_compress") or "—"), "—" if ef is None else ("yes" if ef else "no")]
        cells += [_md("—" if r.get("optim_zero") is None else r["optim_zero"])] * zero
        cells += [_bytes(r.get("comm_bytes_per_step_mean")), _md(r.get("comm_bytes_per_step_source") or "—"),
                  fmt(r["comm_s"], r.get("comm_s_std"), 1e3), _bytes(r.get("optim_state_bytes_per_rank_mean"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`plots/comm_vs_bytes.png` plots the communication time per step against the bytes sent, one "
              "line per setting through its rank counts." if plotted else
              "No plot of communication time against bytes: no point sent any (one rank, or not recorded).", ""]
    return lines


