"""ZeRO stage 1 (optim.zero: 1), the communication side: gradients reduce-scattered, parameters
all-gathered, the optimizer state gathered whole for checkpoints.

Rank r owns elements [displs[r], displs[r] + counts[r]) of the flat buffers (contiguous, sizes
differing by at most one element, so no padding). A step:

  reduce-scatter  every rank sends its full gradient, receives the SUM of its own slice only
                  (MPI_Reduce_scatter with counts: (N-1)/N of the buffer per rank, like half an
                  all-reduce)
  statistics      loss, correct, items, stop request and each slice's squared norm summed in one
                  small all-reduce: the global norm for clipping, the statistics as before
  update          the optimizer steps its slice, with state allocated for that slice only (nn/)
  all-gather      every rank's updated slice to every rank (MPI_Allgatherv, in place)

It sees flat buffers and counts, never a model or an optimizer; every call runs inside the
watchdog's window, with the heartbeats of the plain path.
"""
import time

import numpy as np

from .. import backend as B


def shard_counts(n, size):
    """(counts, displs): contiguous slices of n elements over `size` ranks, the first n % size one
    element longer."""
    counts = [n // size + (r < n % size) for r in range(size)]
    displs = [sum(counts[:r]) for r in range(size)]
    return counts, displs


class ZeroReducer:
    def __init__(self, comm, n):
        self.comm, self.n = comm, n
        self.counts, self.displs = shard_counts(n, comm.size)
        self.lo = self.displs[comm.rank]
        self.hi = self.lo + self.counts[comm.rank]
        self._staged = {}           # host copies of device buffers, for an MPI that is not CUDA-aware

    def _host(self, key, buf):
        """A host buffer MPI can read for device buffer `buf` (kept: a step allocates nothing)."""
        h = self._staged.get(key)
        if h is None or h.shape != buf.shape or h.dtype != buf.dtype:
            h = self._staged[key] = np.empty(buf.shape, buf.dtype)
        return h

    def _staging(self, *bufs):
        c = self.comm
        if not any(c._on_device(b) for b in bufs):
            return False
        B.synchronize()
        return not c.cuda_aware

    # ------------------------------------------------------------------ a step
    def reduce_gradients(self, grads, shard, stats, norm_slot):
        """grads[:n] (this rank's full gradient) summed over ranks into `shard` (this rank's slice);
        then `stats` (the statistic slots) summed, with shard's squared norm in stats[norm_slot]."""
        c = self.comm
        c._heartbeat_post()
        t0 = time.perf_counter()
        c._enter("gradient reduce-scatter")
        try:
            mpi = c.comm
            if self._staging(grads, shard):
                send, recv = self._host("g", grads), self._host("s", shard)
                grads.get(out=send)
                mpi.Reduce_scatter(send, recv, self.counts, op=c.MPI.SUM)
                shard.set(recv)
            else:
                mpi.Reduce_scatter(grads, shard, self.counts, op=c.MPI.SUM)
        finally:
            c._leave()
        stats[norm_slot] = B.xp.dot(shard, shard)
        c.all_reduce_sum_(stats, "statistics all-reduce")
        c.comm_s += time.perf_counter() - t0
        c.comm_calls += 1
        c._heartbeat_done()

    def all_gather_params(self, params):
        """Every rank's updated slice of `params` to every rank, in place; returns the seconds."""
        c = self.comm
        t0 = time.perf_counter()
        c._enter("parameter all-gather", heartbeat=True)
        try:
            spec = lambda b: [b, (self.counts, self.displs)]     # noqa: E731
            if self._staging(params):
                h = self._host("p", params)
                params.get(out=h)
                c.comm.Allgatherv(c.MPI.IN_PLACE, spec(h))
                params.set(h)
            else:
                c.comm.Allgatherv(c.MPI.IN_PLACE, spec(params))
        finally:
            c._leave()
        dt = time.perf_counter() - t0
        c.comm_s += dt
        return dt

    # ------------------------------------------------------------------ checkpoints
    def gather_state(self, arrays):
        """{name: this rank's slice} -> {name: the whole array} on rank 0 (host arrays; None on
        the other ranks). A collective: every rank calls it, in the same order of names."""
        c, out = self.comm, {}
        c._enter("optimizer state gather", heartbeat=True)
        try:
            for name in sorted(arrays):
                mine = np.ascontiguousarray(B.to_numpy(arrays[name]))
                full = np.empty(self.n, mine.dtype) if c.rank == 0 else None
                c.comm.Gatherv(mine, [full, (self.counts, self.displs)] if c.rank == 0 else None, root=0)
                out[name] = full
        finally:
            c._leave()
        return out if c.rank == 0 else None
