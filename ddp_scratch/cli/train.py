"""`launch.py train`: one rank of a training run (alone, or one of mpiexec's/srun's ranks)."""
from .args import check_train_args, default_out
from .local import set_threads


def cmd_train(a):
    from ..config import load_config
    check_train_args(a)
    cfg = load_config(a.config, a.overrides)
    set_threads(cfg.train.threads)
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
