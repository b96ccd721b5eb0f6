"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") on the flat buffers,
as a plug-in optimizer: `optim.name: examples/optimizers/lion.py:Lion`. torch.optim has no Lion;
tests/nn/test_optim_plugins.py steps it against the paper's update written out in NumPy.

    c = b1 m + (1 - b1) g                     the update direction's momentum mix
    p *= 1 - lr wd                            decoupled weight decay (parameters with decay=True)
    p -= lr sign(c)
    m = b2 m + (1 - b2) g

Every coordinate moves by exactly lr (or 0), so Lion wants a 3-10x smaller lr than AdamW and a
3-10x larger weight decay. State: one flat array (m). A step allocates nothing.
"""
from dataclasses import dataclass

from ddp_scratch import backend as B
from ddp_scratch.config import F
from ddp_scratch.errors import ConfigError
from ddp_scratch.nn.optim import Optimizer


@dataclass
class Options:
    betas: list[float] = F([0.9, 0.99], min=0.0, lt=1.0, help="b1 (update mix), b2 (momentum decay)")


class Lion(Optimizer):
    Options = Options
    state_names = ("m",)
    elementwise = True      # optim.zero: 1 may shard it (docs/extending.md)

    def __init__(self, space, lr, weight_decay=0.0, maximize=False, options=None):
        o = options or Options()
        if len(o.betas) != 2:
            raise ConfigError(f"optim.options.betas: expected two numbers in [0, 1), got {o.betas}")
        super().__init__(space, lr, weight_decay, maximize)     # allocates m (state_names) and tmp
        self.b1, self.b2 = o.betas

    def step(self, lr=None):
        xp, lr = B.xp, self.lr if lr is None else lr
        g, tmp, m = self.g, self.tmp, self.m
        self._prep_grad(l2=False)                      # maximize only: the decay is decoupled
        if self.wd:
            for p, _ in self.decay:
                p *= 1.0 - lr * self.wd
        self.t += 1
        # c = b1 m + (1 - b1) g and m = b2 m + (1 - b2) g, each written m + (1 - b) (g - m): in place
        # in the one scratch array, so a step allocates nothing
        xp.subtract(g, m, out=tmp)
        tmp *= 1.0 - self.b1
        tmp += m
        xp.sign(tmp, out=tmp)
        tmp *= lr
        self.p -= tmp
        xp.subtract(g, m, out=tmp)
        tmp *= 1.0 - self.b2
        m += tmp
