"""What a process can know of its MPI world without starting MPI or importing NumPy: the rank
its launcher gave it, the world MPI already has, and how to end it. The command line uses these
before it has set the thread counts that NumPy reads once, when it is imported."""
import os
import sys
import time


def launcher_tasks():
    """Tasks the launcher started, from its environment (None when not under a launcher)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "SLURM_PROCID" in os.environ and os.environ.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return None


def initialized_world():
    """(rank, size, MPI module) if MPI is already initialised in this process, else (0, 1, None)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None or not mod.Is_initialized() or mod.Is_finalized():
        return 0, 1, None
    return mod.COMM_WORLD.Get_rank(), mod.COMM_WORLD.Get_size(), mod


def launcher_rank():
    """This process's rank as its launcher (mpiexec, srun) numbered it; 0 when not launched."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def abort_world(code=1, settle_s=0.0):
    """End every rank of an initialised world now (a rank-local failure while others may sit in
    a collective); this process alone when there is no world. `settle_s`: a pause first, so the
    launcher forwards what this rank just wrote before the abort tears the job down."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(settle_s)
    rank, size, mpi = initialized_world()
    if mpi is not None and size > 1:
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)
