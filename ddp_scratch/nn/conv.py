"""Image layers, channels-last: Conv2d (im2col + one GEMM), MaxPool2d, Flatten.

Written only against the public layer contract of docs/extending.md, as a course project would
write them: parameters declared in the model's ParamSpace, gradients written through
Param.acc_matmul / acc_sum0 (the fresh rule), every array a workspace from Layer.buf, the array
module read from backend.xp at call time. So a training step allocates no array and the layers
run on CuPy unchanged. Each has the gradcheck hooks (gradcheck_inputs, torch_twin).

Channels-last, because im2col turns a convolution into one GEMM whose rows are output pixels
(N*OH*OW) and whose columns are filters: its result IS the (N, OH, OW, F) output in memory
order, so nothing is transposed after the GEMM. Weights are stored as the GEMM uses them, W (KH*KW*C, F) with rows in (kh, kw, c)
order; torch's (F, C, KH, KW) weight is W.reshape(KH, KW, C, F).permute(3, 2, 0, 1).

Legend: N batch, H W input height/width, C input channels, F filters (output channels),
KH KW kernel, S stride, P zero padding, Hp = H + 2P, OH = (Hp - KH) // S + 1 (OW likewise),
K = KH*KW*C (one patch as a row).
"""
from .. import backend as B
from ..errors import ConfigError
from . import ops
from .layers import Layer


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(start, count, stride):
    """The slice of `count` window origins from `start` at `stride`."""
    return slice(start, start + stride * (count - 1) + 1, stride)


# ----------------------------------------------------------------------------- im2col
# colsT (KH, KW, C, N, OH, OW) <- xpad (N, Hp, Wp, C):  colsT[a, b, c, n, i, j] = xpad[n, S i + a, S j + b, c]
# Patch-major ("K-major"): row (a, b, c) of the (K, N*OH*OW) matrix is one kernel tap of one
# channel over every output pixel, so the copy writes long contiguous runs (OW) whatever C is,
# and the weight gradient colsT (K, M) @ dy (M, F) reads both operands in memory order. The
# forward product is colsT^T @ W, a transposed operand BLAS takes as it is. Against the
# pixel-major layout (N, OH, OW, KH, KW, C), whose copy writes runs of only KW*C values, LeNet's
# first convolution (C = 1) spends 7x less in im2col and the step ~10 % less (benchmarks/).

def im2col(xpad, cols_t, stride):
    """cols_t <- the KH x KW patches of xpad at `stride`, patch-major, in one copy from a strided
    view of xpad."""
    sn, sh, sw, sc = xpad.strides
    patches = B.xp.lib.stride_tricks.as_strided(xpad, cols_t.shape, (sh, sw, sc, sn, sh * stride, sw * stride))
    B.xp.copyto(cols_t, patches)
    return cols_t


class Conv2d(Layer):
    """y = conv(x, W) + b, channels-last.  x (N, H, W, C) -> y (N, OH, OW, F).

    W (KH*KW*C, F), b (F,). need_dx=False for the first layer (its input is data): backward then
    skips the input gradient, which is as costly as the weight gradient."""

    def __init__(self, space, name, c_in, c_out, kernel, stride=1, padding=0, bias=True, init="he", need_dx=True):
        super().__init__()
        (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw) = _pair(kernel), _pair(stride), _pair(padding)
        if self.sh != self.sw:
            raise ConfigError(f"{name}: stride {stride}: one stride for both axes is supported")
        if min(self.kh, self.kw, self.sh) < 1 or min(self.ph, self.pw) < 0:
            raise ConfigError(f"{name}: expected kernel and stride >= 1 and padding >= 0, got "
                              f"kernel {kernel}, stride {stride}, padding {padding}")
        self.c, self.f, self.stride, self.need_dx, self.dtype = c_in, c_out, self.sh, need_dx, space.dtype
        self.k = self.kh * self.kw * c_in
        self.W = space.param(f"{name}.W", (self.k, c_out), init, fan_in=self.k, fan_out=self.kh * self.kw * c_out)
        self.b = space.param(f"{name}.b", (c_out,), "zeros", fan_in=self.k) if bias else None
        self.name = name

    def out_hw(self, h, w):
        oh = (h + 2 * self.ph - self.kh) // self.stride + 1
        ow = (w + 2 * self.pw - self.kw) // self.stride + 1
        if oh < 1 or ow < 1:
            raise ConfigError(f"{self.name}: a {h}x{w} input is smaller than the {self.kh}x{self.kw} kernel "
                              f"(padding {self.ph}, {self.pw})")
        return oh, ow

    def _padded(self, x):
        """x inside its zero border (a workspace), or x itself without padding."""
        n, h, w, c = x.shape
        ph, pw = self.ph, self.pw
        if not (ph or pw):
            return x
        xpad = self.buf("xpad", (n, h + 2 * ph, w + 2 * pw, c))       # (N, Hp, Wp, C)
        if ph:
            xpad[:, :ph].fill(0)
            xpad[:, ph + h:].fill(0)
        if pw:
            xpad[:, :, :pw].fill(0)
            xpad[:, :, pw + w:].fill(0)
        xpad[:, ph:ph + h, pw:pw + w, :] = x
        return xpad

    def forward(self, x):
        n, h, w, c = x.shape
        if c != self.c:
            raise ValueError(f"{self.name}: expected {self.c} input channels, got input {x.shape}")
        oh, ow = self.out_hw(h, w)
        cols_t = im2col(self._padded(x), self.buf("cols", (self.kh, self.kw, c, n, oh, ow)), self.stride)
        self.cols_t = cols_t.reshape(self.k, n * oh * ow)                   # (K, N*OH*OW) kept for dW
        self.in_shape = x.shape
        y = self.buf("y", (n * oh * ow, self.f))                            # (N*OH*OW, F)
        ops.linear_forward(self.cols_t.T, self.W.data, None, y)
        if self.b is not None:              # + b over wide rows of y: F values repeated (4x faster for F = 6)
            v = ops.wide_rows(y)
            tile = self.buf("b_tile", (v.shape[1] // self.f, self.f))
            tile[...] = self.b.data
            v += tile.reshape(-1)
        return y.reshape(n, oh, ow, self.f)

    def backward(self, dy):
        """dW += colsT dy, db += sum dy (a GEMV), and dx: the adjoint of im2col (col2im) of
        dcols = dy W^T, computed one kernel tap at a time: tap (a, b) is dy (N*OH*OW, F) times its
        (F, C) slice of W^T, added where that tap read the input. The same FLOPs as one GEMM into
        dcols, but every add then reads a contiguous block: 2.5x faster in NumPy for C = 6."""
        xp, s = B.xp, self.stride
        n, oh, ow, f = dy.shape
        dy2 = xp.ascontiguousarray(dy).reshape(n * oh * ow, f)             # (N*OH*OW, F); a view when contiguous
        work = None if self.W.fresh else self.buf("dW", self.W.shape)
        self.W.acc_matmul(self.cols_t, dy2, work)                          # dW (K, F)
        if self.b is not None:             # db = 1^T dy: a GEMV, 8x faster than a sum over rows of F values
            ones = self.buf("ones", (n * oh * ow,))
            ones.fill(1)
            self.b.acc_matmul(ones, dy2, None if self.b.fresh else self.buf("db", self.b.shape))
        if not self.need_dx:
            return None
        _, h, w, c = self.in_shape
        taps = self.kh * self.kw
        wt = self.buf("Wt", (taps, f, c))                                   # (KH*KW, F, C): W^T by tap
        wt[...] = self.W.data.reshape(taps, c, f).transpose(0, 2, 1)
        tap = self.buf("tap", (n * oh * ow, c))                             # (N*OH*OW, C)
        dxpad = self.buf("dxpad", (n, h + 2 * self.ph, w + 2 * self.pw, c))  # (N, Hp, Wp, C)
        dxpad.fill(0)
        for t in range(taps):
            a, b = divmod(t, self.kw)
            xp.matmul(dy2, wt[t], out=tap)
            dxpad[:, _window(a, oh, s), _window(b, ow, s), :] += tap.reshape(n, oh, ow, c)
        if not (self.ph or self.pw):
            return dxpad
        dx = self.buf("dx", (n, h, w, c))                                   # the interior, contiguous
        dx[...] = dxpad[:, self.ph:self.ph + h, self.pw:self.pw + w, :]
        return dx

    # ------------------------------------------------------------------ accounting
    def flops(self, n, h, w):
        """Forward and backward GEMM FLOPs for n images of h x w: 2 N OH OW K F each for y, dW
        and (need_dx) dx, and the bias gradient's GEMV, 2 N OH OW F."""
        oh, ow = self.out_hw(h, w)
        return 2 * n * oh * ow * (self.k * self.f * (3 if self.need_dx else 2) + (self.f if self.b is not None else 0))

    def workspace_elements(self, n, h, w):
        """Elements of the workspaces a training step of n images holds (activation_bytes)."""
        oh, ow = self.out_hw(h, w)
        hp, wp = h + 2 * self.ph, w + 2 * self.pw
        padded = self.ph or self.pw
        e = n * oh * ow * (self.k + self.f + 1) + (n * hp * wp * self.c if padded else 0)  # cols, y, ones, xpad
        if self.need_dx:      # the tap product, dxpad, dx
            e += n * oh * ow * self.c + n * hp * wp * self.c + (n * h * w * self.c if padded else 0)
        return e

    # ------------------------------------------------------------------ gradcheck hooks
    @classmethod
    def gradcheck_inputs(cls, space, rng):
        """Stride 2 and padding 1 on an odd-sized input: every border case of im2col at once."""
        layer = cls(space, "conv", c_in=3, c_out=4, kernel=3, stride=2, padding=1)
        return layer, rng.standard_normal((2, 7, 6, 3))

    def torch_twin(self, torch, params):
        F = torch.nn.functional
        W = params[self.W.name].reshape(self.kh, self.kw, self.c, self.f).permute(3, 2, 0, 1)
        b = params[self.b.name] if self.b is not None else None
        return lambda x: F.conv2d(x.permute(0, 3, 1, 2), W, b, stride=self.stride,
                                  padding=(self.ph, self.pw)).permute(0, 2, 3, 1)


class MaxPool2d(Layer):
    """y = the maximum of each KxK window at stride S (default K), channels-last; no parameters.
    x (N, H, W, C) -> y (N, OH, OW, C). The first maximum of a window (row-major) takes the
    gradient, as in torch (after a ReLU many windows tie at 0).

    Forward copies the windows once into a window-major workspace, xw (K*K, N, OH, OW, C) (one
    strided copy), and keeps it for backward; every other operation then runs on contiguous
    arrays of N*OH*OW*C values instead of strided views whose inner runs are only C long: the
    maximum is a chain of K*K - 1 elementwise maximums, and backward finds each window's first tap
    equal to it. Backward writes the taps' gradients window-major too and puts them back into dx
    with one strided copy where the windows tile the input (K = S, H = S*OH, W = S*OW: LeNet's
    pools), else adds them tap by tap into a zeroed dx (overlapping windows, uncovered borders).
    Against strided views throughout: 2.5x faster backward on LeNet's first pool."""

    def __init__(self, kernel=2, stride=None, dtype="float32"):
        super().__init__()
        self.k = int(kernel)
        self.s = int(stride or kernel)
        self.dtype = dtype

    def out_hw(self, h, w):
        return (h - self.k) // self.s + 1, (w - self.k) // self.s + 1

    def _windows(self, a, oh, ow):
        """a (N, H, W, C) seen as (K, K, N, OH, OW, C): [p, q, n, i, j, c] = a[n, S i + p, S j + q, c]."""
        sn, sh, sw, sc = a.strides
        return B.xp.lib.stride_tricks.as_strided(a, (self.k, self.k, a.shape[0], oh, ow, a.shape[3]),
                                                 (sh, sw, sn, sh * self.s, sw * self.s, sc))

    def forward(self, x):
        xp, (n, h, w, c), k = B.xp, x.shape, self.k
        oh, ow = self.out_hw(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"max pool: a {h}x{w} input is smaller than the {k}x{k} window")
        xw = self.buf("xw", (k, k, n, oh, ow, c))                   # (K, K, N, OH, OW, C) kept for backward
        xp.copyto(xw, self._windows(x, oh, ow))
        self.xw, self.in_shape = xw, x.shape                       # the buffer itself: no new view kept
        taps = xw.reshape(k * k, n, oh, ow, c)
        m = self.buf("max", (n, oh, ow, c))                         # (N, OH, OW, C) kept for backward
        if k == 1:
            m[...] = taps[0]
        else:
            xp.maximum(taps[0], taps[1], out=m)
        for t in range(2, k * k):
            xp.maximum(m, taps[t], out=m)
        self.max = m
        y = self.buf("y", m.shape)                                  # handed on: the next layer may change it
        y[...] = m
        return y

    def backward(self, dy):
        xp, k, s = B.xp, self.k, self.s
        n, oh, ow, c = dy.shape
        _, h, w, _ = self.in_shape
        first, taken = self.buf("first", dy.shape, bool), self.buf("taken", dy.shape, bool)
        dxw = self.buf("dxw", (k * k, n, oh, ow, c))                # (K*K, N, OH, OW, C)
        taps = self.xw.reshape(k * k, n, oh, ow, c)
        taken.fill(False)
        for t in range(k * k):
            xp.equal(taps[t], self.max, out=first)                   # hits the maximum ...
            xp.greater(first, taken, out=first)                      # ... and no tap before it did
            xp.logical_or(taken, first, out=taken)
            xp.multiply(dy, first, out=dxw[t])
        dx = self.buf("dx", self.in_shape)
        windows = self._windows(dx, oh, ow)
        if k == s and h == s * oh and w == s * ow:                  # the windows tile dx: one copy
            xp.copyto(windows, dxw.reshape(k, k, n, oh, ow, c))
            return dx
        dx.fill(0)                                                  # overlaps add; uncovered stay 0
        for t in range(k * k):
            windows[divmod(t, k)] += dxw[t]
        return dx

    def workspace_elements(self, n, h, w, c):
        """xw, dxw, max, y, two bool masks (counted as full elements); dx."""
        oh, ow = self.out_hw(h, w)
        return n * oh * ow * c * (2 * self.k * self.k + 4) + n * h * w * c

    @classmethod
    def gradcheck_inputs(cls, space, rng):
        """Overlapping 3x3 windows at stride 2."""
        return cls(3, 2, space.dtype), rng.standard_normal((2, 7, 7, 3))

    def torch_twin(self, torch, params):
        F = torch.nn.functional
        return lambda x: F.max_pool2d(x.permute(0, 3, 1, 2), self.k, self.s).permute(0, 2, 3, 1)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)): a view of a contiguous input; backward reshapes back."""

    def __init__(self, dtype="float32"):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.in_shape)

    @classmethod
    def gradcheck_inputs(cls, space, rng):
        return cls(space.dtype), rng.standard_normal((2, 3, 4, 2))

    def torch_twin(self, torch, params):
        return lambda x: x.reshape(x.shape[0], -1)
