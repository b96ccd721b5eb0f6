"""The world of ranks: MPI start-up, collectives on flat buffers, the watchdog and heartbeats.

parallel/ is the only package that imports mpi4py (here) or NCCL (nccl.py).

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

from .. import backend as B
from ..errors import UserError
from .env import launcher_tasks


class Comm:
    def __init__(self, timeout_s=300.0, serial=False):
        self.timeout_s = float(timeout_s)
        if serial:   # a world of one even inside mpiexec: reference runs in tests and benchmarks
            self._init_serial()
            return
        self.MPI, self.comm, self.rank, self.size = None, None, 0, 1
        tasks = launcher_tasks()
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
        self.ring = None           # a RingAllReduce once use_ring() ran (comm.algorithm: ring)
        self._host = None
        self.comm_s = 0.0          # seconds inside the gradient all-reduce since reset
        self.comm_calls = 0
        self.step = -1             # for watchdog messages
        self._busy = None          # (what, t0, limit_s) while inside a collective
        self._wd = None
        self._hb_reqs, self._hb_persistent, self._hb_own = [], None, False
        self._hb_send = np.zeros(1, dtype=np.int64)
        self._hb_recv = np.zeros(self.size, dtype=np.int64)
        if self.size > 1:
            self._wd = threading.Thread(target=self._watchdog, daemon=True, name="ddp-watchdog")
            self._wd.start()

    def _init_serial(self):
        self.MPI, self.comm, self.rank, self.size = None, None, 0, 1
        self.local_rank, self.local_size, self.cuda_aware, self._host, self.nccl = 0, 1, False, None, None
        self.ring = None
        self.comm_s, self.comm_calls, self.step, self._busy, self._wd = 0.0, 0, -1, None, None
        self._hb_reqs, self._hb_own = [], False

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
                # heartbeats name them in a gradient all-reduce; in any collective of two ranks
                # the one missing is the other (a node that died during an evaluation)
                missing = self._missing_ranks() or ([1 - self.rank] if self.size == 2 else [])
                who = (f"rank(s) {missing} did not arrive (died, froze or stuck in I/O)" if missing
                       else f"another rank did not arrive (rank {self.rank} of {self.size} was waiting)")
                sys.stderr.write(f"error: {busy[0]} at step {self.step} did not complete within "
                                 f"comm.timeout_s={limit:g}s: {who}; ending the job\n")
                sys.stderr.flush()
                os._exit(3)

    # Heartbeats: before each collective every rank posts its step number to rank 0 (8 bytes,
    # non-blocking), so when a collective hangs rank 0 can tell which ranks never came. Every rank
    # calls the same collectives in the same order, so the n-th heartbeat of a rank pairs with
    # rank 0's n-th receive from it.
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

    def _enter(self, what, timeout_s=None, heartbeat=False):
        """Start the watchdog's clock for `what`; heartbeat=True (a collective every rank calls)
        also posts a heartbeat where none is out (the gradient all-reduce posts its own)."""
        if heartbeat and self.size > 1 and not self._hb_reqs:
            self._heartbeat_post()
            self._hb_own = True
        self._busy = (what, time.monotonic(), timeout_s or self.timeout_s)

    def _leave(self):
        if self._hb_own:
            # still inside the watchdog's window: after a broadcast the root may be done before the
            # others arrive, and here it waits for their heartbeats
            self._hb_own = False
            self._heartbeat_done()
        self._busy = None

    # ------------------------------------------------------------------ collectives
    @staticmethod
    def _on_device(buf):
        return B.on_gpu() and not isinstance(buf, np.ndarray)

    def _device_call(self, buf, fn, host=False):
        """Run fn on a buffer MPI can read: device memory if CUDA-aware (and not `host`: fn does
        NumPy arithmetic), else a host copy."""
        if not self._on_device(buf):     # host buffers (e.g. evaluation sums, also in a GPU run) as is
            return fn(buf)
        B.synchronize()
        if self.cuda_aware and not host:
            return fn(buf)
        if self._host is None or self._host.shape != buf.shape or self._host.dtype != buf.dtype:
            self._host = np.empty(buf.shape, buf.dtype)
        buf.get(out=self._host)
        fn(self._host)
        buf.set(self._host)

    def use_nccl(self):
        """Sum device buffers through NCCL from now on (after backend.use('cupy') picked the GPU)."""
        if self.size > 1 and self.nccl is None:
            from .nccl import NcclAllReduce
            self.nccl = NcclAllReduce(self)

    def use_ring(self, n, dtype, compress="none", error_feedback=False, exact_tail=0):
        """Sum the gradient buffer (n elements of dtype) with the hand-written ring from now on
        (ring.py); the last exact_tail elements never travel compressed."""
        if self.size > 1:
            from .ring import RingAllReduce
            self.ring = RingAllReduce(self, n, dtype, compress, error_feedback, exact_tail)

    def bytes_per_step(self, nbytes):
        """(bytes this rank sent per gradient all-reduce, how known): counted by the ring, else
        what a bandwidth-optimal all-reduce of nbytes sends, 2(N-1)/N of it (MPI's own choice of
        algorithm is not visible from here)."""
        if self.size == 1:
            return 0, "none"
        if self.ring is not None and self.ring.calls:
            return self.ring.bytes_sent / self.ring.calls, "counted"
        return 2 * (self.size - 1) * nbytes / self.size, "model"

    def all_reduce_sum_(self, buf, what="all-reduce"):
        """In-place SUM over ranks of a contiguous buffer."""
        if self.size == 1:
            return buf
        self._enter(what, heartbeat=True)
        try:
            if self.nccl is not None and self._on_device(buf):
                self.nccl.all_reduce_(buf)
                B.synchronize()          # inside the watchdog's window, and honest timings
            else:
                self._device_call(buf, lambda b: self.comm.Allreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM))
        finally:
            self._leave()
        return buf

    def all_reduce_gradients(self, grads):
        """Sum the flat gradient buffer (with its extra statistic slots) across ranks."""
        if self.size == 1:
            return
        self._heartbeat_post()
        t0 = time.perf_counter()
        if self.ring is not None:
            self._enter("ring gradient all-reduce")
            try:
                self._device_call(grads, self.ring.all_reduce_, host=True)
            finally:
                self._leave()
        else:
            self.all_reduce_sum_(grads, "gradient all-reduce")
        self.comm_s += time.perf_counter() - t0
        self.comm_calls += 1
        self._heartbeat_done()

    def overlapped(self, space, bucket_mb, first_bucket_mb):
        """An OverlappedAllReduce for this model, or None where there is nothing to overlap."""
        if self.size == 1 or (B.on_gpu() and not (self.cuda_aware or self.nccl)):
            return None   # host staging would serialise the buckets anyway
        if self.nccl is not None and B.on_gpu():
            from .nccl import NcclOverlappedAllReduce as cls
        else:
            from .reduce import OverlappedAllReduce as cls
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
        self._enter(what, heartbeat=True)
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
        self._enter(what, timeout_s, heartbeat=True)
        try:
            return self.comm.allgather(obj)
        finally:
            self._leave()

    def bcast_obj(self, obj, root=0, what="broadcast", timeout_s=None):
        """A small Python object from `root` to every rank."""
        if self.size == 1:
            return obj
        self._enter(what, timeout_s, heartbeat=True)
        try:
            return self.comm.bcast(obj, root=root)
        finally:
            self._leave()

    def any(self, flag: bool, what="agreement") -> bool:
        """True if any rank passes True (used to agree on errors and signals)."""
        if self.size == 1:
            return bool(flag)
        self._enter(what, heartbeat=True)
        try:
            return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))
        finally:
            self._leave()

    def barrier(self):
        if self.size > 1:
            self._enter("barrier", heartbeat=True)
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

    def library_version(self):
        """The MPI library this world runs on (first line of MPI_Get_library_version), or None."""
        if self.MPI is None:
            try:
                from mpi4py import MPI
            except ImportError:
                return None
        else:
            MPI = self.MPI
        try:
            return MPI.Get_library_version().strip().splitlines()[0]
        except Exception:
            return None
