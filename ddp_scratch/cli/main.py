"""The command line behind launch.py: the parser, one handler per command, and the error policy.

Errors from bad input become one line on stderr and exit status 2; an unexpected error in one
rank of several aborts the whole MPI world. cli/ is the top of the house: it may import every
room, and nothing outside it (but launch.py) imports cli/.
"""
import argparse
import os
import sys
import textwrap

from ..errors import UserError
from .args import add_slurm_resource_args, add_train_args, integer, number, path
from .bench import cmd_bench_comm
from .local import cmd_local, set_threads
from .submit import add_submit_parser, add_sweep_point_parser, submit, sweep_point
from .train import cmd_train

EXAMPLES = {
    "train": """
      python launch.py train experiments/mlp_digits.yaml --out runs/digits
      mpiexec -n 2 python launch.py train experiments/mlp_digits.yaml --set train.batch_size=128
      python launch.py train experiments/mlp_mnist.yaml --set data.path=~/mnist --out runs/mnist --resume""",
    "submit": """
      python launch.py submit experiments/mlp_digits.yaml --nodes 1 --tasks-per-node 2 --time 10 --out runs/s --wait
      python launch.py submit experiments/mlp_mnist.yaml --nodes 2 --tasks-per-node 4 --gpus-per-node 4 \\
          --set backend=cupy --partition gpu --account myproject --time 120
      python launch.py submit experiments/mlp_digits.yaml --tasks-per-node 2 --local --wait""",
    "local": """
      python launch.py local -n 2 experiments/mlp_digits.yaml --out runs/digits2""",
    "scaling": """
      python launch.py scaling experiments/mlp_digits.yaml --mode weak --ranks 1,2 --out runs/weak
      python launch.py scaling experiments/scaling_mlp_strong.yaml --mode strong --ranks 1,2,4 --repeats 3 --out runs/strong
      python launch.py scaling experiments/mlp_digits.yaml --mode weak --ranks 1,2 --compare comm.algorithm=mpi,ring --out runs/algo
      python launch.py scaling experiments/mlp_digits.yaml --mode weak --ranks 1,2 --set comm.algorithm=ring \\
          --compare comm.compress=none,bf16 --out runs/bf16""",
    "report": """
      python launch.py report runs/weak""",
    "bench-comm": """
      python launch.py bench-comm -n 2 --out runs/comm
      python launch.py bench-comm -n 2 --alpha-us 2 --bandwidth-gbps 25 --out runs/comm-ib   # project for InfiniBand
      python launch.py bench-comm -n 2 --algorithm ring --out runs/comm-ring   # the hand-written ring""",
    "download": """
      python launch.py download mnist --to data/mnist
      python launch.py download fashion-mnist --to data/fashion""",
    "gradcheck": """
      python launch.py gradcheck conv2d
      python launch.py gradcheck examples/resmlp/resmlp.py:Residual
      python launch.py gradcheck examples.cnn.lenet:LeNet5 --entries 50""",
    "sample": """
      python launch.py sample runs/gpt_char/checkpoint.npz --prompt "The " --tokens 300 --top-k 10 --seed 1
      python launch.py sample runs/gpt_addition/checkpoint.npz --prompt "47+38=" --tokens 4 --temperature 0""",
}


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)    # --ov must not silently mean --overwrite
        super().__init__(*args, **kw)

    def error(self, message):   # one line and exit 2, like every other bad input
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser():
    ap = Parser(prog="launch.py", description="ddp_scratch: train hand-written networks data-parallel.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    ap.commands = {}

    def cmd(name, help_):
        p = ap.commands[name] = sub.add_parser(name, help=help_, description=help_,
                                               epilog="examples:" + textwrap.dedent(EXAMPLES.get(name, "")),
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    add_train_args(cmd("train", "train one model in this process (one rank of mpiexec/srun, or alone)"))
    p = cmd("local", "run `train` on N local ranks through mpiexec")
    p.add_argument("-n", "--ranks", type=integer(1, "a number of ranks"), required=True, help="number of ranks")
    add_train_args(p)
    p = cmd("download", "fetch MNIST-format IDX files and verify their checksums")
    p.add_argument("dataset", help="mnist or fashion-mnist")
    p.add_argument("--to", type=path("a destination folder"), required=True, help="destination folder")
    p.add_argument("--base-url", default=None, help="mirror to fetch from (a folder URL holding the .gz files)")
    p = cmd("scaling", "run a strong or weak scaling sweep and write the report")
    p.add_argument("config", type=path("a YAML config file"), help="YAML config of the model and data")
    p.add_argument("--mode", choices=["strong", "weak"], required=True,
                   help="strong: the global batch stays; weak: the per-rank batch stays")
    p.add_argument("--ranks", required=True, help="comma-separated world sizes, e.g. 1,2,4")
    p.add_argument("--repeats", type=integer(1, "a number of repeats"), default=1,
                   help="runs per world size (default 1)")
    p.add_argument("--steps", type=integer(1, "a number of steps"), default=20, help="timed steps per point (default 20)")
    p.add_argument("--warmup", type=integer(0, "a number of steps"), default=5,
                   help="untimed steps before them (default 5)")
    p.add_argument("--batch", type=integer(1, "a batch size"), default=None,
                   help="strong: global batch; weak: per-rank batch (default train.batch_size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every point (repeatable)")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
                   help="measure every point once per value, each value a series of its own in the report, e.g. "
                        "--compare comm.algorithm=mpi,ring (repeatable: every combination the config accepts)")
    p.add_argument("--out", type=path("an output folder"), required=True,
                   help="folder of the sweep: points/, runs/*.json, scaling.csv, plots/, report.md")
    p.add_argument("--resume", action="store_true",
                   help="continue the same sweep in --out: keep the points it measured, run the rest, rebuild the report")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds measurements (its run files are removed)")
    p.add_argument("--slurm", action="store_true",
                   help="run each point as a SLURM job through submitit (one task per rank)")
    add_slurm_resource_args(p, tasks_per_node=0, time=30)
    p = cmd("keys", "list every config key: its type, default, allowed values and what it does")
    p.add_argument("section", nargs="?", choices=["backend", "kernels", "model", "data", "train", "optim", "comm", "logging"],
                   help="only this section's keys")
    p = cmd("report", "rebuild a scaling report (CSV, plots, report.md) from DIR/runs/*.json")
    p.add_argument("dir", type=path("a sweep folder"), help="the --out folder of a scaling sweep")
    p = cmd("bench-comm", "all-reduce micro-benchmark, alpha-beta fit and projection to large worlds")
    p.add_argument("-n", "--ranks", type=integer(2, "a number of ranks"), default=2,
                   help="ranks that all-reduce (default 2)")
    p.add_argument("--out", type=path("an output folder"), required=True,
                   help="folder for bench_comm.json and its plot")
    p.add_argument("--overwrite", action="store_true", help="replace a measurement already in --out")
    p.add_argument("--alpha-us", type=float, default=None,
                   help="interconnect latency for the projection, in microseconds (with --bandwidth-gbps)")
    p.add_argument("--bandwidth-gbps", type=float, default=None,
                   help="interconnect bandwidth for the projection, in GB/s (gigabytes per second; divide Gbit/s by 8)")
    p.add_argument("--algorithm", choices=["mpi", "ring"], default="mpi",
                   help="what is timed: MPI's Allreduce (default) or the hand-written ring of comm.algorithm: ring")
    p.add_argument("--configs", default="experiments/mlp_digits.yaml,experiments/gpt_addition.yaml",
                   help="comma-separated configs whose step time and gradient size are projected")
    add_submit_parser(cmd)
    add_sweep_point_parser(cmd)
    p = cmd("sample", "continue a prompt with a trained GPT checkpoint")
    p.add_argument("checkpoint", type=path("a checkpoint file"), help="OUT/checkpoint.npz of a gpt training run")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=integer(0, "a count of characters"), default=200, metavar="N",
                   help="characters to generate (default 200)")
    p.add_argument("--temperature", type=number(low=0.0, what="a temperature"), default=1.0,
                   help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=integer(0, "a count"), default=0, metavar="K",
                   help="sample among the K likeliest; 0 = all (default 0)")
    p.add_argument("--seed", type=integer(0, "a seed"), default=0, help="the same seed gives the same text (default 0)")
    p = cmd("gradcheck", "check a layer's or model's hand-written backward against finite differences (and torch)")
    p.add_argument("target", help="a built-in (linear, relu, ..., conv2d, maxpool2d, flatten, mlp, gpt) or a plug-in: "
                   "module:Class or path/to/file.py:Class with a gradcheck_inputs hook (docs/extending.md)")
    p.add_argument("--seed", type=integer(0, "a seed"), default=0, help="seed of the input, noise and sampling (default 0)")
    p.add_argument("--entries", type=integer(0, "a count"), default=200, metavar="N",
                   help="entries per array checked by finite differences, chosen at random beyond N; 0 = all (default 200)")
    p.add_argument("--no-torch", action="store_true", help="finite differences only, even where torch is importable")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="array module the target runs on: cupy checks a layer's GPU path (default numpy)")
    return ap


def parse_args(argv=None):
    """Parse, and say an unknown flag against the command it was given to."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:
        ap.commands[args.cmd].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def cmd_download(a):
    from ..data.download import download
    download(a.dataset, a.to, a.base_url)
    return 0


def cmd_scaling(a):
    from .sweep import parse_ranks, sweep
    launcher = None
    if a.slurm:
        from .submit import slurm_launcher
        launcher = slurm_launcher(a)
    sweep(a.config, a.mode, parse_ranks(a.ranks), a.out, a.repeats, a.steps, a.warmup, a.batch, a.overrides,
          launcher=launcher, overwrite=a.overwrite, resume=a.resume, compare=a.compare)
    return 0


def cmd_report(a):
    from ..study.report import write_report
    if os.path.exists(a.dir) and not os.path.isdir(a.dir):
        raise UserError(f"report: {a.dir} is a file, expected the --out folder of a scaling sweep")
    if not os.path.isdir(os.path.join(a.dir, "runs")):
        raise UserError(f"report: {a.dir}/runs not found (expected the output folder of a scaling sweep)")
    try:
        print(write_report(a.dir))
    except ValueError as e:
        raise UserError(f"report: {e}") from None
    return 0


def cmd_sample(a):
    set_threads()
    from ..run.sample import run_sample
    return run_sample(a)


def cmd_keys(a):
    from ..config import describe_keys
    try:
        print("\n".join(describe_keys(a.section)), flush=True)
    except BrokenPipeError:          # `launch.py keys | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_gradcheck(a):
    set_threads(1)                      # small arrays: more threads only add overhead
    from .. import backend
    from ..nn.gradcheck_targets import check_target
    backend.use(a.backend)
    report = check_target(a.target, seed=a.seed, entries=a.entries, use_torch=not a.no_torch)
    print(report.text(), flush=True)
    return 0 if report.ok else 1


HANDLERS = {"train": cmd_train, "local": cmd_local, "submit": submit, "download": cmd_download,
            "scaling": cmd_scaling, "report": cmd_report, "bench-comm": cmd_bench_comm, "sample": cmd_sample,
            "sweep-point": sweep_point, "gradcheck": cmd_gradcheck,
            "keys": cmd_keys}


def main(argv=None):
    args = parse_args(argv)
    try:
        return HANDLERS[args.cmd](args)
    except UserError as e:
        from ..parallel.env import abort_world, initialized_world, launcher_rank
        rank, size, mpi = initialized_world()
        # Errors raised before MPI starts (config, CLI) or agreed by all ranks are the same on
        # every rank, or said by one of them: say them once.
        quiet = (mpi is None and launcher_rank() != 0) or (getattr(e, "collective", False) and rank != 0)
        if not quiet:
            print(f"error: {e}", file=sys.stderr, flush=True)
        if size > 1 and not (getattr(e, "collective", False) or getattr(e, "agreed", False)):
            abort_world(e.exit_code, settle_s=0.2)   # this rank alone: the others may sit in a collective
        return e.exit_code
    except KeyboardInterrupt as e:
        from ..parallel.env import initialized_world
        rank, size, _ = initialized_world()
        if rank == 0:
            print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr, flush=True)
        code = getattr(e, "code", 130)
        if size > 1:
            os._exit(code)   # no MPI_Finalize: a rank that sits in a collective would wait forever
        return code
    except Exception as e:
        from ..parallel.env import abort_world, initialized_world
        from ..run.trainer import Stopped
        rank, size, _ = initialized_world()
        if isinstance(e, Stopped):
            if rank == 0 and not os.environ.get("DDP_NESTED"):   # a sweep's point: the sweep says it
                print(str(e), file=sys.stderr, flush=True)
            return e.code
        if size > 1 and type(e).__module__.startswith("mpi4py"):
            # MPI itself failed under this rank (a peer died, the network went away): no traceback
            # of ours to show, and the launcher names the rank that died
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            sys.stderr.write(f"error: rank {rank}: an MPI collective failed ({first}); another rank has "
                             f"probably died; aborting all {size} ranks\n")
            abort_world(1, settle_s=2.0)   # time for mpiexec to see the dead rank and name it first
        if size > 1:    # the other ranks may sit in a collective: take the whole world down now
            import traceback
            sys.stderr.write(traceback.format_exc() + f"error: rank {rank}: {type(e).__name__}: {e}; "
                             f"aborting all {size} ranks\n")
            abort_world(1, settle_s=0.2)
        raise
