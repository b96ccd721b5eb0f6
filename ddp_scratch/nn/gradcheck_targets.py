"""What `launch.py gradcheck TARGET` checks: a built-in by name (BUILTINS: its small instance,
input and torch twin are written here, so the classes stay as they are), or a plug-in
(`mypkg.layers:MyLayer`, `path/to/file.py:MyModel`) through its own hooks, gradcheck_inputs and
torch_twin (see gradcheck.py and docs/extending.md)."""
import difflib
import inspect

import numpy as np

from ..errors import UserError
from .flat import ParamSpace
from .gradcheck import ENTRIES, check_layer, check_model, shape_of

DOC = "see docs/extending.md"


def _linear(space, rng):
    from .layers import Linear
    return Linear(space, "fc", 5, 4, init="xavier"), rng.standard_normal((6, 5))


def _linear_twin(layer, torch, params):
    return lambda x: x @ params[layer.W.name] + params[layer.b.name]


def _activation(kind):
    def make(space, rng):
        from .layers import Activation
        x = rng.standard_normal((5, 4)) * 2
        return Activation(kind, space.dtype), x
    return make


def _activation_twin(layer, torch, params):
    F = torch.nn.functional
    return {"relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.01), "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "elu": F.elu, "gelu": lambda x: F.gelu(x, approximate="tanh")}[layer.kind]


def _mlp(rng):
    from .mlp import MLP
    m = MLP(6, 3, [5, 4], "tanh", dtype="float64", seed=0)
    return m, rng.standard_normal((4, 6)), rng.integers(0, 3, 4)


def _mlp_twin(model, torch, params):
    F = torch.nn.functional
    linears = [layer for layer in model.layers if hasattr(layer, "W")]

    def f(x, t, scale):
        for i, layer in enumerate(linears):
            x = x @ params[layer.W.name] + params[layer.b.name]
            if i < len(linears) - 1:
                x = torch.tanh(x)
        return F.cross_entropy(x, t, reduction="sum") * scale
    return f


def _gpt(rng):
    from .gpt import GPT
    m = GPT(7, block_size=5, n_layer=2, n_head=2, d_model=8, dtype="float64", seed=0)
    x = rng.integers(0, 7, (2, 5))
    return m, x, rng.integers(0, 7, (2, 5))


def _conv_class(name):
    def get():
        from . import conv
        return getattr(conv, name)
    return get


# name -> (kind, make, torch twin or None, what it is)
BUILTINS = {
    "linear": ("layer", _linear, _linear_twin, "nn.layers.Linear 5 -> 4"),
    **{a: ("layer", _activation(a), _activation_twin, f"nn.layers.Activation {a}")
       for a in ("relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu")},
    "conv2d": ("class", _conv_class("Conv2d"), None, "nn.conv.Conv2d"),
    "maxpool2d": ("class", _conv_class("MaxPool2d"), None, "nn.conv.MaxPool2d"),
    "flatten": ("class", _conv_class("Flatten"), None, "nn.conv.Flatten"),
    "mlp": ("model", _mlp, _mlp_twin, "nn.mlp.MLP 6-5-4-3 tanh, cross-entropy"),
    "gpt": ("model", _gpt, None, "nn.gpt.GPT 2 layers x 2 heads, d_model 8, context 5, vocabulary 7"),
}


class _Twin:
    """A built-in's torch twin attached without touching its class."""

    def __init__(self, target, fn):
        self.target, self.fn = target, fn

    def __call__(self, torch, params):
        return self.fn(self.target, torch, params)


def check_target(name, *, seed=0, entries=ENTRIES, use_torch=True):
    """Check a built-in (BUILTINS) or a plug-in (`mypkg.layers:MyLayer`, `file.py:MyModel`)."""
    rng = np.random.default_rng(seed)
    if name in BUILTINS:
        kind, make, twin, what = BUILTINS[name]
        if kind == "class":
            return _check_class(make(), name, what, rng, seed, entries, use_torch)
        if kind == "layer":
            space = ParamSpace("float64")
            layer, x = make(space, rng)
            if twin is not None:
                layer.torch_twin = _Twin(layer, twin)
            return check_layer(layer, space, x, seed=seed, entries=entries, use_torch=use_torch,
                               title=f"gradcheck {name} ({what}): input {shape_of(x)}")
        model, x, t = make(rng)
        if twin is not None:
            model.torch_twin = _Twin(model, twin)
        return check_model(model, x, t, seed=seed, entries=entries, use_torch=use_torch,
                           title=f"gradcheck {name} ({what}): batch {shape_of(x)}")
    if ":" not in name and name.endswith(".py"):
        raise UserError(f"gradcheck: {name} names a file but not the class in it: expected {name}:ClassName")
    if ":" not in name:
        raise UserError(f"gradcheck: {name!r} is neither a built-in ({', '.join(BUILTINS)}) nor a plug-in "
                        "(module:Class or path/to/file.py:Class)" + _suggest(name))
    from .plugins import load
    return _check_class(load(name, "gradcheck"), name, name, rng, seed, entries, use_torch)


def _suggest(name):
    close = difflib.get_close_matches(name, list(BUILTINS), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_class(cls, name, what, rng, seed, entries, use_torch):
    if not inspect.isclass(cls):
        kind = type(cls).__name__
        raise UserError(f"gradcheck: {name} is {'an' if kind[:1] in 'aeiou' else 'a'} {kind}, expected a class "
                        "(a layer or a model)")
    is_model = callable(getattr(cls, "loss", None)) and callable(getattr(cls, "backward", None))
    is_layer = callable(getattr(cls, "forward", None)) and callable(getattr(cls, "backward", None))
    if not (is_model or is_layer):
        raise UserError(f"gradcheck: {name} is neither a layer (forward(x), backward(dy)) nor a model "
                        f"(loss(x, t, scale), backward()) ({DOC})")
    hook = getattr(cls, "gradcheck_inputs", None)
    if not callable(hook):
        form = "gradcheck_inputs(rng) -> (model, x, t)" if is_model else "gradcheck_inputs(space, rng) -> (layer, x)"
        raise UserError(f"gradcheck: {name} has no classmethod {form}, which says how to make a small instance "
                        f"and its input ({DOC})")
    if is_model:
        made = hook(rng)
        if not (isinstance(made, tuple) and len(made) == 3):
            raise UserError(f"gradcheck: {name}.gradcheck_inputs(rng) must return (model, x, t), got {_kind(made)}")
        model, x, t = made
        if getattr(model, "space", None) is None or model.space.params is None:
            raise UserError(f"gradcheck: {name}.gradcheck_inputs(rng) returned a model without a built space")
        if model.space.dtype != "float64":
            raise UserError(f"gradcheck: {name}.gradcheck_inputs(rng) must build the model in float64 "
                            f"(dtype='float64'), got {model.space.dtype}")
        return check_model(model, x, t, seed=seed, entries=entries, use_torch=use_torch,
                           title=f"gradcheck {name}: batch {shape_of(x)}")
    space = ParamSpace("float64")
    made = hook(space, rng)
    if not (isinstance(made, tuple) and len(made) == 2):
        raise UserError(f"gradcheck: {name}.gradcheck_inputs(space, rng) must return (layer, x), got {_kind(made)}")
    layer, x = made
    return check_layer(layer, space, x, seed=seed, entries=entries, use_torch=use_torch,
                       title=f"gradcheck {name}: input {shape_of(x)}")


def _kind(v):
    return f"a tuple of {len(v)}" if isinstance(v, tuple) else type(v).__name__
