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


MAX_RANKS_PER_CORE = 16     # beyond this a local point would only thrash (1000 ranks on 2 cores hung)


def check_sweep(config, mode, ranks, out, batch, overrides, steps, warmup, slurm=False, overwrite=False, log=print):
    """Everything a point would refuse, for every point, before the first one starts. Returns
    (config, batch, the overrides every point gets, the sweep's identity)."""
    from ..config import load_config
    from ..data.tasks import check_data
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
    _check_same_sweep(out, ident, overwrite)
    check_data(cfg)
    if not slurm:
        for n in ranks:
            if n > MAX_RANKS_PER_CORE * cores:
                raise UserError(f"scaling --ranks: {n} ranks on the {cores} cores here would only thrash "
                                f"(at most {MAX_RANKS_PER_CORE * cores}); run large worlds with --slurm")
            if n * threads > cores:
                log(f"warning: {n} ranks x {threads} thread(s) = {n * threads} > {cores} cores here: the ranks "
                    "share cores, so this point measures oversubscription, not scaling")
        log(f"threads per rank: {threads} at every point" + ("" if cfg.train.threads else
                                                           f" (the {cores} cores here over at most {max(ranks)} ranks)"))
    return cfg, batch, common, ident


def _check_same_sweep(out, ident, overwrite):
    """A sweep folder holds one sweep: runs of another (other config, mode, batch, overrides,
    steps) would be mixed into one report. Refused, or replaced with --overwrite."""
    path = os.path.join(out, "sweep.json")
    runs = os.path.join(out, "runs")
    old = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
    elif not (os.path.isdir(runs) and any(f.endswith(".json") for f in os.listdir(runs))):
        return
    if old == ident:
        return
    if not overwrite:
        what = ", ".join(f"{k} {old.get(k)!r} before, {v!r} now" for k, v in ident.items()
                         if isinstance(old, dict) and old.get(k) != v) if old else "runs of an unrecorded sweep"
        raise UserError(f"scaling --out {out} holds another sweep ({what}); use a new --out, or --overwrite "
                        "to replace its runs")
    for f in os.listdir(runs):
        if f.endswith(".json"):
            os.remove(os.path.join(runs, f))


def sweep(config, mode, ranks, out, repeats=1, steps=20, warmup=5, batch=None, overrides=(),
          launcher=None, log=print, overwrite=False):
    """Run the sweep locally through mpiexec (or `launcher(n, argv) -> returncode`)."""
    from .local import Launch, signal_count, signals_since
    cfg, batch, common, ident = check_sweep(config, mode, ranks, out, batch, overrides, steps, warmup,
                                            launcher is not None, overwrite, log)
    mark = signal_count()
    name = os.path.splitext(os.path.basename(config))[0]
    points = [(n, r) for n in ranks for r in range(repeats)]
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    atomic_write_text(os.path.join(out, "sweep.json"), json.dumps(ident, indent=1) + "\n")
    mpiexec = find_mpiexec()
    if mpiexec is None and max(ranks) > 1 and launcher is None:
        raise UserError("scaling: no mpiexec found (pip install mpich)")
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
                                   f"({n} rank(s)); the {k} finished point(s) are in {out}/runs "
                                   f"(launch.py report {out} builds a report from them)",
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
