"""Layers with deliberately wrong backward passes (and one right one): `launch.py gradcheck` must
fail every wrong one. Each is y = x W + b with W (D_in, D_out), written as a student might."""
from ddp_scratch.nn.layers import Layer


class Affine(Layer):
    """Right: dW = x^T dy, db = sum_N dy, dx = dy W^T, written with the fresh rule."""

    def __init__(self, space, name, d_in, d_out):
        super().__init__()
        self.dtype = space.dtype
        self.W = space.param(f"{name}.W", (d_in, d_out), "xavier", fan_in=d_in, fan_out=d_out)
        self.b = space.param(f"{name}.b", (d_out,), "zeros")

    def forward(self, x):
        self.x = x
        return x @ self.W.data + self.b.data

    def backward(self, dy):
        self.W.acc(self.x.T @ dy)
        self.b.acc(dy.sum(axis=0))
        return dy @ self.W.data.T

    @classmethod
    def gradcheck_inputs(cls, space, rng):
        return cls(space, "aff", 4, 3), rng.standard_normal((5, 4))

    def torch_twin(self, torch, params):
        return lambda x: x @ params["aff.W"] + params["aff.b"]


class TransposedInputGradient(Affine):
    """dx uses W instead of W^T on a square layer: the shapes fit, the values do not."""

    def backward(self, dy):
        self.W.acc(self.x.T @ dy)
        self.b.acc(dy.sum(axis=0))
        return dy @ self.W.data

    @classmethod
    def gradcheck_inputs(cls, space, rng):
        return cls(space, "aff", 3, 3), rng.standard_normal((5, 3))


class BiasGradientMeanNotSum(Affine):
    """db = mean over rows instead of the sum."""

    def backward(self, dy):
        self.W.acc(self.x.T @ dy)
        self.b.acc(dy.mean(axis=0))
        return dy @ self.W.data.T


class AlwaysAdds(Affine):
    """Adds into the gradient buffer even on the step's first write: a stale gradient survives."""

    def backward(self, dy):
        self.W.grad[...] += self.x.T @ dy
        self.b.grad[...] += dy.sum(axis=0)
        self.W.fresh = self.b.fresh = False
        return dy @ self.W.data.T


class AlwaysOverwrites(Affine):
    """Overwrites the gradient: a second micro-batch replaces the first instead of adding."""

    def backward(self, dy):
        self.W.grad[...] = self.x.T @ dy
        self.b.grad[...] = dy.sum(axis=0)
        self.W.fresh = self.b.fresh = False
        return dy @ self.W.data.T


class WrongTwin(Affine):
    """Right backward, but its torch twin forgets the bias: the output row disagrees."""

    def torch_twin(self, torch, params):
        return lambda x: x @ params["aff.W"]


class NoHook(Layer):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class BadHook(NoHook):
    @classmethod
    def gradcheck_inputs(cls, space, rng):
        return cls()


NOT_A_CLASS = 3


class NotALayer:
    def forward(self, x):
        return x


class ForgetsToReturnDx(Affine):
    """backward accumulates the parameter gradients but returns nothing."""

    def backward(self, dy):
        super().backward(dy)


class WrongDxShape(Affine):
    """backward returns the input gradient flattened."""

    def backward(self, dy):
        return super().backward(dy).reshape(-1)
