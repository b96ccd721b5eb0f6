"""Strong and weak scaling sweeps: run one training per (ranks, repeat), reduce each to a run
JSON (DIR/runs/*.json, the schema of study/report.py), then build the CSV, plots and report.

Strong scaling keeps the global batch fixed (each of N ranks gets batch/N); weak scaling keeps the
per-rank batch fixed (global batch = N x batch). Each point runs `warmup + steps` optimizer steps
and only the last `steps` are timed.

`--compare KEY=V1,V2` (repeatable) sweeps settings as well as ranks: every combination of the
compared values that the config accepts is one setting, measured at every rank count, and each
setting is a series of its own in the report (e.g. comm.algorithm=mpi,ring). Combinations the
config refuses (comm.compress=bf16 with comm.algorithm=mpi) are left out and said so; a value that
no combination accepts is refused.
"""
import itertools
import json
import os
import re
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
    twice = sorted({r for r in ranks if ranks.count(r) > 1})
    if twice:        # a point twice is what --repeats is for; said, not silently dropped
        raise UserError(f"--ranks: {', '.join(map(str, twice))} given twice in {text!r}: expected distinct world "
                        "sizes (use --repeats N to measure a point N times)")
    return sorted(ranks)


# keys every point sets itself (point_overrides, the pinned thread count): not comparable settings
SWEEP_KEYS = ("train.batch_size", "train.max_steps", "train.timing_skip", "train.epochs", "train.checkpoint_every",
              "train.check_every", "logging.progress", "train.threads")


def _split_values(text):
    """'a,[1,2],b' -> ['a', '[1,2]', 'b']: commas inside brackets belong to a list value."""
    out, depth, cur = [], 0, ""
    for c in text:
        depth += (c in "[{") - (c in "]}")
        if c == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
    return [*out, cur]


def parse_compare(texts, overrides=()):
    """--compare KEY=V1,V2 flags -> [(key, [values])]; every malformed form is one UserError."""
    dims, set_keys = [], {o.partition("=")[0].strip() for o in overrides}
    for text in texts:
        key, sep, raw = str(text).partition("=")
        key = key.strip()
        if not sep or not key or " " in key or any(not k for k in key.split(".")):
            raise UserError(f"--compare {text!r}: expected KEY=VALUE1,VALUE2 with a config key, "
                            "e.g. --compare comm.algorithm=mpi,ring")
        values = [v.strip() for v in _split_values(raw)]
        if any(not v for v in values):
            raise UserError(f"--compare {text!r}: an empty value; expected KEY=VALUE1,VALUE2 "
                            "(comma-separated, none empty), e.g. --compare comm.compress=none,bf16")
        if len(values) < 2:
            raise UserError(f"--compare {text!r}: expected two or more values to compare "
                            f"(one value for every point is --set {key}={raw.strip()})")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise UserError(f"--compare {text!r}: {', '.join(dup)} given twice; expected distinct values")
        if key in [k for k, _ in dims]:
            raise UserError(f"--compare {key}: given twice; expected one --compare per key with all its values "
                            f"({key}=A,B,C)")
        if key in set_keys:
            raise UserError(f"--compare {key}: also given with --set {key}; a key is either fixed (--set) or "
                            "compared (--compare), not both")
        if key in SWEEP_KEYS:
            raise UserError(f"--compare {key}: the sweep sets it at every point (batch, steps, threads); "
                            "expected another key, e.g. comm.algorithm, comm.compress, optim.zero")
        dims.append((key, values))
    return dims


def setting_label(setting) -> str:
    """(('comm.algorithm', 'ring'), ...) -> 'comm.algorithm=ring, comm.compress=bf16' ('' for none)."""
    return ", ".join(f"{k}={v}" for k, v in setting)


def setting_slug(setting) -> str:
    """The setting in a file or folder name: 'comm.algorithm-ring_comm.compress-bf16'."""
    return "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", f"{k}-{v}").strip("-") for k, v in setting)


def point_name(name, mode, setting, n, r):
    return "-".join([name, mode] + ([setting_slug(setting)] if setting else []) + [f"n{n}", f"r{r}"])


def point_overrides(mode, n, batch, steps, warmup):
    gb = batch if mode == "strong" else batch * n
    if gb < n:
        raise UserError(f"--batch: strong scaling with {n} ranks needs a global batch >= {n}, got {batch}")
    return gb, [f"train.batch_size={gb}", f"train.max_steps={steps + warmup}", f"train.timing_skip={warmup}",
                "train.epochs=0", "train.checkpoint_every=0", "train.check_every=0", "logging.progress=false"]


def _comm_settings(summary):
    """What the run communicated with, from its config (optim.zero where the config has the key)."""
    cfg = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    comm, optim = cfg.get("comm") or {}, cfg.get("optim") or {}
    out = {k: comm[k] for k in ("algorithm", "compress", "error_feedback") if k in comm}
    zero = optim.get("zero", summary.get("optim_zero"))
    if zero is not None:
        out["zero"] = zero
    return out or None


def _optim_state_bytes(summary):
    """Optimizer-state bytes per rank where the summary measures them (ZeRO shards it), else None."""
    for k in ("optim_state_bytes_per_rank", "optimizer_state_bytes_per_rank", "optimizer_state_bytes"):
        v = summary.get(k)
        if isinstance(v, dict):         # a min/median/max over ranks: the largest rank's
            v = v.get("max")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def run_json(summary, mode, config, n, repeat, gb, setting=(), order=None):
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
        "setting": setting_label(setting) or None, "setting_order": order, "comm": _comm_settings(summary),
        "comm_bytes_per_step": summary.get("comm_bytes_per_step"),
        "comm_bytes_per_step_source": summary.get("comm_bytes_per_step_source"),
        "optim_state_bytes_per_rank": _optim_state_bytes(summary),
    }


class SweepStopped(UserError):
    """The sweep was stopped by a signal; finished points stay in OUT/runs."""

    def __init__(self, message, code):
        super().__init__(message)
        self.exit_code = code


def check_sweep(config, mode, ranks, out, batch, overrides, steps, warmup, slurm=False, overwrite=False, log=print,
                resume=False, compare=()):
    """Everything a point would refuse, for every point, before the first one starts. Returns
    (config, batch, the overrides every point gets, the sweep's identity, the threads per rank
    (None: set by the cluster), the run files --overwrite removes, the settings compared)."""
    from ..config import load_config
    from ..data.tasks import check_data
    if resume and overwrite:
        raise UserError("scaling: --resume continues the sweep in --out and --overwrite starts it afresh; "
                        "give one of them")
    dims = parse_compare(compare, overrides)
    cfg = load_config(config, overrides)
    batch = batch or cfg.train.batch_size
    cores = cores_here()
    # One thread count for every point, so the sweep compares ranks, not BLAS threads (by
    # default 1 rank would get all cores, N ranks 1/N each: 'efficiency' above 100 %).
    threads = cfg.train.threads or int(os.environ.get("DDP_THREADS", 0) or 0) or max(1, cores // max(ranks))
    common = [] if slurm or cfg.train.threads else [f"train.threads={threads}"]
    for n in ranks:
        load_config(config, [*overrides, *common, *point_overrides(mode, n, batch, steps, warmup)[1]])
    settings = _settings(config, dims, [*overrides, *common], [point_overrides(mode, n, batch, steps, warmup)[1]
                                                               for n in ranks], log)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"scaling --out {out} is a file, expected a folder")
    ident = {"config": os.path.splitext(os.path.basename(config))[0], "mode": mode, "batch": batch,
             "overrides": list(overrides), "steps": steps, "warmup": warmup}
    if dims:            # only then: the sweep.json of a sweep without --compare stays as it was
        ident["compare"] = [[k, v] for k, v in dims]
    check_data(cfg)
    if not slurm:
        from .checks import check_rank_count, check_rank_memory
        check_rank_count(max(ranks), cores, "scaling --ranks", "run large worlds with --slurm")
        for setting in settings:
            check_rank_memory(load_config(config, [*overrides, *(f"{k}={v}" for k, v in setting), *common,
                                                   *point_overrides(mode, max(ranks), batch, steps, warmup)[1]]),
                              max(ranks), "scaling --ranks")
        for n in ranks:
            if n * threads > cores:
                log(f"warning: {n} ranks x {threads} thread(s) = {n * threads} > {cores} cores here: the ranks "
                    "share cores, so this point measures oversubscription, not scaling")
        log(f"threads per rank: {threads} at every point" + ("" if cfg.train.threads else
                                                           f" (the {cores} cores here over at most {max(ranks)} ranks)"))
    stale = _check_same_sweep(out, ident, overwrite, resume)
    return cfg, batch, common, ident, (None if slurm else cfg.train.threads or threads), stale, settings


def _settings(config, dims, fixed, per_point, log):
    """Every combination of the compared values that the config accepts at every point, as
    ((key, value), ...) tuples ([()] without --compare). Combinations it refuses are left out, said
    in one line each; a value that no combination accepts is refused with the config's reason."""
    from ..config import load_config
    from ..errors import ConfigError
    if not dims:
        return [()]
    kept, why = [], {}
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in dims]):
        try:
            for extra in per_point:
                load_config(config, [*fixed, *(f"{k}={v}" for k, v in combo), *extra])
        except ConfigError as e:
            why[combo] = str(e)
            continue
        kept.append(combo)
    for k, vals in dims:
        for v in vals:
            if not any((k, v) in c for c in kept):
                reason = next(msg for c, msg in why.items() if (k, v) in c)
                raise UserError(f"--compare {k}={','.join(vals)}: {k}={v} is refused in every setting compared: "
                                f"{reason}")
    slugs = {}
    for combo in kept:          # values that differ only in punctuation would share a run file name
        other = slugs.setdefault(setting_slug(combo), combo)
        if other != combo:
            raise UserError(f"--compare: {setting_label(other)!r} and {setting_label(combo)!r} would share the "
                            f"file name {setting_slug(combo)!r}; expected values that differ in letters or digits")
    for combo, msg in why.items():
        log(f"note: --compare: {setting_label(combo)} left out (the config refuses it: {msg})")
    return kept


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
    what = ", ".join(f"{k} {_shown(k, old.get(k))} before, {_shown(k, ident.get(k))} now"
                     for k in [*ident, *(k for k in old if k not in ident)]
                     if old.get(k) != ident.get(k)) if isinstance(old, dict) and old else "runs of an unrecorded sweep"
    raise UserError(f"scaling --out {out} holds another sweep ({what}); "
                    + ("--resume continues only the same sweep; " if resume else "")
                    + "use a new --out, or --overwrite to replace its runs")


def _shown(key, value):
    """A sweep identity's value as the message says it (--compare as it was typed)."""
    if key == "compare":
        return " ".join(f"{k}={','.join(map(str, v))}" for k, v in value) if value else "none"
    return repr(value)


def _finished(path, mode, name, n, r, gb, steps, threads, setting=()):
    """True when `path` is a complete run file of this point of this sweep (--resume keeps it)."""
    from ..study.runfile import read_run_file, validate_run
    try:
        run = validate_run(read_run_file(path), path)
    except ValueError:
        return False
    env = run.get("environment") or {}
    return ((run["mode"], run["config"], run["world_size"], run["repeat"], run["global_batch"], run["steps"])
            == (mode, name, n, r, gb, steps)
            and (run.get("setting") or "") == setting_label(setting)
            and (threads is None or env.get("threads_per_rank") in (None, threads)))


def sweep(config, mode, ranks, out, repeats=1, steps=20, warmup=5, batch=None, overrides=(),
          launcher=None, log=print, overwrite=False, resume=False, compare=()):
    """Run the sweep locally through mpiexec (or `launcher(n, argv) -> returncode`); with resume,
    the points whose run files are complete and of this sweep are kept, not run again. Compared
    settings take turns at each (ranks, repeat), so a drift of the machine's speed over the sweep
    does not fall on one setting."""
    from .local import Launch, signal_count, signals_since
    cfg, batch, common, ident, threads, stale, settings = check_sweep(
        config, mode, ranks, out, batch, overrides, steps, warmup, launcher is not None, overwrite, log, resume,
        compare)
    mark = signal_count()
    name = os.path.splitext(os.path.basename(config))[0]
    points = [(n, r, st) for n in ranks for r in range(repeats) for st in settings]
    if resume:
        kept = [p for p in points if _finished(os.path.join(out, "runs", point_name(name, mode, p[2], p[0], p[1])
                                                            + ".json"), mode, name, p[0], p[1],
                                               point_overrides(mode, p[0], batch, steps, warmup)[0], steps, threads,
                                               p[2])]
        points = [p for p in points if p not in kept]
        log(f"resume: {len(kept)} point(s) already measured, {len(points)} to run")
    if len(settings) > 1:
        log(f"comparing {len(settings)} settings at every point: " + "; ".join(map(setting_label, settings)))
    mpiexec = find_mpiexec()
    if mpiexec is None and max(ranks) > 1 and launcher is None:
        raise UserError("scaling: no mpiexec found (pip install mpich)")
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    for f in stale:             # --overwrite, every check passed: the earlier measurements go
        os.remove(f)
    atomic_write_text(os.path.join(out, "sweep.json"), json.dumps(ident, indent=1) + "\n")
    t0, done_s = time.time(), []
    for k, (n, r, setting) in enumerate(points):
        gb, extra = point_overrides(mode, n, batch, steps, warmup)
        pname = point_name(name, mode, setting, n, r)
        pdir = os.path.join(out, "points", pname[len(name) + 1:])
        eta = (sum(done_s) / len(done_s)) * (len(points) - k) if done_s else None
        log(f"[{k + 1}/{len(points)}] {mode} scaling of {name}: {n} rank(s), repeat {r + 1}/{repeats}, "
            f"global batch {gb}" + (f", {setting_label(setting)}" if setting else "")
            + (f", ETA {eta:.0f}s" if eta is not None else ""))
        argv = [sys.executable, LAUNCH_PY, "train", config, "--out", pdir, "--overwrite", "--quiet"]
        for o in [*overrides, *(f"{key}={v}" for key, v in setting), *common, *extra]:
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
            raise UserError(f"scaling: the run with {n} rank(s)" + (f" ({setting_label(setting)})" if setting else "")
                            + f" failed with exit status {rc} (see above)")
        done_s.append(time.time() - ts)
        with open(os.path.join(pdir, "summary.json")) as f:
            s = json.load(f)
        rj = run_json(s, mode, name, n, r, gb, setting, settings.index(setting) if setting else None)
        atomic_write_text(os.path.join(out, "runs", pname + ".json"), json.dumps(rj, indent=1))
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
