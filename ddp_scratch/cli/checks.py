"""Checks a launcher runs once, before it starts ranks, a sweep or a job: what every rank of
`train` would refuse (config, flags, output folder, data files, plug-ins) is refused here, in one line."""
import os

from ..config import load_config
from ..errors import CheckpointError, ConfigError, UserError
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
    if ":" in cfg.model.name or ":" in cfg.optim.name:     # a user's model or optimizer: it imports and fits
        from ..nn.plugins import check_plugins
        check_plugins(cfg)
    return cfg, out


MAX_RANKS_PER_CORE = 16     # beyond this local ranks only thrash (1000 ranks on 2 cores hung, 500 broke UCX)


def check_rank_count(ranks, cores, what, hint="run large worlds on a cluster (launch.py submit)"):
    """Refuse, before anything starts, more local ranks than the `cores` here can hold: every
    command that starts ranks on this machine (local, scaling, bench-comm, submit --local) shares this cap."""
    cap = MAX_RANKS_PER_CORE * cores
    if ranks > cap:
        raise UserError(f"{what}: {ranks} ranks on the {cores} cores here would only thrash (at most {cap}); {hint}")


# What one rank holds before its model and data: the interpreter, NumPy, mpi4py, the package and
# MPI's buffers (measured: ~46 MiB RSS after the imports, ~58 MiB for a whole digits rank).
RANK_BASELINE_BYTES = 64 << 20


def check_rank_memory(cfg, ranks, what):
    """Refuse `ranks` local ranks whose memory (each: the baseline, the data, the model's estimate
    for its share of the batch; cfg None: the baseline alone) cannot fit in what is available
    here, before any of them starts (400 ranks x ~70 MB swapped a 21 GB machine for minutes)."""
    from ..run.preflight import check_memory
    parts = {"interpreter and imports": RANK_BASELINE_BYTES}
    if cfg is not None:
        from ..data.tasks import data_bytes, dims
        from ..nn.registry import memory_estimate
        parts["data"] = data_bytes(cfg)
        d_in, n_out = dims(cfg)
        rows = -(-cfg.train.batch_size // ranks)
        eval_rows = rows if cfg.model.name == "gpt" else min(cfg.train.eval_batch, 1 << 20)
        parts.update(memory_estimate(cfg, d_in, n_out, rows, eval_rows,
                                     shards=ranks if cfg.optim.zero else 1))
    check_memory(f"{what} {ranks}: the run", parts, ranks,
                 "use fewer ranks, or a smaller model, batch or dataset")
