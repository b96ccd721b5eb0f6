"""Models built from dataclass configs. Every model exposes the same small interface the trainer
uses, so no model-specific code lives in the trainer or in communication:

  model.space                    the ParamSpace (flat params / grads)
  model.loss(x, t, scale)        forward + loss; returns (loss_sum * scale, n_correct)
  model.backward()               accumulate gradients into model.space.grads, in reverse order
  model.predict(x)               forward only, returns outputs (logits)
  model.flops_per_step(n)        analytic forward+backward FLOPs for n rows (matmuls)
"""
from .. import backend as B
from ..errors import ConfigError
from . import ops
from .flat import ParamSpace
from .layers import Activation, Linear

# Legend: N batch rows, D_in input features, H_i hidden widths, V classes.


class MLP:
    def __init__(self, d_in, n_out, hidden, activation="relu", init="auto", dtype="float32",
                 seed=0, loss="xent", build=True):
        if activation not in ops.ACTIVATIONS:
            raise ConfigError(f"model.activation: expected one of {', '.join(ops.ACTIVATIONS)}, got {activation!r}")
        if loss not in ("xent", "mse"):
            raise ConfigError(f"train.loss: expected xent or mse, got {loss!r}")
        if init == "auto":   # He for the ReLU family, Glorot for saturating activations
            init = "xavier" if activation in ("tanh", "sigmoid") else "he"
        self.space = ParamSpace(dtype)
        self.dims = [d_in, *hidden, n_out]
        self.loss_kind = loss
        self.layers = []
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            self.layers.append(Linear(self.space, f"fc{i}", a, b, init, need_dx=i > 0))
            if i < len(self.dims) - 2:
                self.layers.append(Activation(activation, dtype))
        self._probs_ws = None          # (N, V) softmax / dlogits workspace
        if build:                      # build=False: parameters declared, nothing allocated
            self.space.build(seed)

    def predict(self, x):                  # x (N, D_in) -> logits (N, V)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def loss(self, x, t, scale):
        """t: class indices (N,). Softmax cross-entropy, or MSE against one-hot targets."""
        logits = self.predict(x)
        if self.loss_kind == "xent":
            ws = self._probs_ws
            if ws is None or ws.shape != logits.shape:       # reused while the batch shape holds
                ws = self._probs_ws = B.xp.empty_like(logits)
            loss, correct, self._dlogits = ops.softmax_xent_forward(logits, t, scale, out=ws)
        else:
            onehot = logits * 0
            onehot[B.xp.arange(len(t)), t] = 1
            loss, self._dlogits = ops.mse_forward(logits, onehot, scale)
            correct = ops.number((logits.argmax(axis=1) == t).sum(), int)
        self._t, self._scale = t, scale
        return loss, correct

    def backward(self):
        if self.loss_kind == "xent":
            d = ops.softmax_xent_backward(self._dlogits, self._t, self._scale)
        else:
            d = ops.mse_backward(self._dlogits, self._scale)
        for layer in reversed(self.layers):
            d = layer.backward(d)

    def describe(self):
        return f"mlp {'-'.join(map(str, self.dims))} ({self.layers[1].kind if len(self.layers) > 1 else 'linear'})"

    def activation_bytes(self, rows):
        """Bytes of outputs, input gradients and activation scratch for a batch of `rows`."""
        per_row = sum(2 * a + 3 * b for a, b in zip(self.dims[:-1], self.dims[1:])) + 2 * self.dims[-1]
        return rows * per_row * self.space.itemsize

    def flops_per_step(self, n):
        """Forward 2·N·a·b per linear; backward 2·N·a·b for dW and again for dx (not layer 0)."""
        f = 0
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            f += 2 * n * a * b * (3 if i > 0 else 2)
        return f
