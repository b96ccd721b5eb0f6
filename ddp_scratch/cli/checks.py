"""Checks a launcher runs once, before it starts ranks, a sweep or a job: what every rank of
`train` would refuse (config, flags, output folder, data files, plug-ins) is refused here, in one line."""
from ..config import load_config
from ..errors import ConfigError
from .args import check_train_args, default_out


def preflight(a, ranks=1):
    """-> (config, output folder) of `launch.py train` arguments `a` for a run on `ranks` ranks."""
    from ..data.tasks import check_data
    from ..run.preflight import check_out_folder
    check_train_args(a)
    cfg = load_config(a.config, a.overrides)
    if cfg.train.batch_size < ranks:
        raise ConfigError(f"train.batch_size: the global batch ({cfg.train.batch_size}) must be at least "
                          f"the number of ranks ({ranks})")
    out = a.out or default_out(a.config)
    check_out_folder(out, a.resume, a.overwrite)
    check_data(cfg)
    if ":" in cfg.model.name or ":" in cfg.optim.name:     # a user's model or optimizer: it imports and fits
        from ..nn.plugins import check_plugins
        check_plugins(cfg)
    return cfg, out
