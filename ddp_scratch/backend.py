"""The one place where the array module is chosen: NumPy on the CPU, CuPy on NVIDIA GPUs.

Everything else reads `backend.xp` at call time, so `use("cupy")` switches the whole package.
"""
import numpy

from .errors import UserError

xp = numpy
name = "numpy"


def use(backend: str, device: int | None = None):
    """Select the array module; `device` picks the GPU (default: local rank modulo GPU count)."""
    global xp, name
    if backend == "numpy":
        xp, name = numpy, "numpy"
    elif backend == "cupy":
        try:
            import cupy
        except ImportError as e:
            raise UserError(f"backend: 'cupy' needs the optional extra gpu (pip install cupy-cuda12x): {e}") from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:   # no driver, a driver too old for CuPy's CUDA runtime, ...
            raise UserError(f"backend: 'cupy' was asked for but no usable CUDA device: {e}") from None
        if n == 0:
            raise UserError("backend: 'cupy' was asked for but no CUDA device is visible")
        cupy.cuda.Device(device_index(device, n) if device is not None else 0).use()
        xp, name = cupy, "cupy"
    else:
        raise UserError(f"backend: expected 'numpy' or 'cupy', got {backend!r}")
    return xp


def device_index(local_rank: int, n_visible: int) -> int:
    """The GPU a rank drives among the `n_visible` its process sees (numbered as CUDA_VISIBLE_DEVICES
    lists them): SLURM's --gpus-per-task=1 leaves each task one GPU (CUDA_VISIBLE_DEVICES=<its own>),
    so 0; where every rank of a node sees all the node's GPUs (--gpus-per-node, mpiexec), the
    local rank's own; more ranks than GPUs share them round-robin."""
    return local_rank % n_visible


def device_index_in_use():
    """The CUDA device this process uses (None on the CPU)."""
    return int(xp.cuda.Device().id) if name == "cupy" else None


def on_gpu() -> bool:
    return name == "cupy"


def to_numpy(a):
    """A host copy (or the array itself on the CPU)."""
    if name == "cupy" and not isinstance(a, numpy.ndarray):
        return a.get()
    return numpy.asarray(a)


def asarray(a, dtype=None):
    return xp.asarray(a, dtype=dtype)


def take_into(a, idx, out, axis=None):
    """a.take(idx, axis) written into `out`. NumPy's take copies its whole result through a
    temporary behind `out` in its default mode='raise'; callers pass indices that are in range by
    construction, so 'clip' lets it write straight into `out`. CuPy's take has no mode."""
    if name == "numpy":
        return numpy.take(a, idx, axis=axis, out=out, mode="clip")
    return xp.take(a, idx, axis=axis, out=out)


def synchronize():
    """Wait for queued device work: before reading a timer and before any MPI call on device memory."""
    if name == "cupy":
        xp.cuda.get_current_stream().synchronize()


def device_memory_bytes():
    """Device memory held by CuPy's pool (it keeps freed blocks: the run's high-water mark), or None."""
    if name == "cupy":
        return int(xp.get_default_memory_pool().total_bytes())
    return None


def device_name() -> str:
    if name == "cupy":
        return xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)["name"].decode()
    import platform
    return platform.processor() or platform.machine()


def available_memory():
    """(bytes free for a new allocation, where) on the device arrays live: the GPU's free memory
    with CuPy; on the CPU the kernel's MemAvailable, capped by this cgroup's memory limit. None
    for the bytes when it cannot be told."""
    if name == "cupy":
        free, _ = xp.cuda.runtime.memGetInfo()
        return int(free), f"free on GPU {xp.cuda.Device().id}"
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:   # cgroup v2: a container's or a SLURM job's limit
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail, "available on this node"
