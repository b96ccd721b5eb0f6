"""The command line behind launch.py. Errors from bad input become one line on stderr and exit
status 2; an unexpected error in one rank of several aborts the whole MPI world."""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import textwrap

from .errors import UserError

# The entry point every spawned rank runs (also when we were started as `ddp-scratch`).
LAUNCH_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch.py")

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
      python launch.py scaling experiments/scaling_mlp_strong.yaml --mode strong --ranks 1,2,4 --repeats 3 --out runs/strong""",
    "report": """
      python launch.py report runs/weak""",
    "bench-comm": """
      python launch.py bench-comm -n 2 --out runs/comm
      python launch.py bench-comm -n 2 --alpha-us 2 --bandwidth-gbps 25 --out runs/comm-ib   # project for InfiniBand""",
    "download": """
      python launch.py download mnist --to data/mnist
      python launch.py download fashion-mnist --to data/fashion""",
}


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line and exit 2, like every other bad input
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _local_ranks():
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    v = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "")   # e.g. "2(x3)" or "2,1"
    if v[:1].isdigit():
        return int(v.split("(")[0].split(",")[0])
    return 1


def set_threads(requested=0):
    """BLAS/OpenMP threads per rank: threads x ranks on a node <= cores. Must run before numpy loads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = requested or int(os.environ.get("DDP_THREADS", 0)) or max(1, cores // _local_ranks())
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


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


def build_parser():
    ap = Parser(prog="launch.py", description="ddp_scratch: train hand-written networks data-parallel.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def cmd(name, help_):
        return sub.add_parser(name, help=help_, description=help_,
                              epilog="examples:" + textwrap.dedent(EXAMPLES.get(name, "")),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    add_train_args(cmd("train", "train one model in this process (one rank of mpiexec/srun, or alone)"))
    p = cmd("local", "run `train` on N local ranks through mpiexec")
    p.add_argument("-n", "--ranks", type=int, required=True, help="number of ranks")
    add_train_args(p)
    p = cmd("download", "fetch MNIST-format IDX files and verify their checksums")
    p.add_argument("dataset", help="mnist or fashion-mnist")
    p.add_argument("--to", required=True, help="destination folder")
    p.add_argument("--base-url", default=None, help="mirror to fetch from (folder URL)")
    p = cmd("scaling", "run a strong or weak scaling sweep and write the report")
    p.add_argument("config")
    p.add_argument("--mode", choices=["strong", "weak"], required=True)
    p.add_argument("--ranks", required=True, help="comma-separated world sizes, e.g. 1,2,4")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps per point")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--batch", type=int, default=None,
                   help="strong: global batch; weak: per-rank batch (default train.batch_size)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--slurm", action="store_true",
                   help="run each point as a SLURM job through submitit (one task per rank)")
    from .submit import add_slurm_resource_args
    add_slurm_resource_args(p, tasks_per_node=0, time=30)
    p = cmd("report", "rebuild a scaling report (CSV, plots, report.md) from DIR/runs/*.json")
    p.add_argument("dir")
    p = cmd("bench-comm", "all-reduce micro-benchmark, alpha-beta fit and projection to large worlds")
    p.add_argument("-n", "--ranks", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--alpha-us", type=float, default=None, help="interconnect latency for the projection")
    p.add_argument("--bandwidth-gbps", type=float, default=None, help="interconnect bandwidth (GB/s)")
    p.add_argument("--configs", default="experiments/mlp_digits.yaml,experiments/gpt_addition.yaml",
                   help="models whose step time and gradient size are projected")
    for extra in _EXTRA_COMMANDS:
        extra(cmd)
    return ap


def _add_submit(cmd):
    from .submit import add_submit_parser
    add_submit_parser(cmd)


_EXTRA_COMMANDS = [_add_submit]


def _default_out(config):
    return os.path.join("runs", os.path.splitext(os.path.basename(config))[0])


def cmd_train(a, handle_stop=True):
    from .config import load_config
    cfg = load_config(a.config, a.overrides)
    set_threads(cfg.train.threads)
    from .train import Options, Trainer
    opts = Options(out=a.out or _default_out(a.config), resume=a.resume, overwrite=a.overwrite,
                   stop_at_step=a.stop_at_step, quiet=a.quiet)
    tr = Trainer(cfg, opts)
    s = tr.run()
    if tr.comm.rank == 0 and not a.quiet:
        acc = s.get("test_accuracy")
        print(f"done: {s['steps']} steps, train_loss {s['train_loss']:.4f}"
              + (f", test_accuracy {acc:.4f}" if acc is not None else "")
              + f", {s.get('samples_per_s', 0):.0f} samples/s -> {opts.out}/summary.json", flush=True)
    return 0


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec") or shutil.which("mpirun")


def cmd_local(a):
    from .config import load_config
    load_config(a.config, a.overrides)    # fail fast, once, before starting N processes
    if a.ranks < 1:
        raise UserError(f"local -n: expected a number of ranks >= 1, got {a.ranks}")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("local: no mpiexec found (pip install mpich, or load your cluster's MPI module)")
    argv = [mpiexec, "-n", str(a.ranks), sys.executable, LAUNCH_PY, "train", a.config]
    argv += ["--out", a.out or _default_out(a.config)]
    for o in a.overrides:
        argv += ["--set", o]
    argv += [f for f, on in (("--resume", a.resume), ("--overwrite", a.overwrite), ("--quiet", a.quiet)) if on]
    if a.stop_at_step:
        argv += ["--stop-at-step", str(a.stop_at_step)]
    return run_forwarding(argv)


def run_forwarding(argv):
    """Run a launcher, forward its exit status; one Ctrl-C ends every rank."""
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 130


def cmd_download(a):
    from .download import download
    download(a.dataset, a.to, a.base_url)
    return 0


def cmd_scaling(a):
    from .scaling import parse_ranks, sweep
    if a.repeats < 1 or a.steps < 1 or a.warmup < 0:
        raise UserError("scaling: --repeats and --steps must be >= 1 and --warmup >= 0")
    launcher = None
    if a.slurm:
        from .submit import slurm_launcher
        launcher = slurm_launcher(a)
    sweep(a.config, a.mode, parse_ranks(a.ranks), a.out, a.repeats, a.steps, a.warmup, a.batch, a.overrides,
          launcher=launcher)
    return 0


def cmd_report(a):
    from .report import write_report
    if not os.path.isdir(os.path.join(a.dir, "runs")):
        raise UserError(f"report: {a.dir}/runs not found (expected the output folder of a scaling sweep)")
    try:
        print(write_report(a.dir))
    except ValueError as e:
        raise UserError(f"report: {e}") from None
    return 0


def cmd_bench_comm(a):
    import json
    import tempfile
    from .benchcomm import analyse
    if a.ranks < 2:
        raise UserError("bench-comm -n: an all-reduce needs at least 2 ranks")
    if (a.alpha_us is None) != (a.bandwidth_gbps is None):
        raise UserError("bench-comm: give both --alpha-us and --bandwidth-gbps, or neither")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("bench-comm: no mpiexec found (pip install mpich)")
    os.makedirs(a.out, exist_ok=True)
    raw = os.path.join(a.out, "bench_comm_raw.json")
    rc = subprocess.run([mpiexec, "-n", str(a.ranks), sys.executable, "-m", "ddp_scratch.benchcomm", raw],
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).returncode
    if rc != 0:
        raise UserError(f"bench-comm: the measurement failed with exit status {rc}")
    with open(raw) as f:
        meas = json.load(f)["measured"]
    compute = {}
    for path in filter(None, a.configs.split(",")):
        compute[os.path.splitext(os.path.basename(path))[0]] = _step_compute(path, tempfile.mkdtemp())
    alpha = a.alpha_us * 1e-6 if a.alpha_us is not None else None
    beta = 1 / (a.bandwidth_gbps * 1e9) if a.bandwidth_gbps is not None else None
    res = analyse(meas, a.ranks, a.out, alpha, beta, compute)
    f = res["fit"]
    print(f"fit: alpha {f['alpha_s'] * 1e6:.2f} us, bandwidth {f['bandwidth_GBps'] or 0:.2f} GB/s, r2 {f['r2']:.3f}")
    for name, p in res["projections"].items():
        eff = ", ".join(f"{r['world_size']}: {r['efficiency']:.2f}" for r in p["weak"])
        print(f"{name} (compute {p['compute_s'] * 1e3:.2f} ms/step, {p['grad_bytes'] / 1e6:.1f} MB grads) "
              f"weak efficiency {eff}")
    print(f"-> {a.out}/bench_comm.json, {a.out}/bench_comm.png")
    return 0


def _step_compute(config, out):
    """Median compute seconds of a training step on one rank here, and the gradient bytes."""
    from .comm import Comm
    from .config import load_config
    from .train import Options, Trainer
    cfg = load_config(config, ["train.max_steps=12", "train.epochs=0", "logging.progress=false",
                               "train.timing_skip=2", "train.checkpoint_every=0"])
    tr = Trainer(cfg, Options(out=out, quiet=True, overwrite=True), comm=Comm(serial=True))
    s = tr.run()
    return s["timing"]["compute_s"]["median"], tr.space.n_params * tr.space.params.itemsize


def cmd_submit(a):
    from .submit import submit
    return submit(a)


HANDLERS = {"submit": cmd_submit, "train": cmd_train, "local": cmd_local, "download": cmd_download, "scaling": cmd_scaling,
            "report": cmd_report, "bench-comm": cmd_bench_comm}


# ----------------------------------------------------------------------------- sample (GPT)
EXAMPLES["sample"] = """
      python launch.py sample runs/gpt_char/checkpoint.npz --prompt "The " --tokens 300 --top-k 10 --seed 1
      python launch.py sample runs/gpt_addition/checkpoint.npz --prompt "47+38=" --tokens 4 --temperature 0"""


def _sample_parser(cmd):
    p = cmd("sample", "continue a prompt with a trained GPT checkpoint")
    p.add_argument("checkpoint", help="OUT/checkpoint.npz of a gpt training run")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=200, metavar="N", help="characters to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text (default 0)")


_EXTRA_COMMANDS.append(_sample_parser)


def cmd_sample(a):
    set_threads()
    from .sample import run_sample
    return run_sample(a)


HANDLERS["sample"] = cmd_sample


def _mpi_world():
    """(rank, size, MPI module) if MPI is already initialised in this process, else (0, 1, None)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None or not mod.Is_initialized() or mod.Is_finalized():
        return 0, 1, None
    return mod.COMM_WORLD.Get_rank(), mod.COMM_WORLD.Get_size(), mod


def _env_rank():
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.cmd](args)
    except UserError as e:
        rank, size, mpi = _mpi_world()
        # Errors raised before MPI starts (config, CLI) or agreed collectively are the same on
        # every rank: say them once, from rank 0.
        if (mpi is None and _env_rank() != 0) or (getattr(e, "collective", False) and rank != 0):
            return e.exit_code
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:
        from .train import Stopped
        if isinstance(e, Stopped):
            rank, _, _ = _mpi_world()
            if rank == 0:
                print(str(e), file=sys.stderr, flush=True)
            return e.code
        rank, size, mpi = _mpi_world()
        if size > 1:    # the other ranks may sit in a collective: take the whole world down now
            import traceback
            traceback.print_exc()
            print(f"error: rank {rank}: {type(e).__name__}: {e}; aborting all {size} ranks",
                  file=sys.stderr, flush=True)
            mpi.COMM_WORLD.Abort(1)
            os._exit(1)
        raise
