"""Optimizers on the flat buffers (the PyTorch algorithms), plus learning-rate schedules.

State lives in flat arrays the size of the parameter buffer; updates are in place through one
preallocated scratch buffer, so a step allocates nothing. `step()` consumes the gradient buffer
(weight decay and `maximize` are applied to it in place).

These updates are memory-bound (a few flops per element over buffers of tens of MB), so SGD walks
the buffers in cache-sized chunks: each element is read from memory once per step instead of
once per NumPy call, and the scratch chunk never leaves the cache.

Where nn/jit.py says so (`kernels:`, NumPy arrays of 32K elements or more), each built-in update
runs as one fused numba kernel instead (nn/optim_kernels.py, the same float operations in the same
order); the NumPy code below stays the reference the tests compare it with.
"""
import math

from .. import backend as B
from ..errors import ConfigError
from . import jit, optim_kernels as K
from .flat import zeros
from .plugins import build_optimizer as build_plugin_optimizer, is_plugin, optimizer_class, optimizer_state_arrays


class Optimizer:
    state_names: tuple = ()
    # True where each element's update reads only that element's gradient, state and parameter
    # (and scalars): then a slice of the buffers is an optimizer of its own, and optim.zero: 1
    # may give each rank one slice (ZeRO-1). A plug-in says so itself (docs/extending.md).
    elementwise: bool = False

    def __init__(self, space, lr, weight_decay=0.0, maximize=False):
        self.space, self.lr, self.wd, self.maximize = space, lr, weight_decay, maximize
        self.p, self.g = space.params, space.grads
        self.tmp = zeros(self.p.size, self.p.dtype)      # huge-page aligned like the params (flat.zeros)
        self.t = 0
        self.decay = [(self.p[a:b], self.g[a:b]) for a, b in space.decay_ranges()]
        for name in self.state_names:
            setattr(self, name, zeros(self.p.size, self.p.dtype))
        self._segs = None

    def _fused(self):
        """Whether this step runs the numba kernel (nn/jit.py): then the kernel's arguments
        (the weight-decay segments, scalars in the buffers' dtype) are made here."""
        if not jit.active(self.p.size):
            return False
        if self._segs is None:
            self._segs = K.Segments(self.space.decay_ranges(), self.p.size)
            self._scalar = self.p.dtype.type
        return True

    def _prep_grad(self, l2: bool):
        if self._fused():     # plug-in optimizers call this too: one pass instead of three
            s = self._segs
            if self.maximize or (l2 and self.wd):
                K.prep_grad(self.p, self.g, s.bounds, s.decay, self.maximize, bool(l2 and self.wd),
                            self._scalar(self.wd))
            return
        if self.maximize:
            B.xp.negative(self.g, out=self.g)
        if l2 and self.wd:
            for p, g in self.decay:   # L2 penalty as in torch: g += wd * p
                tmp = self.tmp[:p.size]
                B.xp.multiply(p, self.wd, out=tmp)
                g += tmp

    def state_dict(self):
        d = {name: getattr(self, name) for name in self.state_names}
        d["t"] = self.t
        return d

    def load_state_dict(self, d):
        for name in self.state_names:
            getattr(self, name)[...] = B.xp.asarray(d[name])
        self.t = int(d["t"])


class SGD(Optimizer):
    state_names = ("buf",)
    elementwise = True

    def __init__(self, space, lr, momentum=0.0, nesterov=False, weight_decay=0.0, maximize=False, dampening=0.0):
        if nesterov and momentum <= 0:
            raise ConfigError("optim.nesterov: needs optim.momentum > 0")
        super().__init__(space, lr, weight_decay, maximize)
        self.momentum, self.nesterov, self.dampening = momentum, nesterov, dampening

    CHUNK = 1 << 16     # elements: 256 KiB per float32 buffer slice, four slices fit in L2

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        if self._fused():
            f, s, first = self._scalar, self._segs, self.t == 0
            self.t += 1
            K.sgd(self.p, self.g, self.buf, s.bounds, s.decay, self.maximize, bool(self.wd), f(self.wd), f(lr),
                  bool(self.momentum), f(self.momentum), first, bool(self.dampening), f(1.0 - self.dampening),
                  self.nesterov)
            return
        self._prep_grad(l2=True)
        first, self.t = self.t == 0, self.t + 1
        if not B.on_gpu():
            tmp = self.tmp[:self.CHUNK]
            for a in range(0, self.p.size, self.CHUNK):
                b = min(a + self.CHUNK, self.p.size)
                self._update(self.p[a:b], self.g[a:b], self.buf[a:b], tmp[:b - a], lr, first)
        else:      # one kernel per call already streams the whole buffer
            self._update(self.p, self.g, self.buf, self.tmp, lr, first)

    def _update(self, p, g, buf, tmp, lr, first):
        """p -= lr * (momentum buffer or g), the torch.optim.SGD rule, on one slice."""
        xp = B.xp
        if self.momentum:
            if first:
                buf[...] = g
            else:
                buf *= self.momentum
                if self.dampening:
                    xp.multiply(g, 1.0 - self.dampening, out=tmp)
                    buf += tmp
                else:                # g * 1.0 == g: skip a pass over the buffer
                    buf += g
            if self.nesterov:
                xp.multiply(buf, self.momentum, out=tmp)
                g += tmp
            else:
                g = buf
        xp.multiply(g, lr, out=tmp)
        p -= tmp


class Adam(Optimizer):
    """Adam (L2 weight decay added to the gradient) or, with decoupled=True, AdamW."""
    state_names = ("m", "v", "vmax")
    elementwise = True

    def __init__(self, space, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False, decoupled=False):
        self.state_names = ("m", "v", "vmax") if amsgrad else ("m", "v")
        super().__init__(space, lr, weight_decay, maximize)
        self.b1, self.b2 = betas
        self.eps, self.amsgrad, self.decoupled = eps, amsgrad, decoupled

    def step(self, lr=None):
        xp, lr = B.xp, self.lr if lr is None else lr
        g, tmp, m, v = self.g, self.tmp, self.m, self.v
        if self._fused():
            self._fused_step(lr)
            return
        self._prep_grad(l2=not self.decoupled)
        if self.decoupled and self.wd:
            for p, _ in self.decay:
                p *= 1.0 - lr * self.wd
        self.t += 1
        m *= self.b1
        xp.multiply(g, 1.0 - self.b1, out=tmp)
        m += tmp
        v *= self.b2
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.b2
        v += tmp
        bc1 = 1.0 - self.b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - self.b2 ** self.t)
        if self.amsgrad:
            xp.maximum(self.vmax, v, out=self.vmax)
            xp.sqrt(self.vmax, out=tmp)
        else:
            xp.sqrt(v, out=tmp)
        tmp /= bc2_sqrt
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / bc1
        self.p -= tmp

    def _fused_step(self, lr):
        f, s = self._scalar, self._segs
        self.t += 1
        bc1, bc2_sqrt = 1.0 - self.b1 ** self.t, math.sqrt(1.0 - self.b2 ** self.t)
        K.adam(self.p, self.g, self.m, self.v, self.vmax if self.amsgrad else self.m, s.bounds, s.decay,
               self.maximize, bool(self.wd and not self.decoupled), f(self.wd),
               f(1.0 - lr * self.wd if self.decoupled else 1.0), f(self.b1), f(1.0 - self.b1), f(self.b2),
               f(1.0 - self.b2), self.amsgrad, f(bc2_sqrt), f(self.eps), f(lr / bc1))


class RMSProp(Optimizer):
    elementwise = True

    def __init__(self, space, lr, alpha=0.99, eps=1e-8, momentum=0.0, centered=False,
                 weight_decay=0.0, maximize=False):
        self.state_names = ("sq",) + (("buf",) if momentum else ()) + (("gavg",) if centered else ())
        super().__init__(space, lr, weight_decay, maximize)
        self.alpha, self.eps, self.momentum, self.centered = alpha, eps, momentum, centered

    def step(self, lr=None):
        xp, lr = B.xp, self.lr if lr is None else lr
        g, tmp = self.g, self.tmp
        if self._fused():
            f, s = self._scalar, self._segs
            self.t += 1
            K.rmsprop(self.p, g, self.sq, getattr(self, "buf", g), getattr(self, "gavg", g), s.bounds, s.decay,
                      self.maximize, bool(self.wd), f(self.wd), f(self.alpha), f(1.0 - self.alpha), self.centered,
                      bool(self.momentum), f(self.momentum), f(self.eps), f(lr))
            return
        self._prep_grad(l2=True)
        self.t += 1
        self.sq *= self.alpha
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.alpha
        self.sq += tmp
        if self.centered:
            self.gavg *= self.alpha
            xp.multiply(g, 1.0 - self.alpha, out=tmp)
            self.gavg += tmp
            xp.multiply(self.gavg, self.gavg, out=tmp)
            xp.subtract(self.sq, tmp, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:
            xp.sqrt(self.sq, out=tmp)
        tmp += self.eps
        xp.divide(g, tmp, out=tmp)
        if self.momentum:
            self.buf *= self.momentum
            self.buf += tmp
            xp.multiply(self.buf, lr, out=tmp)
        else:
            tmp *= lr
        self.p -= tmp


def build_optimizer(cfg, space):
    """cfg: the `optim` config section; space: a ParamSpace, or one rank's SpaceShard (optim.zero: 1)."""
    if getattr(cfg, "zero", 0):
        check_shardable(cfg)
    if is_plugin(cfg.name):          # a user's optimizer: mypkg.optim:Lion or path/file.py:Lion
        return build_plugin_optimizer(cfg.name, cfg, space)
    common = dict(weight_decay=cfg.weight_decay, maximize=cfg.maximize)
    if cfg.name == "sgd":
        return SGD(space, cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    if cfg.name in ("adam", "adamw"):
        return Adam(space, cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, amsgrad=cfg.amsgrad,
                    decoupled=cfg.name == "adamw", **common)
    if cfg.name == "rmsprop":
        return RMSProp(space, cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
                       centered=cfg.centered, **common)
    raise ConfigError(f"optim.name: expected one of sgd, adam, adamw, rmsprop, got {cfg.name!r}")


def check_shardable(cfg):
    """optim.zero: 1 needs an element-wise optimizer (a slice of the buffers is then an optimizer)."""
    if is_plugin(cfg.name) and not getattr(optimizer_class(cfg.name), "elementwise", False):
        raise ConfigError(f"optim.zero: 1 shards the optimizer state across ranks, but {cfg.name} does not declare "
                          "elementwise = True (each element updated from its own gradient and state alone); use "
                          "optim.zero=0, or see docs/extending.md, section 5")


def optimizer_arrays(o):
    """Parameter-sized state arrays an optimizer of config `o` keeps (besides its update scratch)."""
    if o is not None and is_plugin(o.name):
        return optimizer_state_arrays(o.name)
    if o is None or o.name in ("adam", "adamw"):
        return 2 + bool(o is not None and o.amsgrad)
    if o.name == "sgd":
        return 1
    return 1 + (o.momentum > 0) + bool(o.centered)     # rmsprop


def lr_at(cfg, step: int, total_steps: int) -> float:
    """Learning rate for 0-based `step`: linear warm-up, then constant / step decay / cosine."""
    base, warm = cfg.lr, cfg.warmup_steps
    if step < warm:
        return base * (step + 1) / warm
    if cfg.schedule == "constant":
        return base
    if cfg.schedule == "step":
        return base * cfg.gamma ** ((step - warm) // cfg.step_size)
    if cfg.schedule == "cosine":
        span = max(1, (cfg.decay_steps or total_steps) - warm)
        frac = min(1.0, (step - warm) / span)
        return cfg.min_lr + 0.5 * (base - cfg.min_lr) * (1.0 + math.cos(math.pi * frac))
    raise ConfigError(f"optim.schedule: expected constant, step or cosine, got {cfg.schedule!r}")
