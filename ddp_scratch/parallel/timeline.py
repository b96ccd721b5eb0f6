"""What the trace (logging.trace, run/trace.py) needs from the world of ranks: every rank's clock
against rank 0's, and the ranks' events brought to rank 0 one rank at a time.

Clock offsets are measured once at start-up by ping-pong with rank 0 (as NTP does): rank r notes
its time a, rank 0 answers with its time c, rank r notes b; then c - (a + b) / 2 is rank 0's clock
minus r's, off by at most half the round trip. Of several rounds the shortest round trip wins.
On one node every rank reads the same monotonic clock and the offsets come out near zero; across
nodes they are what makes the ranks' tracks line up.
"""
import time

import numpy as np

TAG = 0x5443


def clock_offsets(comm, rounds=8):
    """Seconds to add to this rank's time.perf_counter() to get rank 0's (0.0 on rank 0), and the
    round trip (seconds) that measured it. A collective: every rank calls it."""
    if comm.size == 1:
        return 0.0, 0.0
    buf = np.zeros(1)
    best = (float("inf"), 0.0)
    comm._enter("clock offset measurement")
    try:
        mpi = comm.comm
        for r in range(1, comm.size):
            for _ in range(rounds):
                if comm.rank == 0:
                    mpi.Recv(buf, source=r, tag=TAG)
                    buf[0] = time.perf_counter()
                    mpi.Send(buf, dest=r, tag=TAG)
                elif comm.rank == r:
                    a = time.perf_counter()
                    mpi.Send(buf, dest=0, tag=TAG)
                    mpi.Recv(buf, source=0, tag=TAG)
                    b = time.perf_counter()
                    best = min(best, (b - a, buf[0] - (a + b) / 2))
    finally:
        comm._leave()
    return (0.0, 0.0) if comm.rank == 0 else (best[1], best[0])


def stream_to_root(comm, obj, consume, what="trace gather"):
    """Rank 0 calls consume(rank, obj) with every rank's `obj`, in rank order, receiving the next
    only after the previous one was consumed (one rank's at a time in memory); the others send."""
    if comm.rank == 0:
        consume(0, obj)
    if comm.size == 1:
        return
    comm._enter(what)
    try:
        if comm.rank == 0:
            for r in range(1, comm.size):
                consume(r, comm.comm.recv(source=r, tag=TAG + 1))
        else:
            comm.comm.send(obj, dest=0, tag=TAG + 1)
    finally:
        comm._leave()
