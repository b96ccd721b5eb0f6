"""NCCL through CuPy's bindings: device buffers summed on a CUDA stream (comm.backend: nccl).

MPI still starts the job and carries NCCL's unique id; see world.Comm.use_nccl.
"""
from .. import backend as B
from ..errors import UserError
from .reduce import OverlappedAllReduce


def load_nccl():
    """CuPy's NCCL bindings, or a one-line UserError saying what to install."""
    try:
        from cupy.cuda import nccl
        nccl.get_version()
    except Exception as e:   # ImportError, or the library itself missing underneath the bindings
        raise UserError("comm.backend: 'nccl' needs CuPy's NCCL bindings and the NCCL library "
                        f"(pip install cupy-cuda12x nvidia-nccl-cu12): {e}") from None
    return nccl


def nccl_unique_id(comm, nccl):
    """Rank 0 asks NCCL for a unique id (the address of its bootstrap); MPI carries it to all ranks."""
    uid = nccl.get_unique_id() if comm.rank == 0 else None
    return comm.bcast_obj(uid, what="NCCL unique id broadcast")


class NcclAllReduce:
    """Device buffers summed across ranks by NCCL, queued on a CUDA stream (CuPy's bindings).

    One communicator per rank, one GPU per rank: NCCL refuses two ranks on one device, so that is
    refused up front with the way out. Calls queue on the given stream (default: the current one)
    and need no host synchronisation before them, unlike MPI on device memory.
    """

    def __init__(self, comm, nccl=None):
        self.nccl = nccl or load_nccl()
        # the device each rank drives, by node and PCI bus id (CUDA_VISIBLE_DEVICES may renumber them)
        import socket
        here = (socket.gethostname(), B.xp.cuda.Device().pci_bus_id)
        where = comm.allgather(here, "GPU placement check")
        shared = next(([r for r, w in enumerate(where) if w == x] for x in where if where.count(x) > 1), None)
        if shared:   # every rank sees the same list and stops here alike
            raise UserError(f"comm.backend: 'nccl' needs one GPU per rank, but ranks {shared} all drive GPU "
                            f"{where[shared[0]][1]} on {where[shared[0]][0]}; start at most one rank per GPU "
                            "(--gpus-per-task=1) or use comm.backend=mpi")
        uid = nccl_unique_id(comm, self.nccl)
        # every rank must call in; one that never does is reported like a missing collective
        comm._enter("NCCL communicator set-up", max(comm.timeout_s, 600.0))
        try:
            self.nc = self.nccl.NcclCommunicator(comm.size, uid, comm.rank)
        except Exception as e:
            raise UserError(f"comm.backend: 'nccl' could not set up its communicator on rank {comm.rank}: {e}") from None
        finally:
            comm._leave()
        import numpy
        self.dtypes = {numpy.dtype(numpy.float32): self.nccl.NCCL_FLOAT32,
                       numpy.dtype(numpy.float64): self.nccl.NCCL_FLOAT64,
                       numpy.dtype(numpy.float16): self.nccl.NCCL_FLOAT16}

    def _args(self, buf, stream):
        if buf.dtype not in self.dtypes:
            raise TypeError(f"NCCL all-reduce of {buf.dtype} is not supported here")
        if not buf.flags.c_contiguous:
            raise ValueError("NCCL needs a contiguous buffer")
        s = stream if stream is not None else B.xp.cuda.get_current_stream()
        return buf.data.ptr, buf.size, self.dtypes[buf.dtype], s.ptr

    def all_reduce_(self, buf, stream=None):
        ptr, n, dt, sp = self._args(buf, stream)
        self.nc.allReduce(ptr, ptr, n, dt, self.nccl.NCCL_SUM, sp)
        return buf

    def broadcast_(self, buf, root=0, stream=None):
        ptr, n, dt, sp = self._args(buf, stream)
        self.nc.bcast(ptr, n, dt, root, sp)
        return buf


class NcclOverlappedAllReduce(OverlappedAllReduce):
    """The same buckets, reduced by NCCL on a side stream while backward goes on (as DDP does).

    A ready bucket records an event on the compute stream; the side stream waits for that event
    (on the device: the host never blocks) and runs the bucket's all-reduce. finish() waits on the
    host for the side stream, inside the watchdog's window, so the optimizer sees summed gradients.
    """

    def __init__(self, comm, space, bucket_mb=25.0, first_bucket_mb=1.0):
        super().__init__(comm, space, bucket_mb, first_bucket_mb)
        cuda = B.xp.cuda
        self.side = cuda.Stream(non_blocking=True)
        self.events = [cuda.Event(disable_timing=True) for _ in range(len(self.buckets) + 1)]

    def _start(self, view):
        ev = self.events[len(self.reqs)]
        ev.record(B.xp.cuda.get_current_stream())
        self.side.wait_event(ev)
        self.reqs.append(self.comm.nccl.all_reduce_(view, stream=self.side))

    def _progress(self):
        pass

    def _wait(self):
        self.side.synchronize()
        self.reqs = []
