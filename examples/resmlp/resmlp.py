"""A worked example of extending ddp_scratch without editing it: a layer of your own (Residual)
and a model built from it (ResMLP), named in a config and trained data-parallel:

    python launch.py local -n 2 examples/resmlp/resmlp_digits.yaml --out runs/resmlp
    python launch.py gradcheck examples/resmlp/resmlp.py:Residual
    python launch.py gradcheck examples/resmlp/resmlp.py:ResMLP

It uses only the public contract (docs/extending.md): parameters declared in the model's
ParamSpace, gradients written with Param.acc_* (through ops.linear_backward), workspaces from
Layer.buf, and array math only through ddp_scratch's ops or the arrays' own methods (so it runs
on CuPy too; write `from ddp_scratch import backend as B` and `B.xp.<function>` where you need one).

Legend: N batch rows, D_in input features, D width of the residual stream, H hidden units of a
block, V classes.
"""
from dataclasses import dataclass

from ddp_scratch.config import F
from ddp_scratch.nn import ops
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.layers import Activation, Layer, Linear


class Residual(Layer):
    """y = x + relu(x W1 + b1) W2 + b2.   x (N, D) -> y (N, D);  W1 (D, H), W2 (H, D).

    forward:   h = x W1 + b1;  a = relu(h);  y = x + a W2 + b2
    backward:  dW2 = a^T dy;  db2 = sum_N dy;  da = dy W2^T;  dh = da * [a > 0]
               dW1 = x^T dh;  db1 = sum_N dh;  dx = dy + dh W1^T      (the skip adds dy)
    """

    def __init__(self, space, name, width, hidden):
        super().__init__()
        self.dtype = space.dtype
        self.W1 = space.param(f"{name}.W1", (width, hidden), "he", fan_in=width, fan_out=hidden)
        self.b1 = space.param(f"{name}.b1", (hidden,), "zeros", fan_in=width)
        self.W2 = space.param(f"{name}.W2", (hidden, width), "xavier", fan_in=hidden, fan_out=width)
        self.b2 = space.param(f"{name}.b2", (width,), "zeros", fan_in=hidden)

    def forward(self, x):
        n, (d, h) = x.shape[0], self.W1.shape
        self.x = x                                                                   # (N, D) kept for dW1
        self.a = ops.linear_forward(x, self.W1.data, self.b1.data, self.buf("a", (n, h)))   # h  (N, H)
        ops.relu_forward(self.a)                                                      # a = relu(h), in place
        y = ops.linear_forward(self.a, self.W2.data, self.b2.data, self.buf("y", (n, d)))   # (N, D)
        y += x
        return y

    def backward(self, dy):
        n, (d, h) = dy.shape[0], self.W1.shape
        # The fresh rule: the first write of a step may overwrite the gradient (a GEMM with out=);
        # a later one (a second micro-batch) adds through a scratch product, `work`.
        work = None if self.W2.fresh else self.buf("dW2", self.W2.shape)
        da = ops.linear_backward(dy, self.a, self.W2.data, self.W2, self.b2, self.buf("da", (n, h)), work)
        dh = ops.relu_backward(da, self.a, lambda key, dtype=None: self.buf(key, (n, h), dtype))   # in place
        work = None if self.W1.fresh else self.buf("dW1", self.W1.shape)
        dx = ops.linear_backward(dh, self.x, self.W1.data, self.W1, self.b1, self.buf("dx", (n, d)), work)
        dx += dy
        return dx

    def workspace_elements(self, n):
        d, h = self.W1.shape
        return n * (3 * h + 2 * d)          # a, da, relu mask | y, dx

    # gradcheck: a small instance and its input; the same layer in torch
    @classmethod
    def gradcheck_inputs(cls, space, rng):
        return cls(space, "res", width=5, hidden=4), rng.standard_normal((6, 5))

    def torch_twin(self, torch, params):
        W1, b1, W2, b2 = (params[p.name] for p in (self.W1, self.b1, self.W2, self.b2))
        return lambda x: x + torch.relu(x @ W1 + b1) @ W2 + b2


@dataclass
class Options:
    """The keys of model.options (checked like every config key: type, range, unknown keys)."""
    width: int = F(64, min=1, help="features of the residual stream")
    hidden: int = F(128, min=1, help="hidden units inside each block")
    blocks: int = F(2, min=1, help="residual blocks")


class ResMLP(Layer):
    """x (N, D_in) -> Linear -> ReLU -> blocks x Residual -> Linear -> logits (N, V);
    softmax cross-entropy. (A Layer only for its buf(): the softmax workspace.)"""
    Options = Options

    def __init__(self, d_in, n_out, options, dtype="float32", seed=0, build=True):
        super().__init__()
        o, self.dtype = options, dtype
        self.space = sp = ParamSpace(dtype)
        self.layers = [Linear(sp, "embed", d_in, o.width, need_dx=False), Activation("relu", dtype)]
        self.layers += [Residual(sp, f"block{i}", o.width, o.hidden) for i in range(o.blocks)]
        self.layers.append(Linear(sp, "head", o.width, n_out, init="xavier"))
        self.dims, self.o = (d_in, n_out), o
        if build:                          # build=False: declared only (the memory check)
            sp.build(seed)

    def describe(self):
        return f"resmlp {self.dims[0]}-{self.o.width}x{self.o.blocks} blocks (hidden {self.o.hidden})-{self.dims[1]}"

    def predict(self, x):                  # (N, D_in) -> logits (N, V)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def loss(self, x, t, scale):
        logits = self.predict(x)
        probs = self.buf("probs", logits.shape)                   # softmax workspace (reused)
        loss, correct, self._probs = ops.softmax_xent_forward(logits, t, scale, out=probs)
        self._t, self._scale = t, scale
        return loss, correct

    def backward(self):
        d = ops.softmax_xent_backward(self._probs, self._t, self._scale)
        for layer in reversed(self.layers):
            d = layer.backward(d)

    def flops_per_step(self, n):
        """GEMMs: 2 n a b for each product; backward twice that, except the first layer's dx."""
        (d_in, v), o = self.dims, self.o
        return 2 * n * (2 * d_in * o.width + o.blocks * 3 * 2 * o.width * o.hidden + 3 * o.width * v)

    def activation_bytes(self, rows):
        v, o = self.dims[1], self.o
        per_row = 2 * o.width + o.blocks * (3 * o.hidden + 2 * o.width) + 2 * v + o.width + v
        return rows * per_row * self.space.itemsize

    @classmethod
    def gradcheck_inputs(cls, rng):
        m = cls(d_in=6, n_out=3, options=Options(width=5, hidden=4, blocks=2), dtype="float64", seed=0)
        return m, rng.standard_normal((4, 6)), rng.integers(0, 3, 4)

    def torch_twin(self, torch, params):
        P = params

        def f(x, t, scale):
            h = torch.relu(x @ P["embed.W"] + P["embed.b"])
            for i in range(self.o.blocks):
                b = f"block{i}."
                h = h + torch.relu(h @ P[b + "W1"] + P[b + "b1"]) @ P[b + "W2"] + P[b + "b2"]
            logits = h @ P["head.W"] + P["head.b"]
            return torch.nn.functional.cross_entropy(logits, t, reduction="sum") * scale
        return f
