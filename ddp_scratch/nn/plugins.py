"""Plug-ins: a user's model, optimizer or layer, named in a config (`model.name`, `optim.name`) or
on the command line (`launch.py gradcheck`) without editing ddp_scratch:

  mypkg.models:ResMLP        a module on the Python path (the current directory is on it, as
                             with `python -m`), then an attribute of it (dotted: Outer.Inner)
  path/to/file.py:ResMLP     a Python file, relative to the current directory; its folder is put
                             on the path (at the end), so it may import the files beside it

Each is imported once per process and checked against the interface the trainer uses before it
is used; whatever is missing is said in one line (ConfigError). The contract is written out in
docs/extending.md; the options a plug-in declares (its `Options` dataclass) are read by the
config's own reader (config.read_options).
"""
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback

from ..config import PLUGIN_FORM, plugin_ref, read_options
from ..errors import ConfigError, UserError
from .flat import ParamSpace

DOC = "see docs/extending.md"
MODEL_METHODS = {"loss": "loss(x, t, scale)", "backward": "backward()", "predict": "predict(x)",
                 "flops_per_step": "flops_per_step(n)", "activation_bytes": "activation_bytes(rows)"}
MODEL_ARGS = "(d_in=, n_out=, options=, dtype=, seed=, build=)"
OPTIMIZER_METHODS = {"step": "step(lr)", "state_dict": "state_dict()", "load_state_dict": "load_state_dict(d)"}
OPTIMIZER_ARGS = "(space, lr=, weight_decay=, maximize=, options=)"
LAYER_METHODS = {"forward": "forward(x)", "backward": "backward(dy)"}

_loaded = {}


def is_plugin(name):
    return ":" in name


def load(ref, what):
    """The object `ref` names. `what` says where the name came from (model.name, optim.name,
    gradcheck) in every message."""
    if ref in _loaded:
        return _loaded[ref]
    parsed = plugin_ref(ref)
    if parsed is None:
        raise ConfigError(f"{what}: {ref!r} is not a plug-in reference: expected {PLUGIN_FORM}")
    where, attr = parsed
    module = _import(where, what)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_")
                             and getattr(v, "__module__", None) == module.__name__)
            raise ConfigError(f"{what}: {where} has no attribute {attr!r}"
                              + (f" (it defines {', '.join(defined)})" if defined else " (it defines no class)"))
        obj = getattr(obj, part)
    _loaded[ref] = obj
    return obj


def _is_file(where):
    return where.endswith(".py") or "/" in where or os.sep in where


def _import(where, what):
    if _is_file(where):
        path = os.path.abspath(os.path.expanduser(where))
        if not os.path.isfile(path):
            raise ConfigError(f"{what}: {where} not found (a file is taken relative to the current "
                              f"directory, {os.getcwd()})")
        for mod in list(sys.modules.values()):        # imported already (a model file imports a layer file)
            if getattr(mod, "__file__", None) and os.path.abspath(mod.__file__) == path:
                return mod
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.append(folder)
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"ddp_plugin_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None:
            raise ConfigError(f"{what}: {where} is not a Python file (expected path/to/file.py:Attr)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module             # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except UserError:
            raise
        except BaseException as e:             # noqa: B036 - a plug-in may sys.exit() on import
            sys.modules.pop(name, None)
            raise ConfigError(f"{what}: importing {where} failed: {_where_failed(e, {path: where})}") from None
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(where)
    except UserError:
        raise
    except ModuleNotFoundError as e:
        if e.name and (where == e.name or where.startswith(e.name + ".")):
            raise ConfigError(f"{what}: no module named {e.name!r} (a module is looked up on the Python path and in "
                              f"the current directory, {os.getcwd()}; a file is written path/to/file.py:Attr)") from None
        raise ConfigError(f"{what}: importing {where} failed: {_where_failed(e)}") from None
    except BaseException as e:                 # noqa: B036
        raise ConfigError(f"{what}: importing {where} failed: {_where_failed(e)}") from None


def _where_failed(e, given=None):
    """'NameError: name 'x' is not defined (layers.py, line 12)': the error and the plug-in's line.
    The file is named as the user gave it (`given`: {absolute path: as given}), any other file by
    its absolute path: a path relative to the current directory misleads once the run starts
    elsewhere (../../home/...), and the user may not know where a module of theirs was found."""
    def name(filename):
        full = os.path.abspath(filename)
        return (given or {}).get(full, full)
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({name(e.filename) if e.filename else '?'}, line {e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    at = f" ({name(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}{at}"


def _a(word):
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _missing(cls, methods):
    return [sig for name, sig in methods.items() if not callable(getattr(cls, name, None))]


def _class(ref, what, kind, methods):
    cls = load(ref, what)
    if not inspect.isclass(cls):
        raise ConfigError(f"{what}: {ref} is {_a(type(cls).__name__)}, expected a class (the {kind})")
    missing = _missing(cls, methods)
    if missing:
        raise ConfigError(f"{what}: {ref} is not {_a(kind)}: it lacks "
                          f"{', '.join(missing)} ({DOC})")
    return cls


def _call(cls, args, kwargs, what, ref, form):
    """cls(*args, **kwargs), refusing in one line a constructor that does not take the contract's
    arguments (checked on the signature, so a TypeError inside the constructor stays a bug)."""
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{what}: {ref} is called as {ref.rpartition(':')[2]}{form}, but {e} ({DOC})") from None
    except ValueError:           # no signature to read (a builtin): just call it
        pass
    return cls(*args, **kwargs)


# ----------------------------------------------------------------------------- models

def model_class(ref, what="model.name"):
    return _class(ref, what, "model", MODEL_METHODS)


def build_model(ref, section, d_in, n_out, dtype, seed, build=True):
    """A plug-in model from config section `section` (cfg.model); build=False declares its
    parameters and allocates nothing (the memory check before a run)."""
    cls = model_class(ref)
    opts = read_options(getattr(cls, "Options", None), section, "model", ref)
    model = _call(cls, (), dict(d_in=d_in, n_out=n_out, options=opts, dtype=dtype, seed=seed, build=build),
                  "model.name", ref, MODEL_ARGS)
    check_model(model, ref, build)
    return model


def check_model(model, ref, build, what="model.name"):
    space = getattr(model, "space", None)
    if not isinstance(space, ParamSpace):
        raise ConfigError(f"{what}: {ref} has no `space` (the ParamSpace its layers declare their parameters "
                          f"in; {DOC})")
    if not space.plist:
        raise ConfigError(f"{what}: {ref} declares no parameters in its space")
    if build and space.params is None:
        raise ConfigError(f"{what}: {ref} did not allocate its parameters: call self.space.build(seed) when "
                          "build is true")
    if not build and space.params is not None:
        raise ConfigError(f"{what}: {ref} allocated its parameters although build=False (the memory check "
                          "declares a model that way before anything is allocated)")


# ----------------------------------------------------------------------------- optimizers

def optimizer_class(ref, what="optim.name"):
    cls = _class(ref, what, "optimizer", OPTIMIZER_METHODS)
    names = getattr(cls, "state_names", None)
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{what}: {ref} lacks state_names, the class's tuple of names of its state arrays "
                          f"(() when it keeps none; {DOC})")
    return cls


def build_optimizer(ref, section, space):
    """A plug-in optimizer from config section `section` (cfg.optim) on the flat buffers of `space`."""
    cls = optimizer_class(ref)
    opts = read_options(getattr(cls, "Options", None), section, "optim", ref)
    opt = _call(cls, (space,), dict(lr=section.lr, weight_decay=section.weight_decay, maximize=section.maximize,
                                    options=opts), "optim.name", ref, OPTIMIZER_ARGS)
    state = opt.state_dict()
    for name in opt.state_names:
        a = state.get(name)
        if getattr(a, "shape", None) != space.params.shape:
            raise ConfigError(f"optim.name: {ref}.state_dict()[{name!r}] is {getattr(a, 'shape', a)!r}, expected a "
                              f"flat array the size of the parameter buffer {space.params.shape} (checkpoints "
                              f"store it so)")
    if not isinstance(state.get("t"), int):
        raise ConfigError(f"optim.name: {ref}.state_dict() lacks 't', the step count (an int)")
    return opt


def optimizer_state_arrays(ref):
    """Parameter-sized arrays the optimizer keeps (the memory estimate)."""
    return len(optimizer_class(ref).state_names)


# ----------------------------------------------------------------------------- layers

def layer_class(ref, what="gradcheck"):
    return _class(ref, what, "layer", LAYER_METHODS)


def check_plugins(cfg):
    """What a launcher can check of the config's plug-ins before any rank starts: they import,
    have the interface, and their options read. (Building needs the data's shapes: ranks do it.)"""
    if is_plugin(cfg.model.name):
        read_options(getattr(model_class(cfg.model.name), "Options", None), cfg.model, "model", cfg.model.name)
    if is_plugin(cfg.optim.name):
        read_options(getattr(optimizer_class(cfg.optim.name), "Options", None), cfg.optim, "optim", cfg.optim.name)
