"""Checking a hand-written backward: against central finite differences in float64, and against
torch autograd when torch can be imported and the target has a torch twin. `launch.py gradcheck
TARGET` runs it; the tests use the same functions.

A target is a layer (forward(x), backward(dy) -> dx, parameters in a ParamSpace) or a model
(loss(x, t, scale), backward()). It says how to make a small instance and its input:

  layer:  @classmethod gradcheck_inputs(cls, space, rng) -> (layer, x)
          the layer declares its parameters in `space` (float64, not yet built); x its input
  model:  @classmethod gradcheck_inputs(cls, rng) -> (model, x, t)
          a small model built in float64, a batch x and its targets t

and, optionally, the same computation in torch:

  layer:  torch_twin(self, torch, params) -> f(x) -> y
  model:  torch_twin(self, torch, params) -> f(x, t, scale) -> loss (the same sum * scale)

where `params` maps each parameter's name to a float64 torch leaf tensor of the same shape as
ours. What a TARGET name means (the built-ins' defaults, a plug-in's hooks): gradcheck_targets.py.

What is checked, for each parameter and the layer's input: the analytic gradient against
central differences of f = sum(forward(x) * R) for a fixed random R (a layer) or of the loss
(a model), and against torch's gradient of the same f; the forward output (or loss) against
torch's. Parameters start from their initialisation plus N(0, 0.1^2) noise (a zero bias would
hide a bias that forward forgets). Every entry of an array is checked up to `entries` of them,
else that many chosen at random. Error = max |ours - reference| / max |reference| (relative to
the array's scale: an entry near zero does not blow it up). And the fresh rule: a backward after
zero_grad() overwrites whatever the gradient buffer held, a second one without it adds.
"""
from dataclasses import dataclass
import importlib
import math

import numpy as np

from .. import backend as B


EPS = 1e-6          # float64 central differences: truncation ~eps^2, rounding ~1e-16/eps
TOL = 1e-6          # max relative error against finite differences
TORCH_TOL = 1e-8    # against torch autograd (both exact up to float64 rounding)
ENTRIES = 200       # entries per array checked by finite differences (2 forwards each)


def numgrad(f, x, eps=EPS, entries=None):
    """Central differences of scalar f() with respect to x's entries (modified in place, restored):
    all of them, or the flat indices `entries` (the others stay 0). x may live on the device (it
    is the array forward reads); the result is a host (NumPy) array. float64: truncation error
    ~eps^2, rounding ~1e-16/eps."""
    g = np.zeros(x.shape)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in (range(flat.size) if entries is None else entries):
        old = float(flat[i])        # a host copy: CuPy's flat[i] is a view that the next line changes
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


def host(a):
    """A float64 NumPy copy of a host or device array (the checks compare on the host)."""
    return np.array(B.to_numpy(a), dtype=np.float64)


def shape_of(a):
    """The shape of a host or device array, or of a nested list (numpy.shape would hand a device
    array to NumPy)."""
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def rel_err(got, want):
    """max |got - want| / max |want| (0 when both are 0)."""
    got, want = host(got), host(want)
    if got.size == 0:
        return 0.0
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


@dataclass
class Row:
    what: str                # "input", a parameter's name, "output" / "loss"
    shape: tuple
    checked: int = 0         # entries compared with finite differences
    fd_abs: float = None
    fd_rel: float = None
    torch_abs: float = None
    torch_rel: float = None
    problem: str = None      # why this gradient could not be compared: a failure
    note: str = None         # why it was not compared, and that is fine (an integer input)


@dataclass
class Report:
    title: str
    rows: list
    fresh: str               # the fresh-rule verdict ("ok", or what went wrong)
    torch_note: str          # "torch 2.13.0 autograd" or why torch was not compared
    tol: float = TOL
    torch_tol: float = TORCH_TOL

    @property
    def failures(self):
        out = [f"{r.what} ({r.problem})" for r in self.rows if r.problem]
        out += [f"{r.what} (finite differences: max rel {r.fd_rel:.1e} > {self.tol:g})"
               for r in self.rows if r.fd_rel is not None and not r.fd_rel <= self.tol]
        out += [f"{r.what} (torch: max rel {r.torch_rel:.1e} > {self.torch_tol:g})"
                for r in self.rows if r.torch_rel is not None and not r.torch_rel <= self.torch_tol]
        if self.fresh != "ok":
            out.append(f"the fresh rule ({self.fresh})")
        return out

    @property
    def ok(self):
        return not self.failures

    def text(self):
        def e(v):
            return "-" if v is None else f"{v:.1e}"
        lines = [self.title, f"  float64 on {B.name}; central differences (eps {EPS:g}); {self.torch_note}",
                 f"  {'gradient of':<16}{'shape':<16}{'entries':>12}  {'fd max abs':>10}  {'fd max rel':>10}"
                 f"  {'torch max abs':>13}  {'torch max rel':>13}"]
        for r in self.rows:
            n = math.prod(r.shape)
            checked = f"{r.checked}/{n}" if r.fd_rel is not None else "-"
            lines.append(f"  {r.what:<16}{str(tuple(r.shape)):<16}{checked:>12}  {e(r.fd_abs):>10}  {e(r.fd_rel):>10}"
                         f"  {e(r.torch_abs):>13}  {e(r.torch_rel):>13}"
                         + (f"  {r.problem or r.note}" if r.problem or r.note else ""))
        lines.append(f"  fresh rule (a backward after zero_grad overwrites, a second one adds): {self.fresh}")
        if self.ok:
            lines.append(f"ok: every gradient within tolerance (max rel {self.tol:g} against finite differences"
                         + (f", {self.torch_tol:g} against torch)" if any(r.torch_rel is not None for r in self.rows)
                            else ")"))
        else:
            lines.append("FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the checks

def _sample(rng, size, entries):
    if not entries or size <= entries:
        return None, size
    return np.sort(rng.choice(size, entries, replace=False)), entries


def _perturb(space, rng, noise):
    for p in space.plist:
        p.data += B.asarray(noise * rng.standard_normal(p.shape))


def _torch():
    try:
        return importlib.import_module("torch"), None
    except ImportError:
        return None, "torch not importable: finite differences only"


def _twin(target, torch, params):
    fn = getattr(target, "torch_twin", None)
    return None if fn is None else fn(torch, params)


def _fresh_rule(space, run, g0):
    """run() does forward + backward. Returns 'ok' or what the gradients did instead."""
    if not space.plist:
        return "ok"
    space.grads.fill(123.0)                 # what an earlier step left
    space.zero_grad()
    run()
    space.finish_grads()
    if rel_err(space.grads, g0) > 1e-12:
        return "a backward after zero_grad() did not overwrite the stale gradient (write it with Param.acc*)"
    run()                                   # a second micro-batch: adds
    space.finish_grads()
    if rel_err(space.grads, 2 * g0) > 1e-12:
        return "a second backward without zero_grad() did not add to the gradient (write it with Param.acc*)"
    return "ok"


def check_layer(layer, space, x, *, seed=0, entries=ENTRIES, noise=0.1, use_torch=True, title=None):
    """Check `layer` (its parameters declared in `space`, float64, built here) on input x, on the
    active array module (backend.xp: the device where CuPy is in use); compared on the host."""
    rng = np.random.default_rng(seed)
    if space.params is None:
        space.build(seed)
    _perturb(space, rng, noise)
    x = B.asarray(x)
    floating = x.dtype.kind == "f"
    if floating:
        x = x.astype(np.float64)
    y0 = host(layer.forward(x.copy()))
    R = rng.standard_normal(y0.shape)                     # f = sum(y * R): dy = R
    R_dev = B.asarray(R)

    def f():
        return (layer.forward(x.copy()) * R_dev).sum()

    def run():
        layer.forward(x.copy())
        return layer.backward(R_dev.copy())

    space.grads.fill(0)
    space.zero_grad()
    dx = run()
    space.finish_grads()
    rows = []
    if not floating:
        rows.append(Row("input", tuple(x.shape), note=f"not checked: {x.dtype} input has no gradient"))
        dx = None
    elif dx is None and getattr(layer, "need_dx", True) is False:    # a first layer: no input gradient wanted
        rows.append(Row("input", tuple(x.shape), note="not computed: the layer was built with need_dx=False"))
    elif dx is None:
        rows.append(Row("input", tuple(x.shape), problem="backward returned None; expected the input's gradient, "
                        f"shape {tuple(x.shape)} (return dx)"))
    elif tuple(getattr(dx, "shape", ())) != tuple(x.shape):
        rows.append(Row("input", tuple(x.shape), problem=f"backward returned {_describe(dx)}; expected the "
                        f"input's gradient, shape {tuple(x.shape)}"))
        dx = None
    else:
        dx = host(dx)
    g0 = host(space.grads)
    grads = {p.name: g0[p.offset:p.offset + p.size].reshape(p.shape) for p in space.plist}
    if dx is not None:
        idx, n = _sample(rng, x.size, entries)
        num = numgrad(f, x, entries=idx)
        rows.append(_fd_row("input", dx, num, idx, n))
    for p in space.plist:
        idx, n = _sample(rng, p.size, entries)
        num = numgrad(f, p.data, entries=idx)
        rows.append(_fd_row(p.name, grads[p.name], num, idx, n))
    fresh = _fresh_rule(space, run, g0)
    torch, note = _torch() if use_torch else (None, "torch not asked for")
    if torch is not None:
        note = _compare_layer(torch, layer, space, x, R, y0, dx, grads, rows)
    return Report(title or f"gradcheck {type(layer).__name__}: input {tuple(x.shape)}", rows, fresh, note)


def check_model(model, x, t, *, seed=0, entries=ENTRIES, noise=0.1, use_torch=True, title=None):
    """Check a model's loss/backward on batch (x, t); its space is float64 and built. Runs on the
    active array module (see check_layer)."""
    rng = np.random.default_rng(seed)
    space = model.space
    _perturb(space, rng, noise)
    x, t = B.asarray(x), B.asarray(t)
    scale = 1.0 / max(1, t.size)

    def f():
        return float(model.loss(x, t, scale)[0])

    def run():
        model.loss(x, t, scale)
        model.backward()

    loss0 = f()
    space.grads.fill(0)
    space.zero_grad()
    run()
    space.finish_grads()
    g0 = host(space.grads)
    rows = []
    for p in space.plist:
        idx, n = _sample(rng, p.size, entries)
        num = numgrad(f, p.data, entries=idx)
        rows.append(_fd_row(p.name, g0[p.offset:p.offset + p.size].reshape(p.shape), num, idx, n))
    fresh = _fresh_rule(space, run, g0)
    torch, note = _torch() if use_torch else (None, "torch not asked for")
    if torch is not None:
        note = _compare_model(torch, model, x, t, scale, loss0, g0, rows)
    return Report(title or f"gradcheck {type(model).__name__}: batch {shape_of(x)}", rows, fresh, note)


def _describe(a):
    shape = getattr(a, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else f"a {type(a).__name__}"


def _fd_row(what, got, num, idx, n):
    shape = tuple(np.shape(got))
    got, num = host(got).reshape(-1), num.reshape(-1)
    if idx is not None:
        got, num = got[idx], num[idx]
    return Row(what, shape, n, float(np.abs(got - num).max(initial=0.0)), rel_err(got, num))


def _torch_params(torch, space):
    return {p.name: torch.tensor(host(p.data), requires_grad=True) for p in space.plist}


def _compare_layer(torch, layer, space, x, R, y0, dx, grads, rows):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = _torch_params(torch, space)
        twin = _twin(layer, torch, params)
        if twin is None:
            return f"torch {torch.__version__}: no torch_twin, not compared"
        xt = torch.tensor(B.to_numpy(x), requires_grad=dx is not None)
        yt = twin(xt)
        (yt * torch.tensor(R)).sum().backward()
        _torch_row(rows, "input", dx, xt.grad)
        for p in space.plist:
            _torch_row(rows, p.name, grads[p.name], params[p.name].grad)
        out = Row("output", tuple(y0.shape))
        out.torch_abs, out.torch_rel = _errs(y0, yt.detach().numpy())
        rows.append(out)
    finally:
        torch.set_default_dtype(old)
    return f"torch {torch.__version__} autograd"


def _compare_model(torch, model, x, t, scale, loss0, g0, rows):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = _torch_params(torch, model.space)
        twin = _twin(model, torch, params)
        if twin is None:
            return f"torch {torch.__version__}: no torch_twin, not compared"
        lt = twin(torch.tensor(B.to_numpy(x)), torch.tensor(B.to_numpy(t)), scale)
        lt.backward()
        for p in model.space.plist:
            _torch_row(rows, p.name, g0[p.offset:p.offset + p.size], params[p.name].grad)
        out = Row("loss", ())
        out.torch_abs, out.torch_rel = _errs(np.array(loss0), lt.detach().numpy())
        rows.append(out)
    finally:
        torch.set_default_dtype(old)
    return f"torch {torch.__version__} autograd"


def _errs(got, want):
    got, want = host(got), host(want)
    if got.shape != want.shape:
        return math.inf, math.inf
    return float(np.abs(got - want).max(initial=0.0)), rel_err(got, want)


def _torch_row(rows, what, ours, theirs):
    row = next((r for r in rows if r.what == what), None)
    if row is None or row.problem or row.note:
        return
    if theirs is None:                   # torch's graph does not reach it: its gradient is zero
        row.torch_abs, row.torch_rel = _errs(ours, np.zeros(np.shape(ours)))
        row.torch_rel = 0.0 if row.torch_abs == 0 else math.inf
        return
    row.torch_abs, row.torch_rel = _errs(np.reshape(ours, tuple(theirs.shape)), theirs.detach().numpy())
