"""A LeNet-5-style CNN for 28x28 grey images (MNIST, Fashion-MNIST), built as a course project
would build it: a plug-in model (`model.name: examples/cnn/lenet.py:LeNet5`) on the public
contract (docs/extending.md), from the image layers in ddp_scratch/nn/conv.py and the MLP's
Linear and Activation. Nothing in ddp_scratch knows it.

    python launch.py local -n 2 examples/cnn/lenet_fashion.yaml --out runs/lenet
    python launch.py gradcheck examples/cnn/lenet.py:LeNet5

    x (N, 784) -> (N, 28, 28, 1)                 a view: the IDX rows are the images, row-major
    conv 5x5, 6 filters, padding 2 -> (N, 28, 28, 6) -> ReLU -> max pool 2 -> (N, 14, 14, 6)
    conv 5x5, 16 filters           -> (N, 10, 10, 16) -> ReLU -> max pool 2 -> (N, 5, 5, 16)
    flatten -> (N, 400) -> Linear 120 -> ReLU -> Linear 84 -> ReLU -> Linear 10 -> softmax
                                                                   cross-entropy

Activations are channels-last (N, H, W, C): see nn/conv.py for why. ReLU works in place on the
convolution's output, which backward no longer needs (it keeps its im2col columns instead).

Legend: N batch rows, H W C height, width, channels, F filters, V classes.
"""
from dataclasses import dataclass

from ddp_scratch.config import F
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn import ops
from ddp_scratch.nn.conv import Conv2d, Flatten, MaxPool2d
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.layers import Activation, Layer, Linear


@dataclass
class Options:
    image: list[int] = F([28, 28, 1], min=1, help="height, width, channels of one row of the data")
    channels: list[int] = F([6, 16], min=1, help="filters of the two convolutions")
    kernel: int = F(5, min=1, help="kernel size of both convolutions")
    padding: int = F(2, min=0, help="zero padding of the first convolution (2: 28x28 stays 28x28)")
    pool: int = F(2, min=1, help="max-pool window and stride")
    hidden: list[int] = F([120, 84], min=1, help="widths of the fully connected layers")


def _fits(h, w, kernel, padding, pool):
    """Whether an h x w image keeps at least one pixel through conv1 (padded), pool1, conv2, pool2
    (convolutions at stride 1, pools at stride = window)."""
    for k, p, s in ((kernel, padding, 1), (pool, 0, pool), (kernel, 0, 1), (pool, 0, pool)):
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            return False
    return True


def _check_fit(o):
    """The kernel and the pool against the image, in one line naming the option to change and the
    values that would fit (the others kept): the layers' own errors name a layer, not an option.
    Where either could change, the one set away from its default is named first."""
    h, w, _ = o.image
    if _fits(h, w, o.kernel, o.padding, o.pool):
        return
    fit = {"kernel": [k for k in range(1, o.kernel) if _fits(h, w, k, o.padding, o.pool)],
           "pool": [p for p in range(1, o.pool) if _fits(h, w, o.kernel, o.padding, p)]}
    keys = sorted((key for key in fit if fit[key]), key=lambda key: getattr(o, key) == getattr(Options(), key))
    if not keys:
        raise ConfigError(f"model.options: kernel {o.kernel} and pool {o.pool} do not fit {h}x{w} images with padding "
                          f"{o.padding}, and no smaller kernel or pool alone makes them fit: make both smaller")
    key, other = keys[0], "pool" if keys[0] == "kernel" else "kernel"
    also = f" (or model.options.{keys[1]} 1 to {max(fit[keys[1]])})" if len(keys) > 1 else ""
    raise ConfigError(f"model.options.{key}: {getattr(o, key)} is too large for {h}x{w} images with padding "
                      f"{o.padding} and {other} {getattr(o, other)}: expected 1 to {max(fit[key])}{also}")


class LeNet5(Layer):
    """The trainer's model interface (docs/extending.md). A Layer only for buf() (softmax workspace)."""
    Options = Options

    def __init__(self, d_in, n_out, options, dtype="float32", seed=0, build=True):
        super().__init__()
        o, self.dtype = options, dtype
        if len(o.image) != 3 or len(o.channels) != 2:
            raise ConfigError(f"model.options: expected image [height, width, channels] and two channels, got "
                              f"image {o.image}, channels {o.channels}")
        h, w, c = o.image
        if h * w * c != d_in:
            raise ConfigError(f"model.options.image: {h}x{w}x{c} = {h * w * c} values per row, but the data's rows "
                              f"have {d_in} features")
        _check_fit(o)
        sp = self.space = ParamSpace(dtype)
        (c1, c2), k = o.channels, o.kernel
        self.conv1 = Conv2d(sp, "conv1", c, c1, k, padding=o.padding, need_dx=False)    # its input is data
        self.conv2 = Conv2d(sp, "conv2", c1, c2, k)
        self.pool1, self.pool2 = MaxPool2d(o.pool, dtype=dtype), MaxPool2d(o.pool, dtype=dtype)
        # the shapes through the network (also for FLOPs and memory): (H, W, C) after each stage
        self.shapes = [(h, w, c)]
        for conv, pool in ((self.conv1, self.pool1), (self.conv2, self.pool2)):
            hh, ww = conv.out_hw(*self.shapes[-1][:2])
            self.shapes.append((hh, ww, conv.f))
            self.shapes.append((*pool.out_hw(hh, ww), conv.f))              # sizes checked by _check_fit
        flat = self.shapes[-1][0] * self.shapes[-1][1] * self.shapes[-1][2]
        dims = [flat, *o.hidden, n_out]
        self.fcs = [Linear(sp, f"fc{i}", a, b, init="he" if i < len(dims) - 2 else "xavier")
                    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
        self.layers = [self.conv1, Activation("relu", dtype), self.pool1,
                       self.conv2, Activation("relu", dtype), self.pool2, Flatten(dtype)]
        for i, fc in enumerate(self.fcs):
            self.layers.append(fc)
            if i < len(self.fcs) - 1:
                self.layers.append(Activation("relu", dtype))
        self.dims, self.o = dims, o
        if build:                                   # build=False: declared only (the memory check)
            sp.build(seed)

    def describe(self):
        (c1, c2), k = self.o.channels, self.o.kernel
        return (f"lenet5 {'x'.join(map(str, self.o.image))} -> conv{k}x{k}x{c1} -> pool -> conv{k}x{k}x{c2} -> pool "
                f"-> {'-'.join(map(str, self.dims))}")

    def predict(self, x):                           # x (N, H*W*C) -> logits (N, V)
        h, w, c = self.o.image
        x = x.reshape(x.shape[0], h, w, c)          # a view of the contiguous rows
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def loss(self, x, t, scale):
        """t (N,) class indices -> (sum of cross-entropies * scale, number correct)."""
        logits = self.predict(x)
        probs = self.buf("probs", logits.shape)     # (N, V), reused
        loss, correct, self._probs = ops.softmax_xent_forward(logits, t, scale, out=probs)
        self._t, self._scale = t, scale
        return loss, correct

    def backward(self):
        d = ops.softmax_xent_backward(self._probs, self._t, self._scale)
        for layer in reversed(self.layers):
            d = layer.backward(d)

    # ------------------------------------------------------------------ accounting
    def flops_per_step(self, n):
        """The GEMMs of forward and backward for n rows: each convolution's im2col product and its
        dW (and dx but for conv1), each Linear's 3 products. Pooling, ReLU, im2col copies and the
        softmax are not counted (no multiply-adds to speak of)."""
        (h, w, _), (h2, w2, _) = self.shapes[0], self.shapes[2]
        f = self.conv1.flops(n, h, w) + self.conv2.flops(n, h2, w2)
        return f + sum(2 * n * a * b * 3 for a, b in zip(self.dims[:-1], self.dims[1:]))

    def activation_bytes(self, rows):
        """Bytes of the workspaces a training step of `rows` rows holds (an upper bound: the bool
        masks counted as full elements)."""
        n, s = rows, self.shapes
        (h, w, c), (h1, w1, c1), (p1h, p1w, _), (h2, w2, c2), (p2h, p2w, _) = s
        e = self.conv1.workspace_elements(n, h, w) + self.conv2.workspace_elements(n, p1h, p1w)
        e += 2 * n * h1 * w1 * c1 + 2 * n * h2 * w2 * c2                                # relu masks
        e += self.pool1.workspace_elements(n, h1, w1, c1) + self.pool2.workspace_elements(n, h2, w2, c2)
        e += sum(n * (a + 2 * b) for a, b in zip(self.dims[:-1], self.dims[1:]))         # y, dx, relu mask
        e += n * self.dims[-1]                                                            # probs
        return e * self.space.itemsize

    # ------------------------------------------------------------------ gradcheck hooks
    @classmethod
    def gradcheck_inputs(cls, rng):
        """A small LeNet on 9x8 two-channel images: every layer kind, a few hundred parameters."""
        o = Options(image=[9, 8, 2], channels=[3, 4], kernel=3, padding=1, pool=2, hidden=[5])
        m = cls(d_in=9 * 8 * 2, n_out=3, options=o, dtype="float64", seed=0)
        return m, rng.standard_normal((3, 9 * 8 * 2)), rng.integers(0, 3, 3)

    def torch_twin(self, torch, params):
        """The same network in torch (NCHW), fed our channels-last tensors."""
        F_ = torch.nn.functional
        h, w, c = self.o.image

        def conv(x, layer):
            W = params[layer.W.name].reshape(layer.kh, layer.kw, layer.c, layer.f).permute(3, 2, 0, 1)
            return F_.conv2d(x, W, params[layer.b.name], stride=layer.stride, padding=(layer.ph, layer.pw))

        def f(x, t, scale):
            x = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)                              # NCHW
            x = F_.max_pool2d(torch.relu(conv(x, self.conv1)), self.o.pool)
            x = F_.max_pool2d(torch.relu(conv(x, self.conv2)), self.o.pool)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)                           # flatten as we do
            for i, fc in enumerate(self.fcs):
                x = x @ params[fc.W.name] + params[fc.b.name]
                if i < len(self.fcs) - 1:
                    x = torch.relu(x)
            return F_.cross_entropy(x, t, reduction="sum") * scale
        return f
