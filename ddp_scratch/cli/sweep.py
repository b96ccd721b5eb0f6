"""Strong and weak scaling sweeps: run one training per (ranks, repeat), reduce each to a run
JSON (DIR/runs/*.json, the schema of study/report.py), then build the CSV, plots and report.

Strong scaling keeps the global batch fixed (each of N ranks gets batch/N); weak scaling keeps the
per-rank batch fixed (global batch = N x batch). Each point runs `warmup + steps` optimizer steps
and only the last `steps` are timed.
"""
import json
import os
import sys
import time

from ..errors import UserError
from ..fsutil import atomic_write_text
from .local import LAUNCH_PY, cores_here, find_mpiexec


def parse_ranks(text):
    try:
        ranks = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--ranks: expected a comma-separated list of integers like 1,2,4, got {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise UserError(f"--ranks: expected positive integers, got {text!r}")
    return sorted(set(ranks))


def point_overrides(mode, n, batch, steps, warmup):
    gb = batch if mode == "strong" else batch * n
    if gb < n:
        raise UserError(f"--batch: strong scaling with {n} ranks needs a global batch >= {n}, got {batch}")
    return gb, [f"train.batch_size={gb}", f"train.max_steps={steps + warmup}", f"train.timing_skip={warmup}",
                "train.epochs=0", "train.checkpoint_every=0", "train.check_every=0", "logging.progress=false"]


def run_json(summary, mode, config, n, repeat, gb):
    """One run of the sweep in the schema study/report.py reads."""
    t = summary.get("timing") or {}
    if not t:
        raise UserError(f"run with {n} ranks timed no steps (increase --steps)")
    e = summary.get("energy") or {}
    step_s = t["step_time_s"]["median"]
    items = summary.get("tokens_per_s") is not None
    per_item = summary.get("items_per_sample", 1)
    return {
        "mode": mode, "config": config, "model": summary["model"], "n_params": summary.get("n_params"), "world_size": n, "repeat": repeat,
        "global_batch": gb, "per_rank_batch": gb / n, "steps": t["steps_timed"],
        "samples_per_s": gb / step_s,
        "tokens_per_s": gb * per_item / step_s if items else None,
        "step_time_s": t["step_time_s"], "compute_s": t["compute_s"], "comm_s": t["comm_s"], "wait_s": t["wait_s"],
        "flops_per_s": summary.get("flops_per_s_timed", summary["flops_per_s"]), "mfu": summary.get("mfu"),
        "peak_mem_bytes": summary["peak_mem_bytes"],
        "energy": {"source": e.get("source", "none"), "joules_per_step": e.get("joules_per_step"),
                   "joules_per_epoch": e.get("joules_per_epoch"), "ops_per_joule": e.get("ops_per_joule"),
                   "mean_watts": e.get("mean_watts")},
        "device": summary.get("device"), "backend": summary.get("backend"), "dtype": summary.get("dtype"),
        "environment": summary.get("environment"),
    }


class SweepStopped(UserError):
    """The sweep was stopped by a signal; finished points stay in OUT/runs."""

    def __init__(self, message, code):
        super().__init__(message)
        self.exit_code = code


def check_sweep(config, mode, ranks, out, batch, overrides, steps, warmup, slurm=False, overwrite=False, log=print,
                resume=False):
    """Everything a point would refuse, for every point, before the first one starts. Returns
    (config, batch, the overrides every point gets, the sweep's identity, the threads per rank
    (None: set by the cluster), the run files --overwrite removes)."""
    from ..config import load_config
    from ..data.tasks import check_data
    if resume and overwrite:
        raise UserError("scaling: --resume continues the sweep in --out and --overwrite starts it afresh; "
                        "give one of them")
    cfg = load_config(config, overrides)
    batch = batch or cfg.train.batch_size
    cores = cores_here()
    # One thread count for every point, so the sweep compares ranks, not BLAS threads (by
    # default 1 rank would get all cores, N ranks 1/N each: 'efficiency' above 100 %).
    threads = cfg.train.threads or int(os.environ.get("DDP_THREADS", 0) or 0) or max(1, cores // max(ranks))
    common = [] if slurm or cfg.train.threads else [f"train.threads={threads}"]
    for n in ranks:
        load_config(config, [*overrides, *common, *point_overrides(mode, n, batch, steps, warmup)[1]])
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"scaling --out {out} is a file, expected a folder")
    ident = {"config": os.path.splitext(os.path.basename(config))[0], "mode": mode, "batch": batch,
             "overrides": list(overrides), "steps": steps, "warmup": warmup}
    check_data(cfg)
    if not slurm:
        from .checks import check_rank_count, check_rank_memory
        check_rank_count(max(ranks), cores, "scaling --ranks", "run large worlds with --slurm")
        check_rank_memory(load_config(config, [*overrides, *common, *point_overrides(mode, max(ranks), batch, steps,
                                                                                      warmup)[1]]),
                          max(ranks), "scaling --ranks")
        for n in ranks:
            if n * threads > cores:
                log(f"warning: {n} ranks x {threads} thread(s) = {n * threads} > {cores} cores here: the ranks "
                    "share cores, so this point measures oversubscription, not scaling")
        log(f"threads per rank: {threads} at every point" + ("" if cfg.train.threads else
                                                           f" (the {cores} cores here over at most {max(ranks)} ranks)"))
    stale = _check_same_sweep(out, ident, overwrite, resume)
    return cfg, batch, common, ident, (None if slurm else cfg.train.threads or threads), stale


def _check_same_sweep(out, ident, overwrite, resume=False):
    """A sweep folder holds one sweep: runs of another (other config, mode, batch, overrides,
    steps) would be mixed into one report, and the same sweep again would silently replace its
    measurements. Refused, unless --resume (the same sweep: keep its finished points) or
    --overwrite (start afresh). Returns the run files to remove once every check has passed."""
    path = os.path.join(out, "sweep.json")
    runs = os.path.join(out, "runs")
    done = sorted(f for f in os.listdir(runs) if f.endswith(".json")) if os.path.isdir(runs) else []
    old = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
    elif not done:
        return []
    if overwrite:
        return [os.path.join(runs, f) for f in done]
    if old == ident:
        if resume or not done:
            return []
        raise UserError(f"scaling --out {out} already holds {len(done)} run file(s) of this sweep; --resume "
                        "continues it (runs only the points not measured yet), --overwrite measures every "
                        "point afresh, or use a new --out")
    what = ", ".join(f"{k} {old.get(k)!r} before, {v!r} now" for k, v in ident.items()
                     if isinstance(old, dict) and old.get(k) != v) if old else "runs of an unrecorded sweep"
    raise UserError(f"scaling --out {out} holds another sweep ({what}); "
                    + ("--resume continues only the same sweep; " if resume else "")
                    + "use a new --out, or --overwrite to replace its runs")


def _finished(path, mode, name, n, r, gb, steps, threads):
    """True when `path` is a complete run file of this point of this sweep (--resume keeps it)."""
    from ..study.runfile import read_run_file, validate_run
    try:
        run = validate_run(read_run_file(path), path)
    except ValueError:
        return False
    env = run.get("environment") or {}
    return ((run["mode"], run["config"], run["world_size"], run["repeat"], run["global_batch"], run["steps"])
            == (mode, name, n, r, gb, steps)
            and (threads is None or env.get("threads_per_rank") in (None, threads)))


def sweep(config, mode, ranks, out, repeats=1, steps=20, warmup=5, batch=None, overrides=(),
          launcher=None, log=print, overwrite=False, resume=False):
    """Run the sweep locally through mpiexec (or `launcher(n, argv) -> returncode`); with resume,
    the points whose run files are complete and of this sweep are kept, not run again."""
    from .local import Launch, signal_count, signals_since
    cfg, batch, common, ident, threads, stale = check_sweep(config, mode, ranks, out, batch, overrides, steps,
                                                            warmup, launcher is not None, overwrite, log, resume)
    mark = signal_count()
    name = os.path.splitext(os.path.basename(config))[0]
    points = [(n, r) for n in ranks for r in range(repeats)]
    if resume:
        def run_path(p):
            return os.path.join(out, "runs", f"{name}-{mode}-n{p[0]}-r{p[1]}.json")
        kept = [p for p in points if _finished(run_path(p), mode, name, p[0], p[1],
                                               point_overrides(mode, p[0], batch, steps, warmup)[0], steps, threads)]
        points = [p for p in points if p not in kept]
        log(f"resume: {len(kept)} point(s) already measured, {len(points)} to run")
    mpiexec = find_mpiexec()
    if mpiexec is None and max(ranks) > 1 and launcher is None:
        raise UserError("scaling: no mpiexec found (pip install mpich)")
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    for f in stale:             # --overwrite, every check passed: the earlier measurements go
        os.remove(f)
    atomic_write_text(os.path.join(out, "sweep.json"), json.dumps(ident, indent=1) + "\n")
    t0, done_s = time.time(), []
    for k, (n, r) in enumerate(points):
        gb, extra = point_overrides(mode, n, batch, steps, warmup)
        pdir = os.path.join(out, "points", f"{mode}-n{n}-r{r}")
        eta = (sum(done_s) / len(done_s)) * (len(points) - k) if done_s else None
        log(f"[{k + 1}/{len(points)}] {mode} scaling of {name}: {n} rank(s), repeat {r + 1}/{repeats}, "
            f"global batch {gb}" + (f", ETA {eta:.0f}s" if eta is not None else ""))
        argv = [sys.executable, LAUNCH_PY, "train", config, "--out", pdir, "--overwrite", "--quiet"]
        for o in [*overrides, *common, *extra]:
            argv += ["--set", o]
        ts = time.time()
        if launcher is not None:
            rc = launcher(n, argv)
        else:
            rc = Launch(([mpiexec, "-n", str(n)] if n > 1 else []) + argv, mpi=n > 1, env={"DDP_NESTED": "1"},
                        out=pdir).run()
            got = signals_since(mark)
            if got:
                raise SweepStopped(f"scaling: stopped by {got[0]} during point {k + 1}/{len(points)} "
                                   f"({n} rank(s)); the {k} finished point(s) are in {out}/runs; "
                                   f"the same command with --resume continues the sweep "
                                   f"(launch.py report {out} builds a report from what is there)",
                                   130 if got[0] == "SIGINT" else 75)
        if rc != 0:
            raise UserError(f"scaling: the run with {n} rank(s) failed with exit status {rc} (see above)")
        done_s.append(time.time() - ts)
        with open(os.path.join(pdir, "summary.json")) as f:
            s = json.load(f)
        rj = run_json(s, mode, name, n, r, gb)
        atomic_write_text(os.path.join(out, "runs", f"{name}-{mode}-n{n}-r{r}.json"), json.dumps(rj, indent=1))
    from ..study.report import write_report
    path = write_report(out)
    if cfg.logging.wandb:
        _log_wandb(cfg, out, name, mode)
    log(f"sweep done in {time.time() - t0:.0f}s: {path}")
    return path


def _log_wandb(cfg, out, name, mode):
    """The aggregate table and the plots, as one W&B run (offline unless asked)."""
    import csv
    import glob
    os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
    try:
        import wandb
        run = wandb.init(project=cfg.logging.wandb_project, name=f"{name}-{mode}-scaling", dir=os.path.abspath(out),
                         config=cfg.to_dict(), job_type="scaling")
        with open(os.path.join(out, "scaling.csv")) as f:
            rows = list(csv.reader(f))
        run.log({"scaling": wandb.Table(columns=rows[0], data=rows[1:]),
                 **{os.path.basename(p)[:-4]: wandb.Image(p) for p in glob.glob(os.path.join(out, "plots", "*.png"))}})
        run.finish()
    except Exception as e:      # logging never fails a finished sweep
        print(f"warning: wandb logging of the sweep failed ({type(e).__name__}: {e})", flush=True)
