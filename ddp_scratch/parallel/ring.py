"""A ring all-reduce written out by hand over one flat host buffer (`comm.algorithm: ring`).

N ranks stand in a ring (rank r sends to r+1 and receives from r-1) and the buffer is cut into
N contiguous chunks, uneven when N does not divide its length (chunk c is [c*n//N, (c+1)*n//N)):

  reduce-scatter, N-1 steps: at step s rank r sends chunk (r-s) mod N and receives chunk
      (r-s-1) mod N, adding it to its own copy; after N-1 steps rank r holds the full sum of
      chunk (r+1) mod N.
  all-gather, N-1 steps: rank r sends chunk (r+1-s) mod N and receives chunk (r-s) mod N in
      place, so every rank ends with every summed chunk.

Each rank sends 2(N-1) chunks, 2(N-1)/N of the buffer: the bandwidth-optimal amount, in 2(N-1)
messages (the alpha-beta cost 2(N-1)α + 2(N-1)/N·n·β of study/comm_model.py). One Sendrecv per
step into a preallocated receive buffer: no step allocates an array. The sum of a chunk is
accumulated along the ring in a rank order of its own, so the result equals MPI_Allreduce up to
the order of summation (bit-identical on every rank: the all-gather copies one rank's sums).

With `comm.compress` (compress.py) the gradients travel in 16 bits and are summed in the buffer's
precision; the last `exact_tail` elements (the trainer's statistic slots: loss, counts, flags)
go round a second, uncompressed ring, so counts stay exact.

Comm (world.py) calls it inside the watchdog's window, after the heartbeat: a peer that never
sends leaves this rank in Sendrecv, and the watchdog ends the job naming the step.
"""
import numpy as np

from .compress import Codec

RING_TAG = 0x5249     # apart from the heartbeats' tag


def chunk_bounds(n, parts):
    """Offsets of `parts` contiguous chunks covering n elements, sizes differing by at most one."""
    return [n * c // parts for c in range(parts + 1)]


class RingAllReduce:
    def __init__(self, comm, n, dtype, compress="none", error_feedback=False, exact_tail=0):
        """comm: world.Comm (its mpi4py communicator, rank and size); n elements of dtype."""
        self.mpi, self.rank, self.size = comm.comm, comm.rank, comm.size
        self.right, self.left = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        self.n, self.dtype = int(n), np.dtype(dtype)
        tail = int(exact_tail) if compress != "none" else 0
        self.body = self.n - tail                     # what may travel compressed
        self.bounds = chunk_bounds(self.body, self.size)
        self.tail_bounds = chunk_bounds(tail, self.size) if tail else None
        widest = max(b - a for a, b in zip(self.bounds, self.bounds[1:]))
        self.scratch = np.zeros(max(widest, tail), self.dtype)     # one received chunk
        self.codec = Codec(compress, self.body, widest, self.dtype, error_feedback) if compress != "none" else None
        self.bytes_sent = 0          # by this rank, since it was made (comm_bytes_per_step)
        self.calls = 0

    def all_reduce_(self, buf):
        """In-place SUM over ranks of host buffer `buf` (n elements of dtype)."""
        if self.size == 1:
            return buf
        if buf.size != self.n or buf.dtype != self.dtype:
            raise ValueError(f"ring all-reduce built for {self.n} {self.dtype}, got {buf.size} {buf.dtype}")
        body = buf[:self.body]
        if self.codec is None:
            self._ring(body, self.bounds)
        else:
            self._ring_compressed(body)
            if self.tail_bounds:
                self._ring(buf[self.body:], self.tail_bounds)
        self.calls += 1
        return buf

    def _chunk(self, bounds, c):
        c %= self.size
        return bounds[c], bounds[c + 1]

    def _sendrecv(self, send, recv):
        self.mpi.Sendrecv(send, self.right, RING_TAG, recv, self.left, RING_TAG)
        self.bytes_sent += send.nbytes

    def _ring(self, buf, bounds):
        """Uncompressed: add received chunks in buf's precision, then pass the sums round."""
        r = self.rank
        for s in range(self.size - 1):
            a, b = self._chunk(bounds, r - s)
            lo, hi = self._chunk(bounds, r - s - 1)
            recv = self.scratch[:hi - lo]
            self._sendrecv(buf[a:b], recv)
            np.add(buf[lo:hi], recv, out=buf[lo:hi])
        for s in range(self.size - 1):
            a, b = self._chunk(bounds, r + 1 - s)
            lo, hi = self._chunk(bounds, r - s)
            self._sendrecv(buf[a:b], buf[lo:hi])       # two disjoint slices of one buffer

    def _ring_compressed(self, buf):
        """16 bits on the wire: each rank rounds the partial sum it sends, the receiver upcasts
        and adds; the owner of a summed chunk rounds it once for the all-gather, and every rank
        (the owner too) takes the rounded sums, so all ranks hold the same bits."""
        c, r, bounds = self.codec, self.rank, self.bounds
        c.feed_back(buf)
        for s in range(self.size - 1):
            a, b = self._chunk(bounds, r - s)
            lo, hi = self._chunk(bounds, r - s - 1)
            c.encode(buf, a, b)
            self._sendrecv(c.wire_bits[a:b], c.recv_bits[:hi - lo])
            c.add_received(buf, lo, hi)
        c.encode(buf, *self._chunk(bounds, r + 1))
        for s in range(self.size - 1):
            a, b = self._chunk(bounds, r + 1 - s)
            lo, hi = self._chunk(bounds, r - s)
            self._sendrecv(c.wire_bits[a:b], c.wire_bits[lo:hi])
        c.decode(buf)
