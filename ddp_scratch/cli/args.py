"""Command-line arguments that several commands share, and the argument types that check them:
every number a flag takes is checked by argparse (one line, exit 2), in any notation people use
(`--tokens 1e3` is 1000)."""
import argparse
import math
import os


def integer(low, what="a count"):
    """argparse type: a whole number >= low (written 3, 3.0 or 1e3)."""
    def parse(text):
        try:
            v = float(text) if any(c in text for c in ".eE") else int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {low}), got {text!r}") from None
        if not (isinstance(v, int) or (math.isfinite(v) and v == int(v))) or v < low:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {low}), got {text!r}")
        return int(v)
    return parse


def number(low=None, above=None, what="a number"):
    """argparse type: a finite number >= low (or > above)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(v) or (low is not None and v < low) or (above is not None and v <= above):
            bound = f" >= {low:g}" if low is not None else f" > {above:g}" if above is not None else ""
            raise argparse.ArgumentTypeError(f"expected {what}: a finite number{bound}, got {text!r}")
        return v
    return parse


def path(what="a path"):
    """argparse type: a non-empty path, ~ expanded."""
    def parse(text):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty string")
        return os.path.expanduser(text)
    return parse


def add_train_args(p):
    p.add_argument("config", type=path("a YAML config file"), help="YAML config, e.g. experiments/mlp_digits.yaml")
    p.add_argument("--out", type=path("an output folder"), default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if it exists")
    p.add_argument("--overwrite", action="store_true", help="start a new run over an existing OUT/checkpoint.npz")
    p.add_argument("--stop-at-step", type=integer(1, "a step"), default=None, metavar="K",
                   help="checkpoint and stop at step K (status 'stopped', exit 0); --resume continues")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and notes on what a resume changes (no start-up text, progress or last line)")


def check_train_args(a):
    """The flags of `train` (also passed on by local and submit) that argparse cannot check."""
    from ..errors import UserError
    if a.resume and a.overwrite:
        raise UserError("--resume and --overwrite: give one (continue the run, or start a new one over it)")


def default_out(config):
    return os.path.join("runs", os.path.splitext(os.path.basename(config))[0])


def add_slurm_resource_args(p, tasks_per_node, time):
    """The job-shape flags `submit` and `scaling --slurm` share."""
    p.add_argument("--tasks-per-node", type=integer(tasks_per_node and 1, "a number of tasks"), default=tasks_per_node,
                   help="ranks per node (one per GPU on GPU nodes)" + ("; 0 = all ranks of a point on one node"
                                                                      if tasks_per_node == 0 else "")
                   + f" (default {tasks_per_node})")
    p.add_argument("--gpus-per-node", type=integer(0, "a number of GPUs"), default=0, help="GPUs per node (default 0)")
    p.add_argument("--cpus-per-task", type=integer(1, "a number of cores"), default=1,
                   help="cores per rank (default 1)")
    p.add_argument("--time", type=integer(1, "minutes"), default=time, help=f"minutes per job (default {time})")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    p.add_argument("--account", default=None, help="SLURM account to charge (default: yours)")
    p.add_argument("--srun-arg", action="append", default=["--mpi=pmi2"],
                   help="extra srun arguments (default --mpi=pmi2; use --mpi=pmix where the cluster's MPI needs it)")
