"""Processes on this machine: threads per rank, finding mpiexec, `launch.py local -n N`, and
forwarding a launcher's exit status and Ctrl-C to every rank."""
import os
import shutil
import signal
import subprocess
import sys

from ..errors import UserError
from .args import default_out

# The entry point every spawned rank runs (also when we were started as `ddp-scratch`).
LAUNCH_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch.py")


def _local_ranks():
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    v = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "")   # e.g. "2(x3)" or "2,1"
    if v[:1].isdigit():
        return int(v.split("(")[0].split(",")[0])
    return 1


def set_threads(requested=0):
    """BLAS/OpenMP threads per rank: threads x ranks on a node <= cores. Must run before numpy loads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = requested or int(os.environ.get("DDP_THREADS", 0)) or max(1, cores // _local_ranks())
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec") or shutil.which("mpirun")


def cmd_local(a):
    from ..config import load_config
    load_config(a.config, a.overrides)    # fail fast, once, before starting N processes
    if a.ranks < 1:
        raise UserError(f"local -n: expected a number of ranks >= 1, got {a.ranks}")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("local: no mpiexec found (pip install mpich, or load your cluster's MPI module)")
    argv = [mpiexec, "-n", str(a.ranks), sys.executable, LAUNCH_PY, "train", a.config]
    argv += ["--out", a.out or default_out(a.config)]
    for o in a.overrides:
        argv += ["--set", o]
    argv += [f for f, on in (("--resume", a.resume), ("--overwrite", a.overwrite), ("--quiet", a.quiet)) if on]
    if a.stop_at_step:
        argv += ["--stop-at-step", str(a.stop_at_step)]
    return run_forwarding(argv)


def run_forwarding(argv):
    """Run a launcher, forward its exit status; one Ctrl-C ends every rank."""
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 130
