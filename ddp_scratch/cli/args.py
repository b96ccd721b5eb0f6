"""Command-line arguments that several commands share."""
import os


def add_train_args(p):
    p.add_argument("config", help="YAML config, e.g. experiments/mlp_digits.yaml")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if it exists")
    p.add_argument("--overwrite", action="store_true", help="start a new run over an existing OUT/checkpoint.npz")
    p.add_argument("--stop-at-step", type=int, default=0, metavar="K",
                   help="checkpoint and exit at step K, exactly as a preempted run would")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def check_train_args(a):
    """The flags of `train` (also passed on by local and submit) that argparse cannot check."""
    from ..errors import UserError
    if a.stop_at_step < 0:
        raise UserError(f"--stop-at-step: expected a step >= 1 (0 = no stop), got {a.stop_at_step}")
    if a.resume and a.overwrite:
        raise UserError("--resume and --overwrite: give one (continue the run, or start a new one over it)")
    if a.out is not None and not a.out.strip():
        raise UserError("--out: expected a folder, got an empty path")


def default_out(config):
    return os.path.join("runs", os.path.splitext(os.path.basename(config))[0])


def add_slurm_resource_args(p, tasks_per_node, time):
    """The job-shape flags `submit` and `scaling --slurm` share."""
    p.add_argument("--tasks-per-node", type=int, default=tasks_per_node,
                   help="ranks per node (one per GPU on GPU nodes)" + ("; 0 = all ranks of a point on one node"
                                                                      if tasks_per_node == 0 else ""))
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--time", type=int, default=time, help="minutes (per job)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--srun-arg", action="append", default=["--mpi=pmi2"],
                   help="extra srun arguments (default --mpi=pmi2; use --mpi=pmix where the cluster's MPI needs it)")
