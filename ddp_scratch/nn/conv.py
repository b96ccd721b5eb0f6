"""Image layers, channels-last: Conv2d (im2col + one GEMM), MaxPool2d, Flatten.

Written only against the public layer contract of docs/extending.md, as a course project would
write them: parameters declared in the model's ParamSpace, gradients written through
Param.acc_matmul / acc_sum0 (the fresh rule), every array a workspace from Layer.buf, the array
module read from backend.xp at call time. So a training step allocates no array and the layers
run on CuPy unchanged. Each has the gradcheck hooks (gradcheck_inputs, torch_twin).

Channels-last, because im2col turns a convolution into one GEMM whose rows are output pixels
(N*OH*OW) and whose columns are filters: its result IS the (N, OH, OW, F) output in memory
order, so nothing is transposed after the GEMM, and the next layer's im2col copies C contiguous
values per tap. Weights are stored as the GEMM uses them, W (KH*KW*C, F) with rows in (kh, kw, c)
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


# ----------------------------------------------------------------------------- im2col / col2im
# cols (N, OH, OW, KH, KW, C)  <->  xpad (N, Hp, Wp, C): cols[n, i, j, a, b, c] = xpad[n, S i + a, S j + b, c]

def im2col(xpad, cols, stride):
    """cols <- the KH x KW patches of xpad at `stride`: one strided copy per kernel tap."""
    _, oh, ow, kh, kw, _ = cols.shape
    for a in range(kh):
        for b in range(kw):
            cols[:, :, :, a, b, :] = xpad[:, _window(a, oh, stride), _window(b, ow, stride), :]
    return cols


def col2im(dcols, dxpad, stride):
    """dxpad += every patch of dcols at its place: the adjoint of im2col (overlapping patches add).
    dxpad must hold zeros (or what it should add to)."""
    _, oh, ow, kh, kw, _ = dcols.shape
    for a in range(kh):
        for b in range(kw):
            dxpad[:, _window(a, oh, stride), _window(b, ow, stride), :] += dcols[:, :, :, a, b, :]
    return dxpad


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
        cols = im2col(self._padded(x), self.buf("cols", (n, oh, ow, self.kh, self.kw, c)), self.stride)
        self.cols = cols.reshape(n * oh * ow, self.k)                       # (N*OH*OW, K) kept for dW
        self.in_shape = x.shape
        y = self.buf("y", (n * oh * ow, self.f))                            # (N*OH*OW, F)
        ops.linear_forward(self.cols, self.W.data, self.b.data if self.b else None, y)
        return y.reshape(n, oh, ow, self.f)

    def backward(self, dy):
        n, oh, ow, f = dy.shape
        dy2 = B.xp.ascontiguousarray(dy).reshape(n * oh * ow, f)           # (N*OH*OW, F); a view when contiguous
        work = None if self.W.fresh else self.buf("dW", self.W.shape)
        if not self.need_dx:
            return ops.linear_backward(dy2, self.cols, self.W.data, self.W, self.b, None, work)
        dcols = self.buf("dcols", (n * oh * ow, self.k))                   # (N*OH*OW, K)
        ops.linear_backward(dy2, self.cols, self.W.data, self.W, self.b, dcols, work)
        _, h, w, c = self.in_shape
        dxpad = self.buf("dxpad", (n, h + 2 * self.ph, w + 2 * self.pw, c))  # (N, Hp, Wp, C)
        dxpad.fill(0)
        col2im(dcols.reshape(n, oh, ow, self.kh, self.kw, c), dxpad, self.stride)
        if not (self.ph or self.pw):
            return dxpad
        dx = self.buf("dx", (n, h, w, c))                                   # the interior, contiguous
        dx[...] = dxpad[:, self.ph:self.ph + h, self.pw:self.pw + w, :]
        return dx

    # ------------------------------------------------------------------ accounting
    def flops(self, n, h, w):
        """Forward and backward GEMM FLOPs for n images of h x w: 2 N OH OW K F each for y, dW
        and (need_dx) dx."""
        oh, ow = self.out_hw(h, w)
        return 2 * n * oh * ow * self.k * self.f * (3 if self.need_dx else 2)

    def workspace_elements(self, n, h, w):
        """Elements of the workspaces a training step of n images holds (activation_bytes)."""
        oh, ow = self.out_hw(h, w)
        hp, wp = h + 2 * self.ph, w + 2 * self.pw
        padded = self.ph or self.pw
        e = n * oh * ow * (self.k + self.f) + (n * hp * wp * self.c if padded else 0)      # cols, y, xpad
        if self.need_dx:
            e += n * oh * ow * self.k + n * hp * wp * self.c + (n * h * w * self.c if padded else 0)
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
    gradient, as in torch."""

    def __init__(self, kernel=2, stride=None, dtype="float32"):
        super().__init__()
        self.k = int(kernel)
        self.s = int(stride or kernel)
        self.dtype = dtype

    def out_hw(self, h, w):
        return (h - self.k) // self.s + 1, (w - self.k) // self.s + 1

    def forward(self, x):
        xp, (n, h, w, c), k, s = B.xp, x.shape, self.k, self.s
        oh, ow = self.out_hw(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"max pool: a {h}x{w} input is smaller than the {k}x{k} window")
        y = self.buf("y", (n, oh, ow, c))
        self.arg = self.buf("arg", (n, oh, ow, c), "uint8")   # which tap of the window won (a*K + b)
        hit = self.buf("hit", (n, oh, ow, c), bool)
        y[...] = x[:, _window(0, oh, s), _window(0, ow, s), :]
        self.arg.fill(0)
        for tap in range(1, k * k):
            a, b = divmod(tap, k)
            v = x[:, _window(a, oh, s), _window(b, ow, s), :]
            xp.greater(v, y, out=hit)
            xp.copyto(y, v, where=hit)
            xp.copyto(self.arg, tap, where=hit)
        self.in_shape = x.shape
        return y

    def backward(self, dy):
        xp, k, s = B.xp, self.k, self.s
        _, oh, ow, _ = dy.shape
        dx = self.buf("dx", self.in_shape)
        dx.fill(0)
        hit, part = self.buf("hit", dy.shape, bool), self.buf("part", dy.shape)
        for tap in range(k * k):
            a, b = divmod(tap, k)
            xp.equal(self.arg, tap, out=hit)
            xp.multiply(dy, hit, out=part)
            dx[:, _window(a, oh, s), _window(b, ow, s), :] += part
        return dx

    def workspace_elements(self, n, h, w, c):
        oh, ow = self.out_hw(h, w)
        return n * oh * ow * c * 2 + n * h * w * c + n * oh * ow * c     # y, part, dx; arg + hit ~ 1 more

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
