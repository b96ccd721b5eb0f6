"""Where a run ran: hosts, CPU, cores, GPUs, threads, MPI, NumPy/BLAS, Python, date, git commit.

``describe()`` returns a JSON-serialisable dict that the trainer stores as
``summary["environment"]`` and the scaling report shows at the top of report.md and in the
plots' subtitle. It never raises: every probe is wrapped, so a missing /proc, git, NVML or GPU
only leaves that field None. It imports no MPI (study/ must not; the caller passes the library
string it got from parallel/) and no CuPy (GPUs are listed through NVML, package nvidia-ml-py).

Fields (None where unknown):
  hosts            sorted distinct host names (the caller gathers them from all ranks)
  ranks            world size, when the caller gives it
  cpu_model        /proc/cpuinfo "model name" (else platform.processor())
  logical_cores    os.cpu_count() of this host
  cores_available  cores this process may run on (os.sched_getaffinity)
  gpus             [{"name", "memory_bytes"}] from NVML, [] when NVML sees none
  gpu_driver       NVIDIA driver version
  threads_per_rank the caller's thread count, else OMP_NUM_THREADS
  mpi_library      first line of MPI_Get_library_version, as given by the caller
  numpy, blas      NumPy version; its BLAS as "name version" (numpy.show_config)
  python           version and implementation, e.g. "3.11.7 (CPython)"
  os               e.g. "Linux 6.1.0 x86_64"
  date_utc         ISO 8601 UTC time of the call, e.g. "2026-05-09T07:35:25Z"
  git_commit       `git rev-parse HEAD` of the checkout the package runs from
  git_dirty        whether tracked files there have uncommitted changes
"""
from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["describe"]

CPUINFO = "/proc/cpuinfo"
# The checkout the package runs from: the folder holding ddp_scratch/ (None-safe if installed).
REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_TIMEOUT_S = 2.0
MAX_TEXT = 200


def _probe(fn, *args):
    """fn(*args), or None when it fails in any way (a probe never stops a run)."""
    try:
        return fn(*args)
    except Exception:
        return None


def _text(s) -> str | None:
    """One line of at most MAX_TEXT characters (first non-empty line, whitespace collapsed)."""
    if s is None:
        return None
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    for line in str(s).splitlines():
        line = " ".join(line.split())
        if line:
            return line[:MAX_TEXT]
    return None


def _hosts(hosts):
    if hosts is None:
        return [socket.gethostname()]
    return sorted({_text(h) for h in hosts if _text(h)})


def _cpu_model():
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "cpu model"):
                    if _text(value):
                        return _text(value)
    except OSError:
        pass
    return _text(platform.processor()) or None


def _cores_available():
    return len(os.sched_getaffinity(0))


def _threads(threads):
    if threads is not None:
        return int(threads)
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    return int(value) if value.isdigit() else _text(value)


def _gpus():
    """(gpus, driver) from NVML; (None, None) without NVML or a driver."""
    try:
        import pynvml
    except Exception:
        return None, None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None, None
    try:
        driver = _probe(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
        gpus = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = _probe(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(h).total))
            gpus.append({"name": _probe(lambda: _text(pynvml.nvmlDeviceGetName(h))), "memory_bytes": mem})
        return gpus, driver
    except Exception:
        return None, None
    finally:
        _probe(pynvml.nvmlShutdown)


def _numpy():
    """(numpy version, "blas-name version") without importing NumPy's heavier parts."""
    import numpy as np
    blas = None
    try:
        cfg = np.show_config(mode="dicts")      # NumPy >= 1.26; older versions print and fail here
        info = (cfg or {}).get("Build Dependencies", {}).get("blas", {})
        blas = _text(" ".join(str(info[k]) for k in ("name", "version") if info.get(k))) or None
    except Exception:
        pass
    return _text(np.__version__), blas


def _git(*args):
    out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return out.stdout if out.returncode == 0 else None


def _git_state():
    """(commit, dirty) of the checkout next to the package; (None, None) if it is not one.

    The package folder's parent must itself hold .git (a folder, or a file in a worktree), so a
    package installed inside some other repository (a virtual environment in a project) is not
    credited with that repository's commit. Untracked files do not count as changes."""
    if not (REPO_ROOT / ".git").exists():
        return None, None
    commit = _probe(_git, "rev-parse", "HEAD")
    commit = _text(commit)
    if not commit:
        return None, None
    status = _probe(_git, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status.strip()))


def describe(threads=None, hosts=None, mpi_library=None, ranks=None) -> dict:
    """What this run ran on, as plain JSON values (see the module docstring); never raises."""
    env = dict.fromkeys(("hosts", "ranks", "cpu_model", "logical_cores", "cores_available", "gpus",
                         "gpu_driver", "threads_per_rank", "mpi_library", "numpy", "blas", "python",
                         "os", "date_utc", "git_commit", "git_dirty"))
    env["hosts"] = _probe(_hosts, hosts)
    env["ranks"] = _probe(int, ranks) if ranks is not None else None
    env["cpu_model"] = _probe(_cpu_model)
    env["logical_cores"] = _probe(os.cpu_count)
    env["cores_available"] = _probe(_cores_available)
    env["gpus"], env["gpu_driver"] = _probe(_gpus) or (None, None)
    env["threads_per_rank"] = _probe(_threads, threads)
    env["mpi_library"] = _probe(_text, mpi_library)
    env["numpy"], env["blas"] = _probe(_numpy) or (None, None)
    env["python"] = _probe(lambda: f"{platform.python_version()} ({platform.python_implementation()})")
    env["os"] = _probe(lambda: _text(f"{platform.system()} {platform.release()} {platform.machine()}"))
    env["date_utc"] = _probe(lambda: datetime.datetime.now(datetime.timezone.utc)
                             .strftime("%Y-%m-%dT%H:%M:%SZ"))
    env["git_commit"], env["git_dirty"] = _probe(_git_state) or (None, None)
    return env


if __name__ == "__main__":      # python -m ddp_scratch.study.environment: what this machine is
    import json
    json.dump(describe(), sys.stdout, indent=1)
    print()
