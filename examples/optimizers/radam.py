"""RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond") on the
flat buffers, as a plug-in optimizer: `optim.name: examples/optimizers/radam.py:RAdam`.

The update of torch.optim.RAdam (tests/nn/test_optim_plugins.py steps both side by side):

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2          (t = 1, 2, ...)
    rho_inf = 2 / (1 - b2) - 1       rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    rho_t > 5:  p -= lr * r_t * sqrt(1 - b2^t) / (sqrt(v) + eps) * m / (1 - b1^t)
                r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    otherwise:  p -= lr * m / (1 - b1^t)                 (SGD with momentum while v is unreliable)

Weight decay as in torch: added to the gradient (L2), or with decoupled_weight_decay
p *= 1 - lr wd first (AdamW-style); either only on parameters declared with decay=True.
State: two flat arrays the size of the parameters (m, v); the base class keeps one update
scratch (tmp) and the step count (t). A step allocates nothing.
"""
from dataclasses import dataclass
import math

from ddp_scratch import backend as B
from ddp_scratch.config import F
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn.optim import Optimizer


@dataclass
class Options:
    betas: list[float] = F([0.9, 0.999], min=0.0, lt=1.0)
    eps: float = F(1e-8, gt=0.0)
    decoupled_weight_decay: bool = F(False, help="p *= 1 - lr wd (AdamW-style) instead of g += wd p")


class RAdam(Optimizer):
    Options = Options
    state_names = ("m", "v")
    elementwise = True      # optim.zero: 1 may shard it (docs/extending.md)

    def __init__(self, space, lr, weight_decay=0.0, maximize=False, options=None):
        o = options or Options()
        if len(o.betas) != 2:
            raise ConfigError(f"optim.options.betas: expected two numbers in [0, 1), got {o.betas}")
        super().__init__(space, lr, weight_decay, maximize)     # allocates m, v (state_names) and tmp
        (self.b1, self.b2), self.eps, self.decoupled = o.betas, o.eps, o.decoupled_weight_decay
        self.rho_inf = 2.0 / (1.0 - self.b2) - 1.0

    def step(self, lr=None):
        xp, lr = B.xp, self.lr if lr is None else lr
        g, tmp, m, v = self.g, self.tmp, self.m, self.v
        self._prep_grad(l2=not self.decoupled)          # maximize, and L2 decay into g
        if self.decoupled and self.wd:
            for p, _ in self.decay:
                p *= 1.0 - lr * self.wd
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        m *= b1
        xp.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        rho_t = self.rho_inf - 2.0 * t * b2 ** t / bc2
        if rho_t > 5.0:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * self.rho_inf / ((self.rho_inf - 4) * (self.rho_inf - 2) * rho_t))
            xp.sqrt(v, out=tmp)
            tmp += self.eps
            xp.divide(m, tmp, out=tmp)
            tmp *= lr * r * math.sqrt(bc2) / bc1
        else:
            xp.multiply(m, lr / bc1, out=tmp)
        self.p -= tmp
