"""Checks a launcher runs once, before it starts ranks, a sweep or a job: what every rank of
`train` would refuse (config, flags, output folder, data files) is refused here, in one line."""
import os

from ..config import load_config
from ..errors import CheckpointError, ConfigError
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
    ckpt_path = os.path.join(out, "checkpoint.npz")
    if a.resume and a.stop_at_step and os.path.isfile(ckpt_path):     # a job queued only to be refused
        from ..run.checkpoint import check_stop_at, read_meta
        try:
            step = read_meta(ckpt_path).get("step")
        except CheckpointError:
            step = None             # the ranks say what is wrong with it, in full
        if isinstance(step, int) and not isinstance(step, bool):
            check_stop_at(a.stop_at_step, step, ckpt_path)
    check_data(cfg)
    return cfg, out
