"""16-bit gradients on the wire, summed in the buffer's precision: the codec of the ring.

`comm.compress: fp16` rounds to IEEE half (NumPy's float16: 10-bit mantissa, range 6e-8 .. 65504,
so tiny gradients flush towards zero and none is scaled to avoid it); `bf16` to bfloat16
(`ml_dtypes.bfloat16`: float32's range, 7-bit mantissa). Only the ring (ring.py) uses it: each
reduce-scatter step rounds the partial sum it sends, the receiver upcasts and adds in float32 (or
float64), and the all-gather carries the rounded final sums. A rank never adds two 16-bit numbers.

Error feedback (`comm.error_feedback: true`, as in 1-bit SGD / EF-SGD): every value a rank
rounds before sending leaves a residual `value - rounded`, kept per rank in a preallocated buffer
and added to that rank's gradient before the next step's all-reduce. Along a chunk's way round the
ring, the result equals the exact sum minus the residuals of every rounding on the way, so what is
lost in one step is put back in the next. The residual lives only in memory: a resumed run starts
it at zero (it is not in the checkpoint; see README).

MPI sees the 16-bit buffers as uint16 (the bits), so no MPI datatype for half floats is needed.
"""
import numpy as np


def wire_dtype(name):
    """The NumPy dtype that `comm.compress` NAME sends."""
    if name == "fp16":
        return np.dtype(np.float16)
    if name == "bf16":
        import ml_dtypes        # NumPy has no bfloat16; ml_dtypes (from JAX) registers it with casts and ufuncs
        return np.dtype(ml_dtypes.bfloat16)
    raise ValueError(f"comm.compress: expected fp16 or bf16, got {name!r}")


class Codec:
    """The preallocated 16-bit buffers of a compressed ring over `n` elements of `dtype`:
    `wire` (every chunk's 16-bit value this step), `recv` (one received chunk), and with error
    feedback `residual` (what this rank's roundings lost). No step allocates an array; mixed
    16/32-bit ufuncs use NumPy's small fixed cast buffer (8192 elements)."""

    def __init__(self, name, n, max_chunk, dtype, error_feedback=False):
        self.name = name
        self.wire = np.zeros(n, wire_dtype(name))
        self.recv = np.zeros(max_chunk, self.wire.dtype)
        self.wire_bits = self.wire.view(np.uint16)      # what MPI sends and receives
        self.recv_bits = self.recv.view(np.uint16)
        self.residual = np.zeros(n, dtype) if error_feedback else None

    def feed_back(self, buf):
        """Add last step's residual to this rank's gradients (before any rounding this step)."""
        if self.residual is not None:
            np.add(buf, self.residual, out=buf)

    def encode(self, buf, lo, hi):
        """Round buf[lo:hi] into wire[lo:hi]; with error feedback keep what that lost."""
        np.copyto(self.wire[lo:hi], buf[lo:hi], casting="unsafe")
        if self.residual is not None:
            np.subtract(buf[lo:hi], self.wire[lo:hi], out=self.residual[lo:hi])

    def add_received(self, buf, lo, hi):
        """buf[lo:hi] += the received 16-bit chunk, upcast to buf's precision."""
        np.add(buf[lo:hi], self.recv[:hi - lo], out=buf[lo:hi])

    def decode(self, buf):
        """buf = every chunk's rounded sum: the owner's chunk too, so all ranks hold the same bits."""
        np.copyto(buf, self.wire, casting="unsafe")
