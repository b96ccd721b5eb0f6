"""All communication lives here: the only module that imports mpi4py.

With one process it does nothing and costs nothing (no mpiexec needed). With several, gradients
are summed in place on the flat buffer (each rank already scaled its loss by 1/global_batch,
so the SUM is the global mean gradient). Device buffers are synchronised before any MPI call and
passed directly when MPI is CUDA-aware, else staged through a host buffer. With
`comm.backend: nccl` (GPUs, one per rank) device buffers are summed by NCCL on a CUDA stream
instead, and MPI keeps the rest: start-up, the NCCL unique id, heartbeats, small agreements.

A watchdog thread bounds every collective: a rank that never arrives (killed, frozen, stuck in
I/O) ends the whole job after `timeout_s` with a message naming the step, instead of a hang.
"""
import atexit
import os
import sys
import threading
import time

import numpy as np

from . import backend as B
from .errors import UserError


def _launcher_tasks():
    """Tasks the launcher started, from its environment (None when not under a launcher)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "SLURM_PROCID" in os.environ and os.environ.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return None


class Comm:
    def __init__(self, timeout_s=300.0, serial=False):
        self.timeout_s = float(timeout_s)
        if serial:   # a world of one even inside mpiexec: reference runs in tests and benchmarks
            self._init_serial()
            return
        self.MPI, self.comm, self.rank, self.size = None, None, 0, 1
        tasks = _launcher_tasks()
        try:
            from mpi4py import MPI
        except ImportError as e:
            if tasks and tasks > 1:
                raise UserError(f"launched as {tasks} tasks but mpi4py cannot be imported ({e}); "
                                "install mpi4py and an MPI (e.g. pip install mpi4py mpich)") from None
            MPI = None
        if MPI is not None:
            self.MPI, self.comm = MPI, MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if tasks and tasks > 1 and self.size == 1:
            raise UserError(f"the launcher started {tasks} tasks but MPI sees a world of 1: each rank "
                            "would train alone (under SLURM use srun --mpi=pmi2; mpi4py must use the "
                            "same MPI as mpiexec)")
        if "SLURM_PROCID" in os.environ and self.size > 1 and int(os.environ["SLURM_PROCID"]) != self.rank:
            self.print(f"note: SLURM_PROCID={os.environ['SLURM_PROCID']} differs from MPI rank {self.rank}")
        self.local_rank, self.local_size = self._local()
        self.cuda_aware = self._cuda_aware()
        self.nccl = None           # an NcclAllReduce once use_nccl() ran
        self._host = None
        self.comm_s = 0.0          # seconds inside the gradient all-reduce since reset
        self.comm_calls = 0
        self.step = -1             # for watchdog messages
        self._busy = None          # (what, t0, limit_s) while inside a collective
        self._wd = None
        self._hb_reqs, self._hb_persistent = [], None
        self._hb_send = np.zeros(1, dtype=np.int64)
        self._hb_recv = np.zeros(self.size, dtype=np.int64)
        if self.size > 1:
            self._wd = threading.Thread(target=self._watchdog, daemon=True, name="ddp-watchdog")
            self._wd.start()

    def _init_serial(self):
        self.MPI, self.comm, self.rank, self.size = None, None, 0, 1
        self.local_rank, self.local_size, self.cuda_aware, self._host, self.nccl = 0, 1, False, None, None
        self.comm_s, self.comm_calls, self.step, self._busy, self._wd = 0.0, 0, -1, None, None

    # ------------------------------------------------------------------ topology
    def _local(self):
        if self.size == 1:
            return 0, 1
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        r, s = local.Get_rank(), local.Get_size()
        local.Free()
        return r, s

    def _cuda_aware(self):
        q = getattr(self.MPI, "Query_cuda_support", None) if self.MPI else None
        try:
            return bool(q()) if q else False
        except Exception:
            return False

    # ------------------------------------------------------------------ watchdog
    def _watchdog(self):
        while True:
            time.sleep(min(0.25, self.timeout_s / 10))
            busy = self._busy
            if not busy:
                continue
            waited = time.monotonic() - busy[1]
            limit = busy[2]
            # rank 0 holds the heartbeats and can name who is missing, so it reports first; the
            # others give it a moment before ending the job themselves
            grace = 0.0 if self.rank == 0 else min(5.0, limit)
            if waited > limit + grace:
                missing = self._missing_ranks()
                who = (f"rank(s) {missing} did not arrive (died, froze or stuck in I/O)" if missing
                       else f"another rank did not arrive (rank {self.rank} of {self.size} was waiting)")
                sys.stderr.write(f"error: {busy[0]} at step {self.step} did not complete within "
                                 f"comm.timeout_s={limit:g}s: {who}; ending the job\n")
                sys.stderr.flush()
                os._exit(3)

    # Heartbeats: before each gradient all-reduce every rank posts its step number to rank 0
    # (8 bytes, non-blocking), so when a collective hangs rank 0 can tell which ranks never came.
    HB_TAG = 0x4842

    # Persistent requests, built once: a step costs one Startall and one Waitall.
    def _heartbeat_post(self):
        if self._hb_persistent is None:
            if self.rank == 0:
                self._hb_persistent = [self.comm.Recv_init(self._hb_recv[r:r + 1], source=r, tag=self.HB_TAG)
                                       for r in range(1, self.size)]
            else:
                self._hb_persistent = [self.comm.Send_init(self._hb_send, dest=0, tag=self.HB_TAG)]
            atexit.register(self._heartbeat_free)   # runs before mpi4py's own finalize (LIFO)
        self._hb_send[0] = self.step
        self.MPI.Prequest.Startall(self._hb_persistent)
        self._hb_reqs = self._hb_persistent

    def _heartbeat_free(self):
        for q in self._hb_persistent or []:
            try:
                q.Free()
            except Exception:
                pass
        self._hb_persistent = None

    def _heartbeat_done(self):
        self.MPI.Request.Waitall(self._hb_reqs)
        self._hb_reqs = []

    def _missing_ranks(self):
        if self.rank != 0 or not self._hb_reqs or self.MPI.Query_thread() < self.MPI.THREAD_MULTIPLE:
            return []
        try:
            return [r for r, q in zip(range(1, self.size), self._hb_reqs) if not q.Get_status()]
        except Exception:
            return []

    def _enter(self, what, timeout_s=None):
        self._busy = (what, time.monotonic(), timeout_s or self.timeout_s)

    def _leave(self):
        self._busy = None

    # ------------------------------------------------------------------ collectives
    @staticmethod
    def _on_device(buf):
        return B.on_gpu() and not isinstance(buf, np.ndarray)

    def _device_call(self, buf, fn):
        """Run fn on a buffer MPI can read: device memory if CUDA-aware, else a host copy."""
        if not self._on_device(buf):     # host buffers (e.g. evaluation sums, also in a GPU run) as is
            return fn(buf)
        B.synchronize()
        if self.cuda_aware:
            return fn(buf)
        if self._host is None or self._host.shape != buf.shape or self._host.dtype != buf.dtype:
            self._host = np.empty(buf.shape, buf.dtype)
        buf.get(out=self._host)
        fn(self._host)
        buf.set(self._host)

    def use_nccl(self):
        """Sum device buffers through NCCL from now on (after backend.use('cupy') picked the GPU)."""
        if self.size > 1 and self.nccl is None:
            self.nccl = NcclAllReduce(self)

    def all_reduce_sum_(self, buf, what="all-reduce"):
        """In-place SUM over ranks of a contiguous buffer."""
        if self.size == 1:
            return buf
        self._enter(what)
        try:
            if self.nccl is not None and self._on_device(buf):
                self.nccl.all_reduce_(buf)
                B.synchronize()          # inside the watchdog's window, and honest timings
            else:
                self._device_call(buf, lambda b: self.comm.Allreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM))
        finally:
            self._leave()
        return buf

    def all_reduce_gradients(self, space):
        """Sum the flat gradient buffer (and its extra statistic slots) across ranks."""
        if self.size == 1:
            return
        self._heartbeat_post()
        t0 = time.perf_counter()
        self.all_reduce_sum_(space.grads_full, "gradient all-reduce")
        self.comm_s += time.perf_counter() - t0
        self.comm_calls += 1
        self._heartbeat_done()

    def overlapped(self, space, bucket_mb, first_bucket_mb):
        """An OverlappedAllReduce for this model, or None where there is nothing to overlap."""
        if self.size == 1 or (B.on_gpu() and not (self.cuda_aware or self.nccl)):
            return None   # host staging would serialise the buckets anyway
        cls = NcclOverlappedAllReduce if self.nccl is not None and B.on_gpu() else OverlappedAllReduce
        return cls(self, space, bucket_mb, first_bucket_mb)

    def all_reduce_overlapped_finish(self, ov):
        self._heartbeat_post()
        dt = ov.finish()
        self.comm_s += dt
        self.comm_calls += 1
        self._heartbeat_done()

    def broadcast_(self, buf, root=0, what="broadcast"):
        if self.size == 1:
            return buf
        self._enter(what)
        try:
            if self.nccl is not None and self._on_device(buf):
                self.nccl.broadcast_(buf, root)
                B.synchronize()
            else:
                self._device_call(buf, lambda b: self.comm.Bcast(b, root=root))
        finally:
            self._leave()
        return buf

    def allgather(self, obj, what="allgather", timeout_s=None):
        """Small Python objects from every rank (checks, timings): a list indexed by rank."""
        if self.size == 1:
            return [obj]
        self._enter(what, timeout_s)
        try:
            return self.comm.allgather(obj)
        finally:
            self._leave()

    def bcast_obj(self, obj, root=0, what="broadcast", timeout_s=None):
        """A small Python object from `root` to every rank."""
        if self.size == 1:
            return obj
        self._enter(what, timeout_s)
        try:
            return self.comm.bcast(obj, root=root)
        finally:
            self._leave()

    def any(self, flag: bool, what="agreement") -> bool:
        """True if any rank passes True (used to agree on errors and signals)."""
        if self.size == 1:
            return bool(flag)
        self._enter(what)
        try:
            return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))
        finally:
            self._leave()

    def barrier(self):
        if self.size > 1:
            self._enter("barrier")
            try:
                self.comm.Barrier()
            finally:
                self._leave()

    # ------------------------------------------------------------------ process control
    def print(self, *args, **kw):
        """Print on rank 0 only, flushed (logs of many ranks interleave otherwise)."""
        if self.rank == 0:
            print(*args, **kw, flush=True)

    def abort(self, code=1):
        """End every rank now (after a rank-local failure the others may sit in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            self.comm.Abort(code)
        os._exit(code)

    def wtime(self):
        return time.perf_counter()


class OverlappedAllReduce:
    """Bucketed, overlapped gradient all-reduce (like DDP's reducer).

    Buckets are contiguous slices of the flat gradient buffer, filled in reverse parameter order
    (the order backward produces them), the first one small so communication starts early. A
    parameter is ready when it received as many gradient writes as it did in the first step
    (counted on a blocking step), so tied weights and micro-steps need no special cases. Buckets
    are issued strictly in index order, the same on every rank; each readiness event also pokes
    MPI's progress engine (Testall), which is what makes non-blocking collectives advance on MPIs
    without an asynchronous progress thread.
    """

    def __init__(self, comm, space, bucket_mb=25.0, first_bucket_mb=1.0):
        self.comm, self.space = comm, space
        itemsize = space.grads.itemsize
        self.buckets, self.bucket_of, cur, cap = [], {}, [], first_bucket_mb * 2**20
        for p in reversed(space.plist):
            cur.append(p)
            if sum(q.size for q in cur) * itemsize >= cap:
                self._close(cur)
                cur, cap = [], bucket_mb * 2**20
        if cur:
            self._close(cur)
        self.expected = None      # gradient writes per parameter, learned on the first step
        self.reqs, self.next, self.pending = [], 0, []
        self.exposed_s = 0.0

    def _close(self, params):
        lo = min(p.offset for p in params)
        hi = max(p.offset + p.size for p in params)
        for p in params:
            self.bucket_of[id(p)] = len(self.buckets)
        self.buckets.append((lo, hi, params))

    # -------------------------------------------------------------- step protocol
    def begin(self, last_micro_step=True):
        """Arm the hooks for the backward that completes this step's gradients."""
        self.counts = {id(p): 0 for p in self.space.plist}
        for p in self.space.plist:
            p.hook = self._written if last_micro_step else None
        self.next, self.reqs = 0, []
        if self.expected is not None:
            self.pending = [sum(self.expected[id(p)] > 0 for p in ps) for _, _, ps in self.buckets]

    def _written(self, p):
        c = self.counts[id(p)] = self.counts[id(p)] + 1
        if self.expected is None or c != self.expected[id(p)]:
            return
        self.pending[self.bucket_of[id(p)]] -= 1
        while self.next < len(self.buckets) and self.pending[self.next] == 0:
            self._issue(self.next)
        self._progress()

    def _issue(self, b):
        lo, hi, _ = self.buckets[b]
        self._start(self.space.grads[lo:hi])
        self.next = b + 1

    def finish(self):
        """Issue what is left (and the statistics slots), wait for everything; returns seconds waited."""
        for p in self.space.plist:
            p.hook = None
        if self.expected is None:            # first step: learn the write counts, reduce blocking
            self.expected = dict(self.counts)
            t0 = time.perf_counter()
            self.comm.all_reduce_sum_(self.space.grads_full, "gradient all-reduce")
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        while self.next < len(self.buckets):
            self._issue(self.next)
        self._start(self.space.extras)
        self.comm._enter("overlapped gradient all-reduce")
        try:
            self._wait()
        finally:
            self.comm._leave()
        return time.perf_counter() - t0

    # -------------------------------------------------------------- MPI transport
    def _start(self, view):
        B.synchronize()
        self.reqs.append(self.comm.comm.Iallreduce(self.comm.MPI.IN_PLACE, view, op=self.comm.MPI.SUM))

    def _progress(self):
        if self.reqs:
            self.comm.MPI.Request.Testall(self.reqs)

    def _wait(self):
        self.comm.MPI.Request.Waitall(self.reqs)
        self.reqs = []


# ---------------------------------------------------------------------------- NCCL
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
