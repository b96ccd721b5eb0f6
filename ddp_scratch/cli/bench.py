"""`launch.py bench-comm`: the all-reduce micro-benchmark under mpiexec, then its fit and projection."""
import json
import os
import sys
import tempfile

from ..errors import UserError
from .local import LAUNCH_PY, Launch, cores_here, find_mpiexec, warn_if_oversubscribed


def _check_args(a):
    """Every refusal before the measurement starts: one line, exit status 2."""
    if a.ranks < 2:
        raise UserError("bench-comm -n: an all-reduce needs at least 2 ranks")
    from .checks import check_rank_count, check_rank_memory
    check_rank_count(a.ranks, cores_here(), "bench-comm -n")
    check_rank_memory(None, a.ranks, "bench-comm -n")
    if (a.alpha_us is None) != (a.bandwidth_gbps is None):
        raise UserError("bench-comm: give both --alpha-us and --bandwidth-gbps, or neither")
    from ..study.bench_comm import check_given
    try:                             # positive, finite, and what an interconnect can have
        check_given(a.alpha_us, a.bandwidth_gbps)
    except ValueError as e:
        raise UserError(f"bench-comm {e}") from None
    from ..config import load_config
    a.configs = [_config_path(p) for p in filter(None, (p.strip() for p in a.configs.split(",")))]
    from ..data.tasks import check_data
    for path in a.configs:           # a bad config or data file fails now, not after the measurement
        check_data(load_config(path))
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise UserError(f"bench-comm --out: {a.out} is a file, expected a folder (new or existing)")
    if os.path.exists(os.path.join(a.out, "bench_comm.json")) and not a.overwrite:   # as train and scaling do
        raise UserError(f"bench-comm --out: {a.out} already holds a measurement (bench_comm.json); "
                        "choose another --out, or --overwrite to replace it")
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"bench-comm --out: cannot create {a.out} ({e.strerror or e})") from None
    if not os.access(a.out, os.W_OK):
        raise UserError(f"bench-comm --out: {a.out} is not writable, expected a folder you can write to")


def _config_path(path):
    """A config as given, or else the one of that name in this checkout (the default configs
    are named relative to the repository, wherever bench-comm is started), or a bare name of
    one in experiments/ (mlp_digits: how the projection names them)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    repo = os.path.dirname(LAUNCH_PY)
    for candidate in (path, os.path.join("experiments", path), os.path.join("experiments", path + ".yaml")):
        here = os.path.join(repo, candidate)       # a bare name, as the projection table names them
        if os.path.isfile(here):
            return here
    return path


def cmd_bench_comm(a):
    from ..study.bench_comm import GBPS, analyse, fit_warning, projection_lines, projection_text
    from ..study.environment import describe
    _check_args(a)
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("bench-comm: no mpiexec found (pip install mpich)")
    warn_if_oversubscribed(a.ranks, 1, "bench-comm")
    raw = os.path.abspath(os.path.join(a.out, "bench_comm_raw.json"))     # the ranks run in the repo folder
    run = Launch([mpiexec, "-n", str(a.ranks), sys.executable, "-m", "ddp_scratch.study.bench_comm", raw,
                  f"--algorithm={a.algorithm}"],
                 cwd=os.path.dirname(LAUNCH_PY))
    rc = run.run()
    if run.signals:
        err = UserError(f"bench-comm: stopped by {run.signals[0]} during the measurement; "
                        "bench_comm.json and its plot were not written")
        err.exit_code = 130 if run.signals[0] == "SIGINT" else 75
        raise err
    if rc != 0:
        raise UserError(f"bench-comm: the measurement failed with exit status {rc}")
    try:
        with open(raw) as f:
            meas = json.load(f)["measured"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"bench-comm: the measurement left no readable {raw} ({type(e).__name__})") from None
    compute = {}
    for path in a.configs:
        with tempfile.TemporaryDirectory() as scratch:
            compute[os.path.splitext(os.path.basename(path))[0]] = _step_compute(path, scratch)
    alpha = a.alpha_us * 1e-6 if a.alpha_us is not None else None
    beta = 1 / (a.bandwidth_gbps * 1e9) if a.bandwidth_gbps is not None else None
    res = analyse(meas, a.ranks, a.out, alpha, beta, compute, environment=describe(ranks=a.ranks),
                  algorithm=a.algorithm)
    f = res["fit"]
    print(f"fit: alpha {f['alpha_s'] * 1e6:.2f} us, bandwidth {f['bandwidth_GBps'] or 0:.2f} {GBPS}, "
          f"r2 {f['r2']:.3f}")
    warning = fit_warning(res)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(projection_text(res))
    for line in projection_lines(res):
        print(line)
    print(f"-> {a.out}/bench_comm.json, {a.out}/bench_comm.png (+ .pdf)")
    return 0


def _step_compute(config, out):
    """Median compute seconds of a training step on one rank here, and the gradient bytes."""
    from ..config import load_config
    from ..parallel.world import Comm
    from ..run.trainer import Options, Trainer
    cfg = load_config(config, ["train.max_steps=12", "train.epochs=0", "logging.progress=false",
                               "train.timing_skip=2", "train.checkpoint_every=0"])
    tr = Trainer(cfg, Options(out=out, quiet=True, overwrite=True, signals=False), comm=Comm(serial=True))
    s = tr.run()
    return s["timing"]["compute_s"]["median"], tr.space.n_params * tr.space.params.itemsize
