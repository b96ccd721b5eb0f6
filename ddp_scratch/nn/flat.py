"""One flat contiguous parameter buffer and one flat gradient buffer per model.

Layers declare parameters (`space.param(name, shape, init)`); `space.build()` allocates both
buffers once and turns every Param's `.data` / `.grad` into views. Optimizers and the all-reduce
work on `space.params` / `space.grads` directly, so nothing is packed or copied per step.

The gradient buffer carries a few extra slots after the parameters (`space.extras`): per-step
statistics (loss sum, correct count, items, stop request) that ride along in the gradient
all-reduce at no extra round trip, and the squared gradient norm, written after the all-reduce.
The trainer reads all of them in one device->host copy per step: on a GPU every read waits for the
queue to drain, so one per step is the budget (a non-finite loss shows in the summed loss itself).
"""
from dataclasses import dataclass
import math

import numpy as np

from .. import backend as B

N_EXTRAS = 5  # loss_sum, correct, items, |g|^2 after the all-reduce, stop request (a signal seen by any rank)
HUGE_PAGE = 2 << 20  # transparent huge page size (x86-64, most arm64 kernels)
EXTRA_LOSS, EXTRA_CORRECT, EXTRA_ITEMS, EXTRA_GNORM2, EXTRA_STOP = range(N_EXTRAS)


@dataclass(eq=False)
class Param:
    name: str
    shape: tuple
    init: str          # zeros | ones | normal:<std> | xavier | he | uniform_fan_in
    fan_in: int = 0
    fan_out: int = 0
    decay: bool = True  # whether weight decay applies (AdamW-style masks, nanoGPT excludes biases/norms)
    offset: int = 0
    data: object = None
    grad: object = None
    fresh: bool = True  # grad holds nothing yet this step: the first write may overwrite
    hook: object = None  # called after every gradient write (bucketed all-reduce readiness)

    @property
    def size(self):
        return math.prod(self.shape)

    # Gradient accumulation without a memset per step: the first contribution in a step is written
    # straight into the view (a GEMM with `out=`), later ones (tied weights, micro-steps) are added.
    def acc(self, value):
        if self.fresh:
            self.grad[...] = value
            self.fresh = False
        else:
            self.grad += value
        if self.hook is not None:
            self.hook(self)

    def acc_matmul(self, a, b, work=None):
        xp = B.xp
        if self.fresh:
            xp.matmul(a, b, out=self.grad)
            self.fresh = False
        else:
            if work is None:
                self.grad += a @ b
            else:
                xp.matmul(a, b, out=work)
                self.grad += work
        if self.hook is not None:
            self.hook(self)

    def acc_sum0(self, a):
        """grad += a summed over all leading axes (bias gradients)."""
        a2 = a.reshape(-1, a.shape[-1])
        if self.fresh:
            B.xp.sum(a2, axis=0, out=self.grad)
            self.fresh = False
        else:
            self.grad += a2.sum(axis=0)
        if self.hook is not None:
            self.hook(self)


class ParamSpace:
    def __init__(self, dtype="float32"):
        self.dtype = dtype
        self.plist: list[Param] = []
        self.params = self.grads = self.grads_full = self.extras = None

    def param(self, name, shape, init, fan_in=0, fan_out=0, decay=True) -> Param:
        if any(p.name == name for p in self.plist):
            raise ValueError(f"duplicate parameter name {name}")
        p = Param(name, tuple(int(s) for s in shape), init, fan_in, fan_out, decay)
        self.plist.append(p)
        return p

    @property
    def itemsize(self):
        return np.dtype(self.dtype).itemsize

    @property
    def n_params(self):
        return sum(p.size for p in self.plist)

    def build(self, seed: int):
        """Allocate both buffers, initialise on the host from `seed` (identical on every backend)."""
        xp, n = B.xp, self.n_params
        host = np.empty(n, dtype=np.float64)
        off = 0
        for i, p in enumerate(self.plist):
            p.offset = off
            rng = np.random.default_rng([seed, i])
            host[off:off + p.size] = _init_values(p, rng).ravel()
            off += p.size
        self.params = zeros(n, self.dtype)
        self.params[...] = xp.asarray(host.astype(self.dtype))
        self.grads_full = zeros(n + N_EXTRAS, self.dtype)
        self.grads = self.grads_full[:n]
        self.extras = self.grads_full[n:]
        for p in self.plist:
            p.data = self.params[p.offset:p.offset + p.size].reshape(p.shape)
            p.grad = self.grads[p.offset:p.offset + p.size].reshape(p.shape)
        return self

    def zero_grad(self):
        """Start a step: params' grads are marked fresh (overwritten on first use), extras zeroed."""
        for p in self.plist:
            p.fresh = True
        self.extras.fill(0)

    def finish_grads(self):
        """Zero whatever no layer wrote this step, so stale values never reach the all-reduce.
        Returns the names of those parameters (a backward that assigned p.grad itself, without
        Param.acc*, lands here: its gradient is overwritten by the zeros)."""
        unwritten = []
        for p in self.plist:
            if p.fresh:
                p.grad.fill(0)
                p.fresh = False
                unwritten.append(p.name)
        return unwritten

    def named(self):
        return {p.name: p for p in self.plist}

    def decay_ranges(self):
        """Contiguous (start, stop) index ranges of parameters that take weight decay."""
        out = []
        for p in self.plist:
            if not p.decay:
                continue
            if out and out[-1][1] == p.offset:
                out[-1] = (out[-1][0], p.offset + p.size)
            else:
                out.append((p.offset, p.offset + p.size))
        return out

    def layout(self):
        """Name, shape and offset of every parameter: stored in checkpoints to refuse mismatches."""
        return [[p.name, list(p.shape), p.offset] for p in self.plist]

    def shard(self, lo, hi):
        """Elements [lo, hi) of the flat buffers as a space of their own (ZeRO-1, optim.zero: 1)."""
        return SpaceShard(self, lo, hi)


class SpaceShard:
    """What an element-wise optimizer sees of a ParamSpace under ZeRO-1: a contiguous slice of
    the parameters (a view: the update lands in the full buffer, then travels in the all-gather),
    its own gradient buffer of the same size (the reduce-scatter writes the summed slice there)
    and the weight-decay ranges cut to the slice. Optimizer state allocated for it is 1/N."""

    def __init__(self, space, lo, hi):
        self.dtype, self.lo, self.hi = space.dtype, lo, hi
        self.params = space.params[lo:hi]
        self.grads = zeros(hi - lo, space.dtype)
        self._decay = [(max(a, lo) - lo, min(b, hi) - lo) for a, b in space.decay_ranges() if a < hi and b > lo]

    @property
    def itemsize(self):
        return np.dtype(self.dtype).itemsize

    @property
    def n_params(self):
        return self.hi - self.lo

    def decay_ranges(self):
        return list(self._decay)


def zeros(n, dtype):
    """A flat zero buffer; on the host, large ones start on a huge-page boundary.

    NumPy asks the kernel for transparent huge pages on buffers of 4 MiB and more, but only whole
    2 MiB pages inside the buffer can be huge: one that starts mid-page keeps small pages at both
    ends, at an offset malloc happens to pick. Aligned, the 7 MiB MLP gradient buffer all-reduces
    in ~480 us on 2 ranks instead of 550-730 us (940 us without huge pages), and the optimizer
    streams its buffers with fewer TLB misses. Costs at most 2 MiB of address space per buffer."""
    itemsize = np.dtype(dtype).itemsize
    if B.on_gpu() or n * itemsize < 2 * HUGE_PAGE:
        return B.xp.zeros(n, dtype=dtype)
    raw = np.zeros(n + HUGE_PAGE // itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % HUGE_PAGE) // itemsize
    return raw[skip:skip + n]


def _init_values(p: Param, rng):
    kind, _, arg = p.init.partition(":")
    if kind == "zeros":
        return np.zeros(p.shape)
    if kind == "ones":
        return np.ones(p.shape)
    if kind == "normal":
        return rng.normal(0.0, float(arg or 0.02), p.shape)
    if kind == "xavier":  # Glorot uniform: keeps activation variance for tanh/sigmoid
        a = math.sqrt(6.0 / (p.fan_in + p.fan_out))
        return rng.uniform(-a, a, p.shape)
    if kind == "he":  # Kaiming normal: variance 2/fan_in for ReLU-family activations
        return rng.normal(0.0, math.sqrt(2.0 / p.fan_in), p.shape)
    if kind == "uniform_fan_in":  # PyTorch nn.Linear default for biases
        a = 1.0 / math.sqrt(p.fan_in)
        return rng.uniform(-a, a, p.shape)
    raise ValueError(f"unknown init {p.init!r}")
