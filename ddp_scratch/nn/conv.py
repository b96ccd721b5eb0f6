"""Image layers, channels-last: Conv2d (im2col + one GEMM), MaxPool2d, Flatten.

Written only against the public layer contract of docs/extending.md, as a course project would
write them: parameters declared in the model's ParamSpace, gradients written through
Param.acc_matmul / acc_sum0 (the fresh rule), every array a workspace from Layer.buf, the array
module read from backend.xp at call time. So a training step allocates no array and the layers
run on CuPy unchanged. Each has the gradcheck hooks (gradcheck_inputs, torch_twin).

Their copies and elementwise loops (padding, im2col, the bias add, pooling) go through
over_batch (nn/batch_threads.py, the one CPU-only fast path: NumPy releases the GIL in them), so
they can be split over the batch on several threads; off by default, and on CuPy always one call
over the whole batch.

Channels-last, because im2col turns a convolution into one GEMM whose rows are output pixels
(N*OH*OW) and whose columns are filters: its result IS the (N, OH, OW, F) output in memory
order, so nothing is transposed after the GEMM. Weights are stored as the GEMM uses them,
W (KH*KW*C, F) with rows in (kh, kw, c) order; torch's (F, C, KH, KW) weight is
W.reshape(KH, KW, C, F).permute(3, 2, 0, 1).

Legend: N batch, H W input height/width, C input channels, F filters (output channels),
KH KW kernel, S stride, P zero padding, Hp = H + 2P, OH = (Hp - KH) // S + 1 (OW likewise),
K = KH*KW*C (one patch as a row).
"""
from .. import backend as B
from ..errors import ConfigError
from . import ops
from .batch_threads import over_batch
from .layers import Layer


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(start, count, stride):
    """The slice of `count` window origins from `start` at `stride`."""
    return slice(start, start + stride * (count - 1) + 1, stride)


# ----------------------------------------------------------------------------- im2col
# Two layouts of the (N*OH*OW, K) patch matrix, each chosen where its one strided copy reads and
# writes the longest contiguous runs:
#   pixel-major cols (N, OH, OW, KH, KW, C): cols[n, i, j, a, b, c] = xpad[n, S i + a, S j + b, c];
#     one kernel row of one patch is KW*C contiguous values of xpad (30 for LeNet's second
#     convolution): 3.4x faster than patch-major there;
#   patch-major colsT (KH, KW, C, N, OH, OW), the transpose: one kernel tap of one channel over an
#     output row is OW values, contiguous in xpad when C = 1 at stride 1 (LeNet's first
#     convolution, whose pixel-major runs would be only KW = 5 long: 7x slower).
# Either way the layer keeps the patch matrix as an (M, K) array (a transposed view for
# patch-major), y = cols W and dW = cols^T dy, and BLAS takes a transposed operand as it is.

def im2col(xpad, cols, stride, pixel_major):
    """cols <- the KH x KW patches of xpad at `stride` (layout as above), in one copy from a
    strided view of xpad."""
    sn, sh, sw, sc = xpad.strides
    s = stride
    strides = (sn, sh * s, sw * s, sh, sw, sc) if pixel_major else (sh, sw, sc, sn, sh * s, sw * s)
    B.xp.copyto(cols, B.xp.lib.stride_tricks.as_strided(xpad, cols.shape, strides))
    return cols


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
        self.pixel_major = c_in > 1         # the im2col layout whose copy runs are longer (see im2col)

    def out_hw(self, h, w):
        oh = (h + 2 * self.ph - self.kh) // self.stride + 1
        ow = (w + 2 * self.pw - self.kw) // self.stride + 1
        if oh < 1 or ow < 1:
            raise ConfigError(f"{self.name}: a {h}x{w} input is smaller than the {self.kh}x{self.kw} kernel "
                              f"(padding {self.ph}, {self.pw})")
        return oh, ow

    def _pad_into(self, x, xpad, lo, hi):
        """xpad[lo:hi] <- images lo..hi of x inside their zero border."""
        h, w, ph, pw = x.shape[1], x.shape[2], self.ph, self.pw
        xb = xpad[lo:hi]
        if ph:
            xb[:, :ph].fill(0)
            xb[:, ph + h:].fill(0)
        if pw:
            xb[:, :, :pw].fill(0)
            xb[:, :, pw + w:].fill(0)
        xb[:, ph:ph + h, pw:pw + w, :] = x[lo:hi]

    def forward(self, x):
        n, h, w, c = x.shape
        if c != self.c:
            raise ValueError(f"{self.name}: expected {self.c} input channels, got input {x.shape}")
        oh, ow = self.out_hw(h, w)
        pm, s, m = self.pixel_major, self.stride, n * oh * ow
        padded = self.ph or self.pw
        xpad = self.buf("xpad", (n, h + 2 * self.ph, w + 2 * self.pw, c)) if padded else x   # (N, Hp, Wp, C)
        cols = self.buf("cols", (n, oh, ow, self.kh, self.kw, c) if pm else (self.kh, self.kw, c, n, oh, ow))

        def patches(lo, hi):
            if padded:
                self._pad_into(x, xpad, lo, hi)
            im2col(xpad[lo:hi], cols[lo:hi] if pm else cols[:, :, :, lo:hi], s, pm)
        over_batch(n, patches, cols.size)
        self.cols = cols.reshape(m, self.k) if pm else cols.reshape(self.k, m).T   # (M, K) kept for dW
        self.in_shape = x.shape
        y = self.buf("y", (m, self.f))                                      # (N*OH*OW, F)
        ops.linear_forward(self.cols, self.W.data, None, y)
        if self.b is not None:             # + b over wide rows of y: F values repeated (4x faster for F = 6)
            tile = self.buf("b_tile", (max(1, 1024 // self.f), self.f))   # b repeated, as wide as wide_rows goes
            tile[...] = self.b.data

            def add_bias(lo, hi):
                v = ops.wide_rows(y[lo * oh * ow:hi * oh * ow])
                v += tile[:v.shape[1] // self.f].reshape(-1)
            over_batch(n, add_bias, y.size)
        return y.reshape(n, oh, ow, self.f)

    def backward(self, dy):
        """dW += cols^T dy, db += sum dy (a GEMV), and dx: the adjoint of im2col (col2im) of
        dcols = dy W^T, computed one kernel tap at a time: tap (a, b) is dy (N*OH*OW, F) times its
        (F, C) slice of W^T, added where that tap read the input. The same FLOPs as one GEMM into
        dcols, but every add then reads a contiguous block: 2.5x faster in NumPy for C = 6. Not
        split over threads (over_batch) as the copies are: each chunk's tap products would call
        BLAS from several threads at once, each with the rank's BLAS threads."""
        xp, s = B.xp, self.stride
        n, oh, ow, f = dy.shape
        dy2 = xp.ascontiguousarray(dy).reshape(n * oh * ow, f)             # (N*OH*OW, F); a view when contiguous
        work = None if self.W.fresh else self.buf("dW", self.W.shape)
        self.W.acc_matmul(self.cols.T, dy2, work)                          # dW (K, F)
        if self.b is not None:             # db = 1^T dy: a GEMV, 8x faster than a sum over rows of F values
            ones = self.buf("ones", (n * oh * ow,))
            ones.fill(1)
            self.b.acc_matmul(ones, dy2, None if self.b.fresh else self.buf("db", self.b.shape))
        if not self.need_dx:
            return None
        _, h, w, c = self.in_shape
        taps, ph, pw = self.kh * self.kw, self.ph, self.pw
        wt = self.buf("Wt", (taps, f, c))                                   # (KH*KW, F, C): W^T by tap
        wt[...] = self.W.data.reshape(taps, c, f).transpose(0, 2, 1)
        tap = self.buf("tap", (n * oh * ow, c))                             # (N*OH*OW, C)
        dxpad = self.buf("dxpad", (n, h + 2 * ph, w + 2 * pw, c))           # (N, Hp, Wp, C)
        dx = self.buf("dx", (n, h, w, c)) if ph or pw else dxpad            # the interior, contiguous

        dxpad.fill(0)
        for t in range(taps):
            a, b = divmod(t, self.kw)
            xp.matmul(dy2, wt[t], out=tap)
            dxpad[:, _window(a, oh, s), _window(b, ow, s), :] += tap.reshape(n, oh, ow, c)
        if ph or pw:
            dx[...] = dxpad[:, ph:ph + h, pw:pw + w, :]
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
    Against strided views throughout: 2.5x faster backward on LeNet's first pool. Both directions
    work image by image, so over_batch splits them over threads."""

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
        taps = xw.reshape(k * k, n, oh, ow, c)
        m = self.buf("max", (n, oh, ow, c))                         # (N, OH, OW, C) kept for backward
        y = self.buf("y", m.shape)                                  # handed on: the next layer may change it

        def pool(lo, hi):
            xp.copyto(xw[:, :, lo:hi], self._windows(x[lo:hi], oh, ow))
            t, mb = taps[:, lo:hi], m[lo:hi]
            if k == 1:
                mb[...] = t[0]
            else:
                xp.maximum(t[0], t[1], out=mb)
            for i in range(2, k * k):
                xp.maximum(mb, t[i], out=mb)
            y[lo:hi] = mb
        over_batch(n, pool, xw.size)
        self.xw, self.max, self.in_shape = xw, m, x.shape          # the buffers themselves: no new view kept
        return y

    def backward(self, dy):
        xp, k, s = B.xp, self.k, self.s
        n, oh, ow, c = dy.shape
        _, h, w, _ = self.in_shape
        first, taken = self.buf("first", dy.shape, bool), self.buf("taken", dy.shape, bool)
        dxw = self.buf("dxw", (k * k, n, oh, ow, c))                # (K*K, N, OH, OW, C)
        taps = self.xw.reshape(k * k, n, oh, ow, c)
        dx = self.buf("dx", self.in_shape)
        tiled = k == s and h == s * oh and w == s * ow              # the windows tile dx

        def unpool(lo, hi):
            fb, tb, mb, dyb, dwb = first[lo:hi], taken[lo:hi], self.max[lo:hi], dy[lo:hi], dxw[:, lo:hi]
            tb.fill(False)
            for t in range(k * k):
                xp.equal(taps[t, lo:hi], mb, out=fb)                 # hits the maximum ...
                xp.greater(fb, tb, out=fb)                           # ... and no tap before it did
                xp.logical_or(tb, fb, out=tb)
                xp.multiply(dyb, fb, out=dwb[t])
            windows = self._windows(dx[lo:hi], oh, ow)
            if tiled:                                                # one copy
                xp.copyto(windows, dwb.reshape(k, k, hi - lo, oh, ow, c))
                return
            dx[lo:hi].fill(0)                                        # overlaps add; uncovered stay 0
            for t in range(k * k):
                windows[divmod(t, k)] += dwb[t]
        over_batch(n, unpool, dxw.size)
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
