"""The run file of a scaling sweep (DIR/runs/*.json): reading it safely and checking every field
the report uses, so that no file content can cause anything but one ValueError naming the file
and the field (the command line turns it into one `error:` line).

Schema (written by cli/sweep.py run_json; "stat" = {"min", "median", "max"}):
  mode "strong"|"weak"; config, model: names; world_size int >= 1; repeat int >= 0;
  global_batch >= 1; per_rank_batch > 0; steps int >= 1; samples_per_s, flops_per_s >= 0;
  tokens_per_s, mfu: >= 0 or null; step_time_s, compute_s, comm_s, wait_s: stats in seconds
  (median step > 0); peak_mem_bytes: stat; energy: {source, joules_per_step, joules_per_epoch,
  ops_per_joule, mean_watts (each >= 0 or null)}; optional device/backend/dtype (string or null),
  n_params (integer >= 1 or null) and environment (null or the object of study/environment.py).
  Optional, written since the sweep records communication (older files lack them: unknown):
  setting (the --compare values of the point, "comm.algorithm=ring, ..." or null) and setting_order
  (its place in the command's order: the report lists settings so; integer >= 0 or null), comm (null or
  {algorithm, compress: strings; error_feedback: bool; zero: integer where the config has
  optim.zero}), comm_bytes_per_step (bytes one rank sent per step, >= 0 or null) with
  comm_bytes_per_step_source ("counted", "model", "none" or null) and optim_state_bytes_per_rank
  (>= 0 or null).

A series is the points of one (mode, config, setting). Files that do not belong in one report are
refused as well (check_together): two files for one point (a series' world_size and repeat), or
points of one series that differ in what the series compares: the model (its name, n_params, its
FLOPs per sample), the batch that the mode holds fixed (per_rank_batch for weak, global_batch for
strong), the dtype or the communication settings.
"""
from __future__ import annotations

import json
import math
import os
import stat as st
from pathlib import Path

__all__ = ["load_runs", "validate_run", "check_together", "clean", "series_key", "comm_label", "ENERGY_LABELS",
           "REQUIRED"]

STAT_KEYS = ("step_time_s", "compute_s", "comm_s", "wait_s", "peak_mem_bytes")
ENERGY_KEYS = ("source", "joules_per_step", "joules_per_epoch", "ops_per_joule", "mean_watts")
REQUIRED = ("mode", "config", "model", "world_size", "repeat", "global_batch",
            "per_rank_batch", "steps", "samples_per_s", "tokens_per_s",
            "flops_per_s", "mfu", "energy") + STAT_KEYS
MIN_STEP_S, MAX_SECONDS = 1e-9, 1e6      # a step below a nanosecond or above ~11 days is no timing
MAX_VALUE = 1e30                          # rates, bytes, joules: above any machine, far from overflow
MAX_WORLD, MAX_NAME, MAX_RUN_BYTES = 1 << 24, 200, 64 << 20
ENV_TEXT = ("cpu_model", "gpu_driver", "mpi_library", "numpy", "blas", "python", "os", "date_utc",
            "git_commit")
ENV_COUNT = ("ranks", "logical_cores", "cores_available")
SAME_REL = 1e-6          # model FLOPs per sample of one series agree to rounding (exactly one model)

ENERGY_LABELS = {
    "measured-rapl": "measured: Intel RAPL package counters (host-wide, all processes)",
    "measured-nvml": "measured: NVML GPU total-energy counter (whole device)",
    "estimated-horowitz45nm": "ESTIMATED, not measured: FLOP and DRAM-byte counts x "
                              "Horowitz ISSCC'14 45 nm per-op energies (dynamic "
                              "energy only, a lower bound)",
    "estimated-tdp": "ESTIMATED, not measured: run time x nominal TDP/power limit",
    "none": "no energy recorded",
}


def clean(s, limit=MAX_NAME) -> str:
    """Any value as one printable line of at most `limit` characters (for messages, tables, plots)."""
    if s is None:
        return ""
    s = s if isinstance(s, str) else _show(s)
    s = s.encode("utf-8", "replace").decode("utf-8")
    s = "".join(c if c.isprintable() else " " for c in s)
    return s if len(s) <= limit else s[:max(0, limit - 1)] + "…"


def _show(v) -> str:
    """A short JSON-like rendering of a value for a message (never raises)."""
    if isinstance(v, dict):
        return f"an object with {len(v)} keys"
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    try:
        text = json.dumps(v, ensure_ascii=True)
    except (ValueError, TypeError, RecursionError, OverflowError):
        return f"a {type(v).__name__}"
    return text if len(text) <= 60 else text[:59] + "…"


def _num(x):
    """x as a finite float, or None if it is not a finite JSON number (bools are not numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def validate_run(run, name: str) -> dict:
    """Raise ValueError naming ``name`` and the field if ``run`` does not follow the schema."""
    name = clean(str(name), 300)

    def bad(field, expected, got):
        raise ValueError(f"{name}: {field} must be {expected}, got {_show(got)}")

    def number(obj, key, field, lo=0.0, hi=MAX_VALUE, null=False, what=None):
        v = obj.get(key)
        if v is None and null:
            return
        f = _num(v)
        if f is None or not lo <= f <= hi:
            bad(field, (what or f"a number from {lo:g} to {hi:g}") + (" or null" if null else ""), v)

    def integer(obj, key, field, lo, hi):
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            bad(field, f"an integer from {lo} to {hi}", v)

    def text(obj, key, field, null=False):
        v = obj.get(key)
        if v is None and null:
            return
        if not isinstance(v, str) or not v or len(v) > MAX_NAME or clean(v) != v:
            bad(field, f"a one-line string of 1 to {MAX_NAME} printable characters"
                + (" or null" if null else ""), v)

    if not isinstance(run, dict):
        raise ValueError(f"{name}: expected a JSON object (one run of a sweep), got {_show(run)}")
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        raise ValueError(f"{name}: missing keys {missing} (expected a run file of `launch.py scaling`, "
                         f"an object with the keys {', '.join(REQUIRED)})")
    if run["mode"] not in ("strong", "weak") or not isinstance(run["mode"], str):
        bad("mode", "'strong' or 'weak'", run["mode"])
    text(run, "config", "config")
    text(run, "model", "model")
    integer(run, "world_size", "world_size", 1, MAX_WORLD)
    integer(run, "repeat", "repeat", 0, 10**9)
    integer(run, "steps", "steps", 1, 10**12)
    number(run, "global_batch", "global_batch", 1.0)
    number(run, "per_rank_batch", "per_rank_batch", 1e-9, what="a positive number")
    for k in ("samples_per_s", "flops_per_s"):
        number(run, k, k)
    for k in ("tokens_per_s", "mfu"):
        number(run, k, k, null=True)
    for k in STAT_KEYS:
        s = run[k]
        if not isinstance(s, dict):
            bad(k, "an object with min, median and max", s)
        hi = MAX_VALUE if k == "peak_mem_bytes" else MAX_SECONDS
        for q in ("min", "median", "max"):
            number(s, q, f"{k}.{q}", 0.0, hi)
    number(run["step_time_s"], "median", "step_time_s.median", MIN_STEP_S, MAX_SECONDS,
           what=f"a time in seconds from {MIN_STEP_S:g} to {MAX_SECONDS:g}")
    e = run["energy"]
    if not isinstance(e, dict):
        bad("energy", "an object with " + ", ".join(ENERGY_KEYS), e)
    missing = [k for k in ENERGY_KEYS if k not in e]
    if missing:
        raise ValueError(f"{name}: energy is missing keys {missing}")
    text(e, "source", "energy.source")
    for k in ENERGY_KEYS[1:]:
        number(e, k, f"energy.{k}", null=True)
    for k in ("device", "backend", "dtype"):
        if run.get(k) is not None and not isinstance(run[k], str):
            bad(k, "a string or null", run[k])
    if run.get("n_params") is not None:
        integer(run, "n_params", "n_params", 1, 10**15)
    _validate_environment(run.get("environment"), bad)
    _validate_comm(run, bad, text, number, integer)
    return run


def _validate_comm(run, bad, text, number, integer):
    text(run, "setting", "setting", null=True)
    if run.get("setting_order") is not None:
        integer(run, "setting_order", "setting_order", 0, 10**6)
    text(run, "comm_bytes_per_step_source", "comm_bytes_per_step_source", null=True)
    number(run, "comm_bytes_per_step", "comm_bytes_per_step", null=True)
    number(run, "optim_state_bytes_per_rank", "optim_state_bytes_per_rank", null=True)
    c = run.get("comm")
    if c is None:
        return
    if not isinstance(c, dict):
        bad("comm", "an object {algorithm, compress, error_feedback, zero} or null", c)
    for k in ("algorithm", "compress"):
        if c.get(k) is not None:
            text(c, k, f"comm.{k}")
    if c.get("error_feedback") is not None and not isinstance(c["error_feedback"], bool):
        bad("comm.error_feedback", "true, false or null", c["error_feedback"])
    z = c.get("zero")
    if z is not None and (isinstance(z, bool) or not isinstance(z, int) or not 0 <= z <= 3):
        bad("comm.zero", "an integer from 0 to 3 or null", z)


def series_key(r) -> tuple:
    """(mode, config, setting) of a run or an aggregated row; setting '' where none was compared."""
    return r["mode"], r["config"], r.get("setting") or ""


def comm_label(comm) -> str | None:
    """{'algorithm': 'ring', 'compress': 'bf16', ...} -> 'ring, bf16, error feedback, ZeRO-1' (None: unknown)."""
    if not comm:
        return None
    parts = [clean(comm.get("algorithm") or "?", 40), clean(comm.get("compress") or "none", 40)]
    if comm.get("error_feedback"):
        parts.append("error feedback")
    if comm.get("zero") is not None:
        parts.append(f"ZeRO-{comm['zero']}")
    return ", ".join(parts)


def _validate_environment(env, bad):
    if env is None:
        return
    if not isinstance(env, dict):
        bad("environment", "an object (hosts, cpu_model, threads_per_rank, ...: where the run ran) or null", env)
    for k in ENV_TEXT:
        if env.get(k) is not None and not isinstance(env[k], str):
            bad(f"environment.{k}", "a string or null", env[k])
    for k in ENV_COUNT:
        v = env.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10**9):
            bad(f"environment.{k}", "an integer >= 0 or null", v)
    v = env.get("threads_per_rank")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, str))):
        bad("environment.threads_per_rank", "an integer, a string or null", v)
    if env.get("git_dirty") is not None and not isinstance(env["git_dirty"], bool):
        bad("environment.git_dirty", "true, false or null", env["git_dirty"])
    hosts = env.get("hosts")
    if hosts is not None and not (isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)):
        bad("environment.hosts", "a list of host names or null", hosts)
    gpus = env.get("gpus")
    if gpus is None:
        return
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        bad("environment.gpus", "a list of objects or null", gpus)
    for i, g in enumerate(gpus):
        if g.get("name") is not None and not isinstance(g["name"], str):
            bad(f"environment.gpus[{i}].name", "a string or null", g["name"])


def _kind(mode) -> str:
    for test, what in ((st.S_ISDIR, "a directory"), (st.S_ISFIFO, "a FIFO"), (st.S_ISSOCK, "a socket"),
                       (st.S_ISCHR, "a character device"), (st.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def _no_constants(c):
    raise ValueError(f"{c} is not a JSON number")


def read_run_file(path) -> object:
    """The JSON value in `path`; ValueError for anything but a readable regular file of JSON.

    Opened non-blocking and checked with fstat before reading, so a FIFO or a device named
    x.json is refused at once instead of blocking the report."""
    name = clean(str(path), 300)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ValueError(f"{name}: cannot open: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not st.S_ISREG(info.st_mode):
            raise ValueError(f"{name}: is {_kind(info.st_mode)}, expected a regular JSON file")
        if info.st_size > MAX_RUN_BYTES:
            raise ValueError(f"{name}: {info.st_size} bytes, expected a run file under {MAX_RUN_BYTES} bytes")
        chunks, size = [], 0
        while size <= MAX_RUN_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ValueError(f"{name}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data.strip():
        raise ValueError(f"{name}: invalid JSON: the file is empty (expected one run object)")
    try:
        return json.loads(data.decode("utf-8-sig"), parse_constant=_no_constants)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: invalid JSON: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{name}: invalid JSON: nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{name}: invalid JSON: {clean(str(e), 120)}") from None


def load_runs(directory) -> list[dict]:
    """Read and validate every ``DIR/runs/*.json`` (sorted by file name), then check_together."""
    run_dir = Path(directory) / "runs"
    try:
        files = sorted(run_dir.glob("*.json"))
    except OSError as e:
        raise ValueError(f"cannot list {clean(str(run_dir), 300)}: {e.strerror or e}") from None
    if not files:
        raise ValueError(f"no run files found in {clean(str(run_dir), 300)} (expected runs/*.json "
                         "from a scaling sweep)")
    named = [(str(f), validate_run(read_run_file(f), str(f))) for f in files]
    check_together(named)
    return [r for _, r in named]


def _flops_per_sample(r):
    return r["flops_per_s"] / r["samples_per_s"] if r["flops_per_s"] > 0 and r["samples_per_s"] > 0 else None


def _counted(v) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) and float(v).is_integer() else clean(v, 40)


def _identity(r) -> dict:
    """{what: value} of what a series holds fixed, as far as this run file knows it (None: unknown)."""
    batch = ("per-rank batch", r["per_rank_batch"]) if r["mode"] == "weak" else ("global batch", r["global_batch"])
    return {"model": r["model"], "parameters": r.get("n_params"), batch[0]: batch[1], "dtype": r.get("dtype"),
            "model FLOPs per sample": _flops_per_sample(r), "communication": comm_label(r.get("comm"))}


def _same(what, x, y) -> bool:
    if x is None or y is None:                      # unknown (an older file) is no difference
        return True
    if what == "model FLOPs per sample":
        return abs(x - y) <= SAME_REL * max(x, y)
    return x == y


def _differences(a, b) -> list[str]:
    """What differs between two runs of one series, in words ('per-rank batch 8 vs 64')."""
    ia, ib = _identity(a), _identity(b)
    return [f"{what} {_counted(ia[what])} vs {_counted(ib[what])}" for what in ia if not _same(what, ia[what], ib[what])]


def check_together(named) -> None:
    """Refuse [(file name, run)] that cannot make one report: two files for one point, or points
    of one series that compare different things (see the module docstring), each compared with
    the first file of the series that records that field. One ValueError naming both files; the
    runs are already validated."""
    point, known = {}, {}
    for name, r in named:
        key = (*series_key(r), r["world_size"], r["repeat"])
        setting = f", {clean(key[2], 100)}" if key[2] else ""
        if key in point:
            raise ValueError(
                f"two run files for one point ({r['mode']} scaling of {clean(r['config'], 60)}{setting}, "
                f"N = {r['world_size']}, repeat {r['repeat']}): {point[key]} and {name}; every file in runs/ "
                "counts as a run, so a copied or renamed file counts twice: keep one of them")
        point[key] = name
        first = known.setdefault(series_key(r), {})     # what -> (file, its value, its run)
        for what, value in _identity(r).items():
            if what in first and not _same(what, first[what][1], value):
                other, _, other_run = first[what]
                raise ValueError(
                    f"{other} and {name} are not one series ({r['mode']} scaling of "
                    f"{clean(r['config'], 60)}{setting}): {'; '.join(_differences(other_run, r))}; a sweep with "
                    "another model, batch, dtype or communication needs its own output folder (scaling --out "
                    "NEW_FOLDER) or to be one of the settings of scaling --compare, "
                    "or move the older run files out of runs/")
            if value is not None:
                first.setdefault(what, (name, value, r))
