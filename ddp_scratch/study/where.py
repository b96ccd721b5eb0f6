"""Where the runs of a scaling report ran, in words: the "Where it ran" table of report.md, the
plots' subtitle, and the thread counts per rank that a series must share to be comparable.

Everything comes from the runs' `environment` record (study/environment.py describe()), else
from their device/backend; a field no run recorded is "not recorded", never a guess.
"""
from __future__ import annotations

from .runfile import clean

__all__ = ["environment_lines", "hardware_line", "envs", "dates", "threads_of", "oversubscription"]


def envs(runs):
    return [r["environment"] for r in runs if isinstance(r.get("environment"), dict)]


def _distinct(values, limit=4):
    seen = []
    for v in values:
        if v not in (None, "", []) and v not in seen:
            seen.append(v)
    more = f" (+{len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more if seen else None


def threads_of(runs) -> list[str]:
    """The distinct thread counts per rank the runs recorded, as text, in order of appearance."""
    seen = []
    for e in envs(runs):
        t = clean(e.get("threads_per_rank"), 20)
        if t and t not in seen:
            seen.append(t)
    return seen


def _gpu_text(e, limit=60):
    """"4 × NVIDIA H100 80GB HBM3" for the GPUs NVML saw on one run's host; None for none."""
    names = [clean(g.get("name"), limit) or "unnamed GPU" for g in (e.get("gpus") or [])]
    return ", ".join(f"{names.count(x)} × {x}" for x in dict.fromkeys(names)) or None


def dates(runs_envs, length=16):
    """'first' or 'first to last' of the runs' UTC dates, cut to `length` (16: minutes, 10: days)."""
    days = sorted({clean(e.get("date_utc"), 25).replace("T", " ")[:length] for e in runs_envs
                   if isinstance(e.get("date_utc"), str) and e["date_utc"][:4].isdigit()})
    if not days:
        return None
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"


def _gpu_line(runs, es):
    """GPUs: those NVML saw; "none" where NVML saw none or every run used the NumPy (CPU) backend;
    None (-> "not recorded") only where nothing says."""
    gpus = _distinct(_gpu_text(e) for e in es)
    cpu_only = bool(runs) and all(r.get("backend") == "numpy" for r in runs)
    if gpus:
        driver = _distinct(clean(e.get("gpu_driver"), 40) for e in es)
        return (gpus + (f" (driver {driver})" if driver else "")
                + ("; not used: every run used the NumPy backend, on the CPU" if cpu_only else ""))
    if any(e.get("gpus") == [] for e in es):
        return "none (NVML found no GPU)"
    if cpu_only:
        return "none used (NumPy backend: the runs ran on the CPU)"
    return None


def environment_lines(runs) -> list[tuple[str, str]]:
    """(what, value) pairs for the report's "Where it ran" table; [] when no run recorded it."""
    es = envs(runs)
    if not es:
        return []
    hosts = sorted({clean(h, 60) for e in es for h in (e.get("hosts") or [])})

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
        return _distinct(clean(e.get(k), n) for e in es)
    numpy = _distinct(" / ".join(clean(e.get(k), 60) for k in ("numpy", "blas") if e.get(k)) for e in es)
    out = [("Hosts", f"{', '.join(hosts[:8])}{' …' if len(hosts) > 8 else ''} ({len(hosts)} host"
                     f"{'s' if len(hosts) != 1 else ''})" if hosts else None),
           ("CPU", field("cpu_model")), ("Cores", _distinct(cores(e) for e in es)),
           ("GPUs", _gpu_line(runs, es)),
           ("Threads per rank", _distinct(threads_of(runs))),
           ("MPI", field("mpi_library")), ("NumPy / BLAS", numpy), ("Python", field("python")),
           ("OS", field("os")), ("Date (UTC)", dates(es)), ("Commit", _distinct(commit(e) for e in es))]
    return [(k, v if v else "not recorded") for k, v in out]


def hardware_line(runs) -> str:
    """The plots' subtitle: hardware and date, from the runs' environment (else their device)."""
    es = envs(runs)
    parts = []
    if es:
        gpus = _distinct((_gpu_text(e, 40) for e in es), 2)
        cpu = _distinct((clean(e.get("cpu_model"), 40) for e in es), 2)
        parts += [p for p in (gpus, cpu) if p]
        hosts = {clean(h, 60) for e in es for h in (e.get("hosts") or [])}
        if hosts:
            parts.append(f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}")
        threads = _distinct((clean(e.get("threads_per_rank"), 8) for e in es), 2)
        if threads:
            parts.append(f"{threads} thread{'' if threads == '1' else 's'}/rank")
    if not parts:
        devices = _distinct((f"{clean(r.get('device'), 40)} ({clean(r.get('backend'), 20) or 'backend ?'})"
                             for r in runs if r.get("device")), 2)
        parts.append(devices or "hardware not recorded")
    parts.append(dates(es, 10) or "date not recorded")
    return " · ".join(parts)


def _count(v):
    """A recorded count as an int, or None (threads may be recorded as text: "1", "4 (OMP)")."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.split(" ")[0].isdigit():
        return int(v.split(" ")[0])
    return None


def oversubscription(run):
    """(ranks on a host, threads per rank, cores they could use, certain) when the run had more
    threads than cores, else None; from what the run file records (world size, hosts, threads per
    rank, cores). The ranks of a host share the cores available to each (mpiexec binds nothing by
    default). Where each rank could use only part of its host (a cpuset, or srun binding each rank
    to its own cores) and the host has cores enough for every rank's share, the record cannot say
    which: certain is False then."""
    e = run.get("environment")
    if not isinstance(e, dict):
        return None
    threads = _count(e.get("threads_per_rank"))
    avail, logical = _count(e.get("cores_available")), _count(e.get("logical_cores"))
    cores = avail or logical
    if not threads or not cores:
        return None
    hosts = max(1, len(e.get("hosts") or []))
    per_host = -(-run["world_size"] // hosts)
    if per_host * threads <= cores:
        return None
    certain = threads > cores or not (avail and logical and per_host * avail <= logical)
    return per_host, threads, cores, certain
