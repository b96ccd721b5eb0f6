"""`launch.py train`: one rank of a training run (alone, or one of mpiexec's/srun's ranks)."""
from .args import default_out
from .local import set_threads


def cmd_train(a, handle_stop=True):
    from ..config import load_config
    cfg = load_config(a.config, a.overrides)
    set_threads(cfg.train.threads)
    from ..run.trainer import Options, Trainer
    opts = Options(out=a.out or default_out(a.config), resume=a.resume, overwrite=a.overwrite,
                   stop_at_step=a.stop_at_step, quiet=a.quiet)
    tr = Trainer(cfg, opts)
    s = tr.run()
    if tr.comm.rank == 0 and not a.quiet:
        acc = s.get("test_accuracy")
        print(f"done: {s['steps']} steps, train_loss {s['train_loss']:.4f}"
              + (f", test_accuracy {acc:.4f}" if acc is not None else "")
              + f", {s.get('samples_per_s', 0):.0f} samples/s -> {opts.out}/summary.json", flush=True)
    return 0
