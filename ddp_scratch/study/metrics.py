"""Timers, throughput, memory, MFU and energy of a run, reduced across ranks."""
import os
import time

import numpy as np

from .. import backend as B


class StepTimes:
    """Per-step compute / communication / total seconds (device synchronised before reading).

    Grows by doubling (a handful of allocations over a run, none per step), so nothing is
    allocated in proportion to train.max_steps up front."""

    def __init__(self, capacity=1024):
        self.a = np.zeros((max(1, capacity), 3))
        self.n = 0
        self.total_s = 0.0

    def add(self, compute, comm, total):
        if self.n == len(self.a):
            self.a = np.concatenate([self.a, np.zeros_like(self.a)])
        self.a[self.n] = (compute, comm, total)
        self.n += 1
        self.total_s += total

    def rows(self, skip=0):
        return self.a[min(skip, max(0, self.n - 1)):self.n]

    def rate(self, items_per_step):
        """Items per second over the steps of this run so far."""
        return items_per_step * self.n / self.total_s if self.total_s else 0.0


def now():
    B.synchronize()
    return time.perf_counter()


def peak_rss_bytes():
    """Peak resident set size of this process (Linux reports KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _mmm(values):
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def reduce_timing(comm, rows):
    """Per-step compute / communication / wait split, reduced across ranks (min/median/max).

    Time inside the all-reduce is part transfer, part waiting for the slowest rank to arrive.
    The rank that arrives last waits least, so per step the pure communication time is the
    minimum over ranks and each rank's excess over it is its wait (load imbalance)."""
    mine = rows.tolist()
    everyone = np.array(comm.allgather(mine, "timing gather"))        # (ranks, steps, 3)
    if everyone.size == 0 or everyone.shape[1] == 0:
        return {}
    comm_t = everyone[:, :, 1]
    pure = comm_t.min(axis=0)
    wait = comm_t - pure
    per_rank = {
        "step_time_s": np.median(everyone[:, :, 2], axis=1),
        "compute_s": np.median(everyone[:, :, 0], axis=1),
        "comm_s": np.median(np.broadcast_to(pure, comm_t.shape), axis=1),
        "wait_s": np.median(wait, axis=1),
    }
    out = {k: _mmm(v) for k, v in per_rank.items()}
    out["steps_timed"] = int(everyone.shape[1])
    return out


def reduce_max_min(comm, value):
    return _mmm(comm.allgather(float(value), "memory gather"))


# Peak dense FLOP/s per device for MFU (vendor datasheets); None where unknown (CPUs vary).
PEAK_FLOPS = {
    ("H100", "float32"): 67e12, ("H100", "float64"): 67e12, ("H100", "bfloat16"): 989e12,
    ("H200", "float32"): 67e12, ("H200", "float64"): 67e12, ("H200", "bfloat16"): 989e12,
    ("A100", "float32"): 19.5e12, ("A100", "float64"): 19.5e12, ("A100", "bfloat16"): 312e12,
}


def peak_flops(device_name, dtype):
    env = os.environ.get("DDP_PEAK_FLOPS")     # per device, for CPUs or unlisted GPUs
    if env:
        return float(env)
    for (key, dt), v in PEAK_FLOPS.items():
        if key in device_name and dt == dtype:
            return v
    return None


def scaling_metrics(comm, timed, s, energy, n_params, steps_per_epoch):
    """Timing split, memory, MFU and energy of a run (collectives: every rank calls this).

    timed: the per-step rows after warm-up; s: the run's summary so far; energy: EnergyMeter.stop()."""
    out = {"timing": reduce_timing(comm, timed), "peak_mem_bytes": reduce_max_min(comm, peak_rss_bytes())}
    if B.on_gpu():   # peak_mem_bytes is the host process; the model lives here
        out["gpu_mem_bytes"] = reduce_max_min(comm, B.device_memory_bytes())
    step_s = out["timing"].get("step_time_s", {}).get("median")
    fps = s["flops_per_step"] / step_s if step_s else 0.0
    out["flops_per_s_timed"] = fps
    peak = peak_flops(s["device"], s["dtype"])
    out["mfu"] = fps / (peak * comm.size) if peak and fps else None
    if energy is None:
        return out
    measured = energy["source"].startswith("measured")
    total = comm.allgather(energy["joules"] if measured else 0.0, "energy")   # one reader per node / GPU
    steps = max(1, s["steps_this_run"])
    seg_s = s.get("wall_s_this_run", s["wall_s"])
    if measured:
        joules = sum(total)
    else:   # estimate from the FLOPs of all ranks and the parameter traffic (read p, g; write p)
        from .energy import estimate_joules
        joules = estimate_joules(s["flops_per_step"] * steps, bytes_moved=steps * 3 * 4 * n_params * comm.size,
                                 dtype=s["dtype"])
    out["energy"] = {"source": energy["source"], "note": energy.get("note", ""), "joules": joules,
                     "joules_per_step": joules / steps, "joules_per_epoch": joules / steps * steps_per_epoch,
                     "ops_per_joule": s["flops_per_step"] * steps / joules if joules else None,
                     "mean_watts": joules / seg_s if seg_s else None}
    return out


def energy_meter(cfg, comm):
    """RAPL is per node (one rank per node reads it), NVML per GPU; otherwise a labelled estimate."""
    from .energy import EnergyMeter
    try:
        if B.on_gpu():
            m = EnergyMeter("auto", device_index=B.xp.cuda.Device().pci_bus_id, dtype=cfg.train.dtype,
                            auto_order=("nvml",))
        else:
            m = EnergyMeter("auto", dtype=cfg.train.dtype, auto_order=("rapl",) if comm.local_rank == 0 else ())
    except Exception:
        return None
    m.start()
    return m
