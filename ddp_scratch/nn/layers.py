"""Thin layer classes: parameters are views into the model's flat buffers, caches hold exactly
what backward needs, and output buffers are preallocated workspaces reused every step."""
from .. import backend as B
from . import ops


class Layer:
    def __init__(self):
        self._ws = {}

    def buf(self, key, shape, dtype=None):
        """A workspace array reused across steps (one per key and shape), of `dtype` or else the
        layer's own `self.dtype` (set it in __init__: `self.dtype = space.dtype`)."""
        k = (key, tuple(shape))
        a = self._ws.get(k)
        if a is None:
            dtype = dtype or getattr(self, "dtype", None)
            if dtype is None:
                raise AttributeError(f"{type(self).__name__}.buf({key!r}, ...): the layer has no dtype; set "
                                     "self.dtype = space.dtype in its __init__ (or pass dtype=)")
            a = self._ws[k] = B.xp.empty(shape, dtype=dtype)
        return a


class Linear(Layer):
    """y = x W + b.  W (D_in, D_out), b (D_out,).  need_dx=False for the first layer (no input grad)."""

    def __init__(self, space, name, d_in, d_out, init="he", bias=True, need_dx=True):
        super().__init__()
        self.dtype, self.need_dx = space.dtype, need_dx
        self.W = space.param(f"{name}.W", (d_in, d_out), init, fan_in=d_in, fan_out=d_out)
        self.b = space.param(f"{name}.b", (d_out,), "zeros", fan_in=d_in, decay=True) if bias else None

    def forward(self, x):
        self.x = x                                              # (N, D_in), kept for dW
        out = self.buf("y", (x.shape[0], self.W.shape[1]))      # (N, D_out)
        return ops.linear_forward(x, self.W.data, self.b.data if self.b else None, out)

    def backward(self, dy):
        n, (d_in, d_out) = dy.shape[0], self.W.shape
        work = None if self.W.fresh else self.buf("dW", (d_in, d_out))
        dx = self.buf("dx", (n, d_in)) if self.need_dx else None
        return ops.linear_backward(dy, self.x, self.W.data, self.W, self.b, dx, work)


class Activation(Layer):
    def __init__(self, kind, dtype):
        super().__init__()
        if kind not in ops.ACTIVATIONS:
            raise ValueError(kind)
        self.kind, self.dtype = kind, dtype
        self.fwd, self.bwd, self.saves = ops.ACTIVATIONS[kind]

    def forward(self, x):
        out = self.buf("y", x.shape) if self.saves == "x" else None
        y = self.fwd(x, out, self._scratch(x.shape))
        self.saved = x if self.saves == "x" else y
        return y

    def backward(self, dy):
        return self.bwd(dy, self.saved, self._scratch(dy.shape))

    def _scratch(self, shape):
        return lambda key, dtype=None: self.buf(key, shape, dtype)
