"""Helpers shared by the benchmarks: thread pinning, timing windows, machine facts, JSON output.

Import this module BEFORE numpy/torch in a benchmark: `set_threads()` has to run before the BLAS
and OpenMP runtimes read their environment.
"""
import ctypes
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(HERE, "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(n: int):
    """Pin every math runtime to n threads (must run before numpy / torch are imported)."""
    if "numpy" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("set_threads() must run before numpy/torch are imported")
    for v in THREAD_VARS:
        os.environ[v] = str(n)


def cpu_snapshot():
    """(busy, total) clock ticks of the whole machine, from /proc/stat (None where unreadable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(v) - v[3] - v[4], sum(v)      # idle and iowait are not busy


def foreign_share(before, after, own_cpu_s):
    """Fraction of the machine's CPU time used by processes other than ours between two
    snapshots (own_cpu_s: CPU seconds our processes used meanwhile). On a shared machine this
    tells a clean timing window from one a neighbour disturbed."""
    if before is None or after is None:
        return 0.0
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return max(0.0, (busy - own_cpu_s * os.sysconf("SC_CLK_TCK")) / total)


def time_windows(step, steps_per_window: int, windows: int, warmup: int, sync=None, total_cpu=None):
    """Run `step` warmup times untimed, then `windows` timed windows of `steps_per_window` steps.

    Returns [(seconds, foreign CPU share)] per window. `sync()` (a barrier, for MPI runs) is called
    before and after each window; `total_cpu(s)` sums this process's CPU seconds over the ranks."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(windows):
        if sync:
            sync()
        c0, p0 = cpu_snapshot(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        if sync:
            sync()
        dt = time.perf_counter() - t0
        own = time.process_time() - p0
        c1 = cpu_snapshot()
        out.append((dt, foreign_share(c0, c1, total_cpu(own) if total_cpu else own)))
    return out


# A window is clean when other processes used under 8% of the machine's CPU time during it
# (/proc/stat counts in 10 ms ticks: a 0.4 s window on 2 CPUs is ~80 ticks, a few of them noise).
CLEAN = 0.08


def summarize(windows, steps_per_window, items_per_step=1):
    """Median rate (items/s) over the clean windows (all windows when fewer than 3 are clean)."""
    rates = [items_per_step * steps_per_window / s for s, _ in windows]
    clean = [r for r, (_, f) in zip(rates, windows) if f < CLEAN]
    use = clean if len(clean) >= 3 else rates
    med = statistics.median(use)
    return {"median": med, "best": max(rates), "worst": min(rates),
            "spread_pct": 100.0 * (max(use) - min(use)) / med, "windows": len(rates),
            "clean_windows": len(clean), "median_over": "clean windows" if use is clean else "all windows (machine busy)",
            "foreign_cpu_share": [round(f, 3) for _, f in windows]}


def wait_for_idle(max_wait_s=180.0, threshold=0.10, quiet=False):
    """Wait until other processes leave the CPUs (<threshold busy over 1 s), at most max_wait_s.

    Returns the last busy share seen (the run goes ahead either way; the windows record it)."""
    t0 = time.monotonic()
    said = -1e9
    while True:
        a = cpu_snapshot()
        time.sleep(1.0)
        share = foreign_share(a, cpu_snapshot(), 0.0)
        waited = time.monotonic() - t0
        if share < threshold or waited > max_wait_s:
            if waited > 2 and not quiet:
                print(f"  (waited {waited:.0f} s for other processes; now {100 * share:.0f}% busy)", flush=True)
            return share
        if not quiet and waited - said >= 30:
            print(f"  (machine {100 * share:.0f}% busy with other processes: waiting up to "
                  f"{max_wait_s:.0f} s)", flush=True)
            said = waited


# ----------------------------------------------------------------------------- machine facts

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_info():
    """Config and the kernel family OpenBLAS picked at load time (numpy must be imported)."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return {}
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            for prefix in ("scipy_openblas_", "openblas_"):
                try:
                    core = getattr(lib, f"{prefix}get_corename{suffix}")
                    conf = getattr(lib, f"{prefix}get_config{suffix}")
                    nthr = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                core.restype = conf.restype = ctypes.c_char_p
                return {"corename": core().decode(), "config": conf().decode(), "threads": nthr()}
    return {}


def environment():
    """What a reader needs to reproduce the figures."""
    import numpy as np
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
           "python": platform.python_version(), "numpy": np.__version__,
           "threads_env": {v: os.environ.get(v) for v in THREAD_VARS},
           "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "MKL_", "GOTO"))
                        and k not in THREAD_VARS},
           "openblas": openblas_info()}
    try:
        env["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch
        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    try:
        import mpi4py
        from mpi4py import MPI
        env["mpi4py"] = mpi4py.__version__
        env["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except ImportError:
        env["mpi4py"] = env["mpi"] = None
    return env


def rss_bytes() -> int:
    """Current resident set size (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> dict:
    """VmRSS and its anonymous / file-backed parts in bytes, from /proc/self/status (Linux).

    A leak grows RssAnon; RssFile (library code and data pages) moves when the kernel pages cold
    file pages out and they are touched again (e.g. DAMON reclaim), which is not the program's doing."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out


def write_json(name: str, obj) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def torch_ddp_init(comm, threads):
    """torch.distributed (gloo) over the ranks Comm already sees: rank 0 picks a free port, MPI
    tells the others; on one host gloo talks over loopback. Returns the torch module."""
    import socket
    MPI, rank, world = comm.MPI, comm.rank, comm.size
    port = None
    if rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.comm.bcast(port, root=0)
    one_host = len(set(comm.comm.allgather(MPI.Get_processor_name()))) == 1
    os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                      MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if one_host:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return torch


def print0(rank, *args):
    if rank == 0:
        print(*args, flush=True)


def human_bytes(n):
    """1536 -> '1.5 KiB' (tables of message and memory sizes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n /= 1024
