"""`launch.py train`: one rank of a training run (alone, or one of mpiexec's/srun's ranks)."""
import os

from ..parallel.env import launcher_rank
from .args import check_train_args, default_out
from .local import local_ranks, set_threads, warn_if_oversubscribed


def cmd_train(a):
    from ..config import load_config
    check_train_args(a)
    cfg = load_config(a.config, a.overrides)
    threads = set_threads(cfg.train.threads)
    if cfg.train.threads and launcher_rank() == 0 and not os.environ.get("DDP_LAUNCHER"):
        warn_if_oversubscribed(local_ranks(), threads, "train.threads")
    from ..run.progress import final_line
    from ..run.trainer import Options, Trainer
    opts = Options(out=a.out or default_out(a.config), resume=a.resume, overwrite=a.overwrite,
                   stop_at_step=a.stop_at_step, quiet=a.quiet)
    tr = Trainer(cfg, opts)
    s = tr.run()
    if tr.comm.rank != 0:
        return 0
    if s is None:
        print(f"{opts.out}: already complete at step {tr.step} (this config trains {tr.total_steps} steps); "
              "nothing changed. To train longer, raise train.epochs or train.max_steps and --resume.", flush=True)
    elif not a.quiet:
        print(final_line(s, opts.out), flush=True)
    return 0
