"""Bucketed, overlapped gradient all-reduce over the flat gradient buffer (like DDP's reducer).

The blocking path is `Comm.all_reduce_gradients` in world.py; this is the variant that starts
summing buckets while backward still runs. It sees the flat buffer and its parameter slices,
never a model.
"""
import time

from .. import backend as B

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
        self.trace = None         # run/trace.py's Tracer (logging.trace): told of writes and buckets

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
        if self.trace is not None:
            self.trace.grad(p)
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
        if self.trace is not None:
            self.trace.bucket_issued(b)
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
        if self.trace is not None:
            self.trace.bucket_issued(len(self.buckets))
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
        if not self.reqs:
            return
        if self.trace is None:
            self.comm.MPI.Request.Testall(self.reqs)
        else:                    # which buckets finished: their end on the timeline
            for i in self.comm.MPI.Request.Testsome(self.reqs) or ():
                self.trace.bucket_done(i)

    def _wait(self):
        if self.trace is None:
            self.comm.MPI.Request.Waitall(self.reqs)
        else:
            while (i := self.comm.MPI.Request.Waitany(self.reqs)) != self.comm.MPI.UNDEFINED:
                self.trace.bucket_done(i)
        self.reqs = []
