"""Typed, defaulted configuration: YAML file + `--set section.key=value` overrides.

Every field is declared once below with its type and constraints; unknown keys get a
closest-match suggestion, wrong types a message naming the field, the expected type and the line.
A plug-in model or optimizer (`model.name: mypkg.models:ResMLP`) declares its own keys as an
`Options` dataclass (fields made with `F`); `model.options` / `optim.options` are kept as written
until the plug-in is imported, then read by the same rules (`read_options`).

Size: a little over 400 lines because the schema (every key, its type, range and default) and
the reader that converts YAML text by that schema are one contract; apart, they would drift.
"""
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
import difflib
import hashlib
import json
import os
import typing

from .errors import ConfigError


def F(default, *, choices=None, min=None, gt=None, max=None, lt=None, help="", plugin=False):  # noqa: A002 - reads like the YAML
    """A config key: its default and constraints. Plug-ins declare their `Options` with it too.
    plugin=True: besides `choices`, a plug-in reference `module:Attr` or `path/file.py:Attr`."""
    meta = {"choices": choices, "min": min, "gt": gt, "max": max, "lt": lt, "help": help, "plugin": plugin}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu"]


@dataclass
class ModelConfig:
    name: str = F("mlp", choices=["mlp", "gpt"], plugin=True)
    options: dict = F({}, help="a plug-in model's own keys, checked against its Options dataclass")
    hidden: list[int] = F([128], min=1, help="MLP hidden widths")
    activation: str = F("relu", choices=ACTIVATIONS)
    init: str = F("auto", choices=["auto", "he", "xavier"])
    n_layer: int = F(4, min=1, help="GPT blocks")
    n_head: int = F(4, min=1)
    d_model: int = F(128, min=1)
    block_size: int = F(64, min=1, help="GPT context length")
    dropout: float = F(0.0, min=0.0, lt=1.0, help="probability of zeroing an activation")
    bias: bool = F(True)


@dataclass
class DataConfig:
    name: str = F("digits", choices=["digits", "mnist", "synthetic", "text", "addition"])
    path: str = F("", help="folder of IDX files (mnist) or a UTF-8 text file (text)")
    val_fraction: float = F(0.1, min=0.0, lt=1.0)
    test_fraction: float = F(0.2, min=0.0, lt=1.0, help="digits/synthetic/addition; MNIST has its own test set")
    tail: str = F("drop", choices=["drop", "pad"], help="last partial global batch of an epoch")
    normalize: bool = F(True)
    seed: int = F(1234, min=0, help="seed of splits and synthetic data")
    n_samples: int = F(8192, gt=0, help="synthetic")
    n_features: int = F(784, gt=0, help="synthetic")
    n_classes: int = F(10, gt=1, max=1 << 20, help="synthetic and mnist (labels must lie in [0, n_classes))")
    digits: int = F(2, min=1, max=9, help="addition task: digits per operand")


@dataclass
class TrainConfig:
    batch_size: int = F(64, gt=0, help="GLOBAL batch, split across ranks")
    epochs: int = F(10, min=0)
    max_steps: int = F(0, min=0, help="0 = no limit")
    seed: int = F(0, min=0)
    dtype: str = F("float32", choices=["float32", "float64"])
    loss: str = F("xent", choices=["xent", "mse"])
    grad_clip: float = F(0.0, min=0.0, help="clip by global norm after the all-reduce; 0 = off")
    log_every: int = F(10, gt=0)
    eval_every: int = F(0, min=0, help="steps between validation passes; 0 = once per epoch")
    eval_batch: int = F(1024, gt=0)
    checkpoint_every: int = F(0, min=0, help="steps; 0 = only at the end")
    threads: int = F(0, min=0, help="BLAS threads per rank; 0 = cores / ranks on this node")
    nonfinite: str = F("abort", choices=["abort", "skip"])
    max_skips: int = F(5, gt=0, help="consecutive skipped steps before aborting")
    check_every: int = F(100, min=0, help="steps between cross-rank parameter checksums; 0 = off")
    steps_per_epoch: int = F(0, min=0, help="GPT tasks: steps counted as one epoch; 0 = auto")
    timing_skip: int = F(5, min=0, help="warm-up steps left out of the timing statistics")


@dataclass
class OptimConfig:
    name: str = F("sgd", choices=["sgd", "adam", "adamw", "rmsprop"], plugin=True)
    options: dict = F({}, help="a plug-in optimizer's own keys, checked against its Options dataclass")
    lr: float = F(0.1, gt=0.0)
    momentum: float = F(0.0, min=0.0, max=1.0)
    nesterov: bool = F(False)
    weight_decay: float = F(0.0, min=0.0)
    betas: list[float] = F([0.9, 0.999], min=0.0, lt=1.0)
    eps: float = F(1e-8, gt=0.0)
    amsgrad: bool = F(False)
    maximize: bool = F(False)
    alpha: float = F(0.99, min=0.0, lt=1.0, help="RMSProp smoothing")
    centered: bool = F(False)
    schedule: str = F("constant", choices=["constant", "step", "cosine"])
    warmup_steps: int = F(0, min=0)
    step_size: int = F(1000, gt=0)
    gamma: float = F(0.1, gt=0.0)
    min_lr: float = F(0.0, min=0.0)
    decay_steps: int = F(0, min=0, help="cosine length; 0 = the whole run")
    zero: int = F(0, min=0, max=1, help="ZeRO stage: 1 shards the optimizer state across ranks")


@dataclass
class CommConfig:
    backend: str = F("mpi", choices=["mpi", "nccl"])
    timeout_s: float = F(300.0, gt=0.0, help="watchdog around collectives")
    bucket_mb: float = F(25.0, gt=0.0)
    first_bucket_mb: float = F(1.0, gt=0.0)
    overlap: bool = F(False, help="non-blocking bucketed all-reduce during backward")
    accumulate: int = F(1, gt=0, help="micro-steps per optimizer step, no communication between")
    algorithm: str = F("mpi", choices=["mpi", "ring"], help="gradient all-reduce: MPI_Allreduce, or the hand-written ring")
    compress: str = F("none", choices=["none", "fp16", "bf16"], help="gradients on the wire in 16 bits (ring only)")
    error_feedback: bool = F(False, help="add what 16-bit rounding lost to the next step's gradients")


@dataclass
class LoggingConfig:
    wandb: bool = F(False)
    wandb_project: str = F("ddp_scratch")
    wandb_mode: str = F("offline", choices=["offline", "online", "disabled"])
    progress: bool = F(True)
    trace: bool = F(False, help="per-rank timeline of every step's phases in OUT/trace.json (Chrome trace)")


@dataclass
class Config:
    backend: str = F("numpy", choices=["numpy", "cupy"])
    kernels: str = F("auto", choices=["auto", "numba", "numpy"],
                     help="CPU elementwise work (optimizer, activations, softmax, LayerNorm): auto = fused numba "
                          "kernels for arrays of 32768+ elements where numba works, else NumPy; numba = the kernels "
                          "at every size (refused without numba, or with backend: cupy); numpy = never. One "
                          "numba thread per rank; the first run on a machine compiles them (~10-20 s, cached)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self):
        return asdict(self)

    def fingerprint(self, sections=("model", "data", "optim")) -> dict:
        """What a checkpoint must agree on to be resumed (run length may change)."""
        d = self.to_dict()
        keep = {s: d[s] for s in sections}
        for s in ("model", "optim"):      # no options: as before plug-ins (older checkpoints resume)
            if s in keep and not keep[s].get("options"):
                keep[s].pop("options", None)
        if "optim" in keep:     # ZeRO-1 changes where the state lives, not the run: a resume may toggle it
            keep["optim"].pop("zero", None)
        keep["train"] = {k: d["train"][k] for k in ("batch_size", "seed", "dtype", "loss")}
        return keep


def config_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading
#
# YAML is read as a tree of nodes (yaml.compose: nothing is constructed, so no tag can run code)
# and every scalar is converted by the type its key declares, from the text as written. So
# `lr: 1e-3` is a number (PyYAML's YAML 1.1 resolver would make it a string), `batch_size: 1e3`
# is the integer 1000, `path: 2024` is the string "2024", and a key given twice is an error
# instead of the last one silently winning.

NULLS = ("", "~", "null", "Null", "NULL")
TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")
INT64_MAX = 2**63 - 1


class Scalar:
    """A YAML scalar as written, with where it came from (for messages)."""
    __slots__ = ("text", "plain", "where")

    def __init__(self, text, plain, where):
        self.text, self.plain, self.where = text, plain, where

    @property
    def null(self):
        return self.plain and self.text in NULLS

    def __repr__(self):
        return "nothing (null)" if self.null else repr(self.text)


class Mapping(dict):
    """A YAML mapping: str keys in order, and where each key was written."""

    def __init__(self, where):
        super().__init__()
        self.where, self.key_where = where, {}


class Sequence(list):
    def __init__(self, items, where):
        super().__init__(items)
        self.where = where


def _fail(where, msg):
    raise ConfigError(f"{where}: {msg}" if where else msg)


def _tree(node, source):
    """yaml node -> Mapping / Sequence / Scalar, refusing duplicate keys."""
    import yaml
    where = f"{source}, line {node.start_mark.line + 1}" if source.startswith("config file") else source
    if isinstance(node, yaml.ScalarNode):
        return Scalar(node.value, node.style is None, where)
    if isinstance(node, yaml.SequenceNode):
        return Sequence([_tree(n, source) for n in node.value], where)
    out = Mapping(where)
    for knode, vnode in node.value:
        kwhere = f"{source}, line {knode.start_mark.line + 1}" if source.startswith("config file") else source
        if knode.tag == "tag:yaml.org,2002:merge":          # `<<: *defaults`
            merged = _tree(vnode, source)
            for m in (merged if isinstance(merged, list) else [merged]):
                if not isinstance(m, Mapping):
                    _fail(kwhere, "'<<' merges a mapping, got something else")
                for k, v in m.items():
                    if k not in out:
                        out[k], out.key_where[k] = v, "merged"   # keys written here override
            continue
        if not isinstance(knode, yaml.ScalarNode):
            _fail(kwhere, "a key must be a plain name, got a list or mapping")
        key = knode.value
        if key in out and out.key_where[key] != "merged":
            _fail(kwhere, f"key {key!r} appears twice in the same section (the second would silently win)")
        out[key], out.key_where[key] = _tree(vnode, source), kwhere
    return out


def _compose(text, source):
    import yaml
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise ConfigError(f"{source} is not valid YAML{at}" + (f" ({problem})" if problem else "")) from None
    except (ValueError, RecursionError) as e:     # e.g. NUL bytes the reader refuses
        raise ConfigError(f"{source} is not valid YAML ({type(e).__name__})") from None
    return None if node is None else _tree(node, source)


def describe_keys(section=None):
    """Every key as lines `section.key  type  default  allowed  what it does` (`launch.py keys`)."""
    import typing
    rows, top = [], Config()
    for f in fields(Config):
        sub = getattr(top, f.name)
        owner, items = (sub, fields(sub)) if is_dataclass(sub) else (top, [f])
        if section not in (None, f.name):
            continue
        for k in items:
            tp = typing.get_type_hints(type(owner))[k.name]
            m = k.metadata
            allowed = ", ".join(map(str, m["choices"])) if m.get("choices") else ""
            allowed += " or a plug-in module:Class / file.py:Class" if m.get("plugin") else ""
            bounds = [f"{op} {m[key]:g}" for key, op in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
                      if m.get(key) is not None]
            allowed = allowed or ", ".join(bounds)
            default = getattr(owner, k.name)
            shown = str(default).lower() if isinstance(default, bool) else (default if default != "" else '""')
            name = k.name if owner is top else f"{f.name}.{k.name}"
            kind = getattr(tp, "__name__", str(tp)).replace("typing.", "")
            rows.append((name, kind, str(shown), allowed, m.get("help", "")))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return [(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" + (f"  ({r[4]})" if r[4] else "")).rstrip()
            for r in rows]


def _typename(tp):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _number(text):
    """float of a numeral as people write it (1e-3, 3E+4, .5, 1_000, YAML's .inf), or None."""
    t = text.strip().lower()
    if t.lstrip("+-") in (".inf", ".nan"):
        t = t.replace(".", "", 1)
    try:
        return float(t)
    except ValueError:
        return None


def _from_text(v: Scalar, tp, path):
    """A scalar's text as the declared type (str, bool, int, float)."""
    if tp is str:
        return "" if v.null else v.text
    if v.null:
        _fail(v.where, f"{path}: expected {'true or false' if tp is bool else 'an integer' if tp is int else 'a number'}, got nothing (null)")
    if tp is bool:
        low = v.text.strip().lower()
        if low in TRUE or low in FALSE:
            return low in TRUE
        _fail(v.where, f"{path}: expected true or false, got {v!r}")
    if tp is int:
        t = v.text.strip()
        try:
            return int(t, 10)
        except ValueError:
            pass
        x = _number(t)
        if x is None:
            _fail(v.where, f"{path}: expected an integer, got {v!r}")
        if x != x or x in (float("inf"), float("-inf")) or x != int(x):
            _fail(v.where, f"{path}: expected an integer, got {v!r} (not a whole number)")
        return int(x)
    x = _number(v.text)
    if x is None:
        _fail(v.where, f"{path}: expected a number, got {v!r}")
    return x


def _list_example(item, default=None):
    """A list to show in a message: the key's own default where it has one."""
    if default:
        return "[" + ", ".join(str(v) for v in default) + "]"
    return {int: "[64, 32]", float: "[0.9, 0.999]", str: "[a, b]"}.get(item, "[...]")


def _coerce(value, tp, path, meta, where="", default=None):
    where = getattr(value, "where", where)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            _fail(where, f"{path}: expected a list like {_list_example(item, default)}, got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]", meta, where) for i, v in enumerate(value)]
    if isinstance(value, dict):
        _fail(where, f"{path}: expected {_typename(tp)}, got a mapping of keys ({path} is a value, not a section)")
    if isinstance(value, list):
        _fail(where, f"{path}: expected {_typename(tp)}, got a list")
    if isinstance(value, Scalar):
        value = _from_text(value, tp, path)
    elif tp is bool:                         # values from a checkpoint's config: already typed
        if not isinstance(value, bool):
            _fail(where, f"{path}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, float) and value == value and abs(value) != float("inf") and value == int(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"{path}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"{path}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str and not isinstance(value, str):
        _fail(where, f"{path}: expected a string, got {value!r}")
    if tp is float and (value != value or value in (float("inf"), float("-inf"))):
        _fail(where, f"{path}: expected a finite number, got {value!r}")
    if tp is int and abs(value) > INT64_MAX:
        _fail(where, f"{path}: {value} is too large (at most {INT64_MAX})")
    if meta.get("plugin") and ":" in value:
        if plugin_ref(value) is None:
            _fail(where, f"{path}: {value!r} is not a plug-in reference: expected {PLUGIN_FORM}")
    elif meta.get("choices") and value not in meta["choices"]:
        _fail(where, f"{path}: expected one of {', '.join(meta['choices'])}"
              + (f", or {PLUGIN_FORM}" if meta.get("plugin") else "") + f", got {value!r}"
              + _suggest(str(value), meta["choices"]))
    for key, ok, word in (("min", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                          ("max", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if meta.get(key) is not None and not ok(value, meta[key]):
            _fail(where, f"{path}: expected a value {word} {meta[key]}, got {value!r}")
    return value


PLUGIN_FORM = "a plug-in as module:Attr or path/to/file.py:Attr"


def plugin_ref(value):
    """('mypkg.models' or 'dir/file.py', 'ResMLP') of a plug-in reference, or None when `value`
    is not one (no colon, nothing before it, or no attribute name after it)."""
    where, sep, attr = value.rpartition(":")
    where, attr = where.strip(), attr.strip()
    if not sep or not where or not all(part.isidentifier() for part in attr.split(".")):
        return None
    return where, attr


def _suggest(name, options):
    by_lower = {o.lower(): o for o in options}
    if name.lower() in by_lower:                             # OPTIM, Train: keys are lower case
        return f" (did you mean {by_lower[name.lower()]!r}? keys are lower case)"
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _elsewhere(cls, key):
    """' (did you mean 'optim.lr'?)' for a section's key given at the top level."""
    if cls is not Config:
        return ""
    hits = [f"{name}.{key}" for name, tp in typing.get_type_hints(Config).items()
            if is_dataclass(tp) and key in {g.name for g in fields(tp)}]
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def _build(cls, data, prefix):
    if isinstance(data, Scalar) and data.null:
        data = {}                            # `model:` with nothing under it
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    if not isinstance(data, dict):
        how = (f" (one key at a time: --set {prefix}{next(iter(known))}=...; keys: {', '.join(known)})"
               if prefix else "")
        _fail(getattr(data, "where", ""), f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys{how}, "
                                          f"got {data!r}")
    kwargs, trees = {}, {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            where = getattr(data, "key_where", {}).get(key, "")
            hint = _suggest(str(key), known) or _elsewhere(cls, str(key))
            _fail(where, f"unknown config key {path!r}{hint}; valid keys here: {', '.join(known)}")
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{path}.")
        elif tp is dict:       # a plug-in's own keys: kept as written until its Options read them
            if isinstance(value, Scalar) and value.null:
                value = Mapping(value.where)
            if not isinstance(value, dict):
                _fail(getattr(value, "where", ""), f"{path}: expected a mapping of keys, got {value!r}")
            kwargs[key], trees[key] = _plain(value), value
        else:
            f = known[key]
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            kwargs[key] = _coerce(value, tp, path, f.metadata, default=default)
    obj = cls(**kwargs)
    if trees:
        try:
            obj._trees = trees
        except AttributeError:   # a plug-in's Options with __slots__: its messages lose the lines
            pass
    return obj


def _plain(tree):
    """A YAML tree as plain values (scalars as their text) for a config dict before typing."""
    if isinstance(tree, Scalar):
        return None if tree.null else tree.text
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


def read_options(cls, section, name, owner):
    """The `options` of config section `name` (model or optim), converted and checked against
    `cls`, the Options dataclass of plug-in `owner`, by the rules of every built-in key (so a
    mistake is one line naming the file, line and key). Returns the Options instance (None when
    the plug-in declares none) and stores its typed values, defaults included, in
    section.options: the summary and the checkpoint record them, a resume compares them."""
    tree = getattr(section, "_trees", {}).get("options", section.options)
    if cls is None:
        if tree:
            _fail(getattr(tree, "where", ""), f"{name}.options: {owner} declares no Options dataclass, so it "
                  f"takes no options; got {', '.join(map(str, tree))}")
        return None
    if not is_dataclass(cls):
        raise ConfigError(f"{name}.name: {owner}.Options must be a dataclass (its fields are the keys of "
                          f"{name}.options), got {cls!r}")
    try:
        opts = _build(cls, tree, f"{name}.options.")
    except TypeError as e:    # a field without a default that the config leaves out, ...
        raise ConfigError(f"{name}.options: {owner}.Options({e})") from None
    section.options = asdict(opts)
    return opts


def parse_override(text):
    """'a.b=value' -> (['a','b'], the value as a YAML tree). Raises ConfigError on bad syntax."""
    key, sep, raw = text.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not key.strip() or any(not k for k in keys):
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.batch_size=128")
    value = _compose(raw, f"--set {text!r}") if raw.strip() else None
    return keys, value if value is not None else Scalar("", False, f"--set {text!r}")


def _config_hint(path) -> str:
    """'; did you mean experiments/NAME.yaml' for a missing config that names one of this
    checkout's (bench-comm's projection names configs that way)."""
    path = str(path)
    if os.path.exists(path):
        return ""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = os.path.basename(path)
    for candidate in (name, name + ".yaml", os.path.splitext(name)[0] + ".yaml"):
        if os.path.isfile(os.path.join(repo, "experiments", candidate)):
            return f"; did you mean {os.path.join(repo, 'experiments', candidate)}?"
    return ""


def load_config(path=None, overrides=()) -> Config:
    from .fsutil import read_regular_file
    data = Mapping("")
    if path is not None:
        try:
            raw = read_regular_file(path, "config file", ConfigError, max_bytes=1 << 20)
        except ConfigError as e:
            raise ConfigError(str(e) + _config_hint(path)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not a YAML text file (not UTF-8)") from None
        tree = _compose(text, f"config file {path}")
        if tree is None or (isinstance(tree, Scalar) and tree.null):
            # most likely the wrong file or one not yet saved: every default would train silently
            raise ConfigError(f"config file {path} is empty (only comments or nothing): expected a mapping of "
                              "sections (model:, data:, train:, ...); see experiments/ for examples")
        else:
            if not isinstance(tree, Mapping):
                raise ConfigError(f"config file {path}: expected a mapping of sections at the top level "
                                  "(model:, data:, train:, ...)")
            data = tree
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for n, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None or (isinstance(nxt, Scalar) and nxt.null):
                nxt = node[k] = Mapping(f"--set {text!r}")
                node.key_where[k] = f"--set {text!r}"          # an unknown section is said with its --set
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:n + 1])} is a value, not a section")
            node = nxt
        node[keys[-1]] = value
        if isinstance(node, Mapping):
            node.key_where[keys[-1]] = f"--set {text!r}"
    cfg = _build(Config, data, "")
    cfg.data.path = os.path.expanduser(cfg.data.path)     # `--set data.path=~/mnist` as a shell would
    try:
        _cross_check(cfg)
    except ConfigError as e:   # said with where a key it names was given: a file's line, a --set
        import re
        keys = re.findall(r"\b([a-z_]+\.[a-z_0-9]+)\b", str(e))
        where = next((w for w in (_where_given(data, k.split(".")) for k in keys) if w), "")
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    return cfg


def _where_given(data, keys):
    """'config file F, line N' or "--set 'k=v'" for a dotted key as the config gave it, or ''."""
    node = data
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
    return getattr(node, "key_where", {}).get(keys[-1], "") if isinstance(node, dict) else ""


# Keys that only the built-in models and optimizers read: a plug-in takes its own in `options`.
BUILTIN_ONLY = {"model": ("hidden", "activation", "init", "n_layer", "n_head", "d_model", "block_size", "dropout", "bias"),
                "optim": ("momentum", "nesterov", "betas", "eps", "amsgrad", "alpha", "centered")}


def _check_plugin_keys(cfg: Config):
    for name, section in (("model", cfg.model), ("optim", cfg.optim)):
        if ":" not in section.name:
            tree = getattr(section, "_trees", {}).get("options", section.options)
            if tree:
                _fail(getattr(tree, "where", ""), f"{name}.options: only a plug-in {name} ({name}.name: {PLUGIN_FORM}) "
                      f"takes options; {section.name} takes its keys directly under {name}:")
            continue
        default = type(section)()
        for key in BUILTIN_ONLY[name]:
            if getattr(section, key) != getattr(default, key):
                raise ConfigError(f"{name}.{key}: a key of the built-in {name}s; the plug-in {section.name} takes "
                                  f"its own keys under {name}.options")


def _cross_check(cfg: Config):
    _check_plugin_keys(cfg)
    if cfg.model.name == "gpt" and cfg.model.d_model % cfg.model.n_head:
        raise ConfigError(f"model.d_model: expected a multiple of model.n_head ({cfg.model.n_head}), got {cfg.model.d_model}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.data.name in ("mnist", "text") and not cfg.data.path:
        raise ConfigError(f"data.path: data.name {cfg.data.name!r} needs a path "
                          f"({'folder of IDX files' if cfg.data.name == 'mnist' else 'UTF-8 text file'})")
    if cfg.model.name == "gpt" and cfg.data.name not in ("text", "addition"):
        raise ConfigError(f"data.name: model.name 'gpt' trains on text or addition, got {cfg.data.name!r}")
    if cfg.model.name == "mlp" and cfg.data.name in ("text", "addition"):
        raise ConfigError(f"data.name: model.name 'mlp' trains on digits, mnist or synthetic, got {cfg.data.name!r}")
    if cfg.comm.backend == "nccl" and cfg.backend != "cupy":
        raise ConfigError(f"comm.backend: 'nccl' sums GPU buffers and needs backend: cupy, got backend: "
                          f"{cfg.backend!r} (use comm.backend=mpi on the CPU)")
    if cfg.kernels == "numba" and cfg.backend == "cupy":
        raise ConfigError("kernels: 'numba' compiles CPU kernels and backend: cupy runs on the GPU; use kernels=auto "
                          "(or backend=numpy)")
    _check_comm(cfg.comm)
    if cfg.optim.nesterov and cfg.optim.momentum <= 0:
        raise ConfigError("optim.nesterov: needs optim.momentum > 0")
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        raise ConfigError("train.epochs: expected > 0 when train.max_steps is 0 (the run would do nothing)")
    d = cfg.data
    if d.name in ("digits", "synthetic", "addition") and d.val_fraction + d.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction: expected less than 1 (something left to train "
                          f"on), got {d.val_fraction} + {d.test_fraction}")
    if cfg.optim.zero and cfg.comm.overlap:
        raise ConfigError("optim.zero: 1 reduce-scatters the gradients after backward and does not overlap; "
                          "set comm.overlap=false (or optim.zero=0)")
    if cfg.optim.zero and cfg.comm.backend == "nccl":
        raise ConfigError("optim.zero: 1 reduce-scatters through MPI; set comm.backend=mpi (or optim.zero=0)")
    if cfg.optim.zero and cfg.comm.algorithm != "mpi":
        raise ConfigError("optim.zero: 1 reduce-scatters with MPI_Reduce_scatter, not the ring (nor its 16-bit "
                          "compression); set comm.algorithm=mpi (or optim.zero=0)")
    if cfg.optim.schedule == "cosine" and cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError(f"optim.min_lr: expected at most optim.lr ({cfg.optim.lr}), got {cfg.optim.min_lr}")


def _check_comm(c: CommConfig):
    """The hand-written ring (parallel/ring.py) is blocking, host-MPI, and the only place where
    16-bit gradients are summed in float32: say so instead of silently running something else."""
    if c.algorithm == "ring" and c.backend == "nccl":
        raise ConfigError("comm.algorithm: 'ring' is the hand-written ring over MPI; comm.backend nccl runs "
                          "NCCL's own ring (use comm.algorithm=mpi with nccl)")
    if c.algorithm == "ring" and c.overlap:
        raise ConfigError("comm.overlap: the ring all-reduce (comm.algorithm: ring) is blocking and does not "
                          "overlap with backward; use comm.overlap=false, or comm.algorithm=mpi")
    if c.compress != "none" and c.algorithm != "ring":
        raise ConfigError(f"comm.compress: {c.compress!r} gradients are summed in float32 inside the hand-written "
                          "ring; needs comm.algorithm=ring (MPI_Allreduce cannot sum 16-bit floats)")
    if c.error_feedback and c.compress == "none":
        raise ConfigError("comm.error_feedback: feeds back what 16-bit rounding lost; needs comm.compress fp16 "
                          "or bf16 (with none nothing is lost)")


def config_from_dict(d: dict) -> Config:
    return _build(Config, d, "")
