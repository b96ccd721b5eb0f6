"""Typed, defaulted configuration: YAML file + `--set section.key=value` overrides.

Every field is declared once below with its type and constraints; unknown keys get a
closest-match suggestion, wrong types a message naming the field and the expected type.
"""
from dataclasses import asdict, dataclass, field, fields, is_dataclass
import difflib
import hashlib
import json
import typing

from .errors import ConfigError


def F(default, *, choices=None, min=None, gt=None, help=""):  # noqa: A002 - reads like the YAML
    meta = {"choices": choices, "min": min, "gt": gt, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "elu", "gelu"]


@dataclass
class ModelConfig:
    name: str = F("mlp", choices=["mlp", "gpt"])
    hidden: list[int] = F([128], min=1, help="MLP hidden widths")
    activation: str = F("relu", choices=ACTIVATIONS)
    init: str = F("auto", choices=["auto", "he", "xavier"])
    n_layer: int = F(4, min=1, help="GPT blocks")
    n_head: int = F(4, min=1)
    d_model: int = F(128, min=1)
    block_size: int = F(64, min=1, help="GPT context length")
    dropout: float = F(0.0, min=0.0)
    bias: bool = F(True)


@dataclass
class DataConfig:
    name: str = F("digits", choices=["digits", "mnist", "synthetic", "text", "addition"])
    path: str = F("", help="folder of IDX files (mnist) or a UTF-8 text file (text)")
    val_fraction: float = F(0.1, min=0.0)
    test_fraction: float = F(0.2, min=0.0, help="digits/synthetic only; MNIST has its own test set")
    tail: str = F("drop", choices=["drop", "pad"], help="last partial global batch of an epoch")
    normalize: bool = F(True)
    seed: int = F(1234, help="seed of splits and synthetic data")
    n_samples: int = F(8192, gt=0, help="synthetic")
    n_features: int = F(784, gt=0, help="synthetic")
    n_classes: int = F(10, gt=1, help="synthetic")
    digits: int = F(2, min=1, help="addition task: digits per operand")


@dataclass
class TrainConfig:
    batch_size: int = F(64, gt=0, help="GLOBAL batch, split across ranks")
    epochs: int = F(10, min=0)
    max_steps: int = F(0, min=0, help="0 = no limit")
    seed: int = F(0)
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
    name: str = F("sgd", choices=["sgd", "adam", "adamw", "rmsprop"])
    lr: float = F(0.1, gt=0.0)
    momentum: float = F(0.0, min=0.0)
    nesterov: bool = F(False)
    weight_decay: float = F(0.0, min=0.0)
    betas: list[float] = F([0.9, 0.999], min=0.0)
    eps: float = F(1e-8, gt=0.0)
    amsgrad: bool = F(False)
    maximize: bool = F(False)
    alpha: float = F(0.99, min=0.0, help="RMSProp smoothing")
    centered: bool = F(False)
    schedule: str = F("constant", choices=["constant", "step", "cosine"])
    warmup_steps: int = F(0, min=0)
    step_size: int = F(1000, gt=0)
    gamma: float = F(0.1, gt=0.0)
    min_lr: float = F(0.0, min=0.0)
    decay_steps: int = F(0, min=0, help="cosine length; 0 = the whole run")


@dataclass
class CommConfig:
    backend: str = F("mpi", choices=["mpi", "nccl"])
    timeout_s: float = F(300.0, gt=0.0, help="watchdog around collectives")
    bucket_mb: float = F(25.0, gt=0.0)
    first_bucket_mb: float = F(1.0, gt=0.0)
    overlap: bool = F(False, help="non-blocking bucketed all-reduce during backward")
    accumulate: int = F(1, gt=0, help="micro-steps per optimizer step, no communication between")


@dataclass
class LoggingConfig:
    wandb: bool = F(False)
    wandb_project: str = F("ddp_scratch")
    wandb_mode: str = F("offline", choices=["offline", "online", "disabled"])
    progress: bool = F(True)


@dataclass
class Config:
    backend: str = F("numpy", choices=["numpy", "cupy"])
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
        keep["train"] = {k: d["train"][k] for k in ("batch_size", "seed", "dtype", "loss")}
        return keep


def config_hash(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading

def _typename(tp):
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, path, meta):
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of {_typename(item)}, got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{path}: expected one of {', '.join(meta['choices'])}, got {value!r}"
                          + _suggest(str(value), meta["choices"]))
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{path}: expected a value >= {meta['min']}, got {value!r}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise ConfigError(f"{path}: expected a value > {meta['gt']}, got {value!r}")
    return value


def _suggest(name, options):
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls, data, prefix):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {path!r}{_suggest(str(key), known)}; "
                              f"valid keys here: {', '.join(known)}")
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{path}.")
        else:
            kwargs[key] = _coerce(value, tp, path, known[key].metadata)
    return cls(**kwargs)


def parse_override(text):
    """'a.b=value' -> (['a','b'], value parsed as YAML). Raises ConfigError on bad syntax."""
    import yaml
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.batch_size=128")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None
    return key.strip().split("."), value


def load_config(path=None, overrides=()) -> Config:
    import yaml
    data = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!s} not found (expected a YAML file, e.g. experiments/mlp_digits.yaml)") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path!s} is a directory, expected a YAML file") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where else ""
            raise ConfigError(f"config file {path!s} is not valid YAML{at}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!s}: expected a mapping of sections at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    cfg = _build(Config, data, "")
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config):
    if cfg.model.name == "gpt" and cfg.model.d_model % cfg.model.n_head:
        raise ConfigError(f"model.d_model: expected a multiple of model.n_head ({cfg.model.n_head}), got {cfg.model.d_model}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.data.name in ("mnist", "text") and not cfg.data.path:
        raise ConfigError(f"data.path: data.name {cfg.data.name!r} needs a path "
                          f"({'folder of IDX files' if cfg.data.name == 'mnist' else 'UTF-8 text file'})")
    if cfg.model.name == "gpt" and cfg.data.name not in ("text", "addition"):
        raise ConfigError(f"data.name: model gpt trains on text or addition, got {cfg.data.name!r}")
    if cfg.model.name == "mlp" and cfg.data.name in ("text", "addition"):
        raise ConfigError(f"data.name: model mlp trains on digits, mnist or synthetic, got {cfg.data.name!r}")
    if cfg.comm.backend == "nccl" and cfg.backend != "cupy":
        raise ConfigError(f"comm.backend: 'nccl' sums GPU buffers and needs backend: cupy, got backend: "
                          f"{cfg.backend!r} (use comm.backend=mpi on the CPU)")
    if cfg.optim.nesterov and cfg.optim.momentum <= 0:
        raise ConfigError("optim.nesterov: needs optim.momentum > 0")
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        raise ConfigError("train.epochs: expected > 0 when train.max_steps is 0 (the run would do nothing)")


def config_from_dict(d: dict) -> Config:
    return _build(Config, d, "")
