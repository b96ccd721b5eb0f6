"""A timeline of every rank (logging.trace: true), written as Chrome trace JSON to OUT/trace.json:
open it in https://ui.perfetto.dev or chrome://tracing. One track (pid) per rank, named "rank R";
thread 0 holds the step and its phases, thread 1 the overlapped all-reduce's buckets.

  step                              one optimizer step, with args {"step": N}
    batch, forward, backward        (forward and backward once per micro-step, comm.accumulate)
      grad <param>                  from the previous gradient write to this parameter's (so the
                                    backward of the layer that owns it, roughly)
    gradient all-reduce             or, under ZeRO-1, reduce-scatter + statistics
    optimizer                       norm, clipping and the update
    parameter all-gather            ZeRO-1 only
  evaluation, checkpoint            outside the steps
  bucket B all-reduce (thread 1)    comm.overlap: from the bucket's issue to when MPI was seen to
                                    finish it (Testsome at each gradient write, Waitany at the end)

Events go into arrays allocated once (CAPACITY per rank, 25 bytes each): a long run keeps its
first CAPACITY events and says how many it dropped (trace.json's otherData, and one line on
stderr). Times are time.perf_counter() on each rank, moved onto rank 0's clock by the offset
measured at start-up (parallel/timeline.py), in microseconds from rank 0's first event.
On a GPU each phase boundary synchronises the device (the phases would otherwise end at their
kernel launches): tracing slows a GPU run more than a CPU run.
When off, the trainer pays one `is not None` test per phase and allocates nothing.
"""
import json
import sys
import time

import numpy as np

from .. import backend as B
from ..fsutil import atomic_open
from ..parallel.timeline import clock_offsets, stream_to_root

CAPACITY = 1 << 18       # events per rank: 6.3 MiB of arrays
PHASES = ("step", "batch", "forward", "backward", "gradient all-reduce", "reduce-scatter + statistics",
          "optimizer", "parameter all-gather", "evaluation", "checkpoint")
(STEP, BATCH, FORWARD, BACKWARD, ALLREDUCE, REDUCE_SCATTER, OPTIMIZER, ALLGATHER, EVALUATION,
 CHECKPOINT) = range(len(PHASES))
STATISTICS_BUCKET = "statistics slots all-reduce"


class Tracer:
    def __init__(self, rank, capacity=CAPACITY):
        self.rank, self.capacity = rank, capacity
        self.names = list(PHASES)
        self.kind = np.zeros(capacity, np.int32)
        self.tid = np.zeros(capacity, np.int8)
        self.step = np.full(capacity, -1, np.int32)
        self.t = np.zeros((capacity, 2))
        self.n = self.dropped = 0
        self.last = self.glast = time.perf_counter()
        self.offset = self.rtt = 0.0
        self.grad_ids, self.bucket_ids, self.issued = {}, [], []

    def _name(self, name):
        self.names.append(name)
        return len(self.names) - 1

    def add(self, kind, t0, t1, tid=0, step=-1):
        n = self.n
        if n == self.capacity:
            self.dropped += 1
            return
        self.kind[n], self.tid[n], self.step[n] = kind, tid, step
        self.t[n, 0], self.t[n, 1] = t0, t1
        self.n = n + 1

    @staticmethod
    def now():
        B.synchronize()
        return time.perf_counter()

    # ------------------------------------------------------------------ the step's phases
    def mark(self, kind, since=None):
        """Phase `kind` ended now; it began where the previous one ended (or at `since`)."""
        t = self.now()
        self.add(kind, self.last if since is None else since, t)
        self.last = self.glast = t

    def communicated(self, kind, t0, t1):
        """The gradient exchange took [t0, t1]; overlapped buckets not seen to end, end with it."""
        self.add(kind, t0, t1)
        self.last = self.glast = t1
        self.close_buckets(t1)

    # ------------------------------------------------------------------ gradients and buckets
    def watch(self, space, overlap):
        """Time every gradient write (Param.hook; through the reducer's hook when it has one)."""
        self.grad_ids = {id(p): self._name(f"grad {p.name}") for p in space.plist}
        if overlap is None:
            for p in space.plist:
                p.hook = self.grad
            return
        overlap.trace = self
        self.bucket_ids = [self._name(f"bucket {b} all-reduce") for b in range(len(overlap.buckets))]
        self.bucket_ids.append(self._name(STATISTICS_BUCKET))
        self.issued = [0.0] * len(self.bucket_ids)

    def grad(self, p):
        t = self.now()
        self.add(self.grad_ids[id(p)], self.glast, t)
        self.glast = t

    def bucket_issued(self, i):
        self.issued[i] = time.perf_counter()

    def bucket_done(self, i):
        self.add(self.bucket_ids[i], self.issued[i], time.perf_counter(), tid=1)
        self.issued[i] = 0.0

    def close_buckets(self, t):
        """Buckets whose end nobody observed (NCCL's side stream): end them when the wait ended."""
        for i, t0 in enumerate(self.issued):
            if t0:
                self.add(self.bucket_ids[i], t0, t, tid=1)
                self.issued[i] = 0.0

    # ------------------------------------------------------------------ start-up and the file
    def align(self, comm):
        """Measure this rank's clock against rank 0's (a collective)."""
        self.offset, self.rtt = clock_offsets(comm)

    def events(self):
        n = self.n
        return {"names": self.names, "kind": self.kind[:n], "tid": self.tid[:n], "step": self.step[:n],
                "t": self.t[:n] + self.offset, "dropped": self.dropped, "offset": self.offset, "rtt": self.rtt}

    def write(self, comm, path):
        """Every rank's events into `path`, written by rank 0 one rank at a time, so its memory
        holds one rank's events however many ranks there are (a collective). The file replaces
        the old one only once complete."""
        first = comm.allgather(float(self.t[0, 0] + self.offset) if self.n else None, "trace start")
        origin = min((t for t in first if t is not None), default=0.0)
        other = {"capacity_per_rank": self.capacity, "dropped_events": 0, "clock_offset_us": [],
                 "clock_round_trip_us": []}
        failed, f, written = [], None, [0]

        def consume(pid, r):          # rank 0: one rank's events arrived
            other["dropped_events"] += r["dropped"]
            other["clock_offset_us"].append(round(r["offset"] * 1e6, 3))
            other["clock_round_trip_us"].append(round(r["rtt"] * 1e6, 3))
            if f is not None and not failed:
                try:
                    for lines in chrome_events(pid, r, origin):
                        f.write(((",\n" if written[0] else "") + ",\n".join(lines)).encode())
                        written[0] += len(lines)
                except OSError as e:      # keep receiving: the other ranks are sending
                    failed.append(e)

        if comm.rank != 0:
            stream_to_root(comm, self.events(), consume)
            return
        streamed = False
        try:
            with atomic_open(path) as f:
                f.write(b'{"displayTimeUnit": "ms", "traceEvents": [\n')
                streamed = True
                stream_to_root(comm, self.events(), consume)
                if failed:
                    raise failed[0]
                f.write(('\n],\n"otherData": ' + json.dumps(other) + "}\n").encode())
        finally:
            if not streamed:          # the file could not be opened: the ranks still send theirs
                f = None
                stream_to_root(comm, self.events(), consume)
        if other["dropped_events"]:
            print(f"warning: the trace kept the first {self.capacity:,} events of each rank and dropped "
                  f"{other['dropped_events']:,} ({path})", file=sys.stderr, flush=True)


def chrome_events(pid, r, origin, chunk=8192):
    """Rank `pid`'s events `r` as lists of Chrome trace JSON objects (text), of at most `chunk`
    events each: its metadata, then 'X' events sorted by time (a parent before the children that
    start with it)."""
    meta = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"rank {pid}"}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "steps"}}]
    if (r["tid"] == 1).any():
        meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "all-reduce buckets"}})
    yield [json.dumps(e, separators=(",", ":")) for e in meta]
    ts = (r["t"][:, 0] - origin) * 1e6
    dur = (r["t"][:, 1] - r["t"][:, 0]) * 1e6
    order = np.lexsort((-dur, ts, r["tid"]))
    for lo in range(0, len(order), chunk):
        lines = []
        for i in order[lo:lo + chunk]:
            e = {"name": r["names"][r["kind"][i]], "ph": "X", "pid": pid, "tid": int(r["tid"][i]),
                 "ts": round(float(ts[i]), 3), "dur": round(float(dur[i]), 3)}
            if r["step"][i] >= 0:
                e["args"] = {"step": int(r["step"][i])}
            lines.append(json.dumps(e, separators=(",", ":")))
        yield lines
