"""Checkpoints as plain .npz (no pickle, ever): arrays plus one JSON metadata blob stored as bytes.

Written atomically (temporary file, fsync, rename) so a crash mid-write leaves the previous
checkpoint intact; loaded with allow_pickle=False and validated before anything is trusted.
"""
import io
import json
import os

import numpy as np

from .. import backend as B
from ..config import config_hash
from ..errors import CheckpointError
from ..fsutil import atomic_write_bytes, read_regular_file, remove_stale_temps
from ..nn.optim import lr_at

FORMAT = "ddp_scratch-checkpoint"
VERSION = 1


def save(path, arrays: dict, meta: dict):
    meta = {"format": FORMAT, "version": VERSION, **meta}
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, __meta__=blob, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def load(path):
    """-> (arrays dict, meta dict). CheckpointError for anything that is not our checkpoint."""
    raw = read_regular_file(path, "checkpoint", CheckpointError)
    if not raw.startswith(b"PK\x03\x04"):
        what = "empty" if not raw else f"starts with bytes {raw[:4].hex()}"
        raise CheckpointError(f"checkpoint {path} is not an .npz file ({what}; an .npz is a zip archive "
                              "written by ddp_scratch)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects; refused "
                                  "(loading them could run code)") from None
        raise CheckpointError(f"checkpoint {path} is not a valid .npz file ({e})") from None
    except Exception as e:    # a damaged zip can fail in zipfile, zlib, struct, memory, ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                              "expected an .npz written by ddp_scratch") from None
    blob = arrays.pop("__meta__", None)
    try:
        meta = json.loads(blob.tobytes().decode()) if blob is not None and blob.dtype == np.uint8 else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by ddp_scratch (no valid metadata)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')}, expected {VERSION}")
    if "params" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'params' array")
    bad = next((k for k, a in arrays.items() if a.dtype.kind not in "fiu"), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: array {bad!r} has dtype {arrays[bad].dtype}, expected numbers")
    return arrays, meta


def field(meta, path, key, kind):
    """meta[key] checked to be of `kind` (int, dict, list, ...), else a CheckpointError naming it."""
    v = meta.get(key)
    if v is None:
        raise CheckpointError(f"checkpoint {path}: metadata lacks {key!r}")
    if isinstance(v, bool) or not isinstance(v, kind):
        raise CheckpointError(f"checkpoint {path}: metadata {key!r} is {type(v).__name__} {v!r:.40}, "
                              f"expected {kind.__name__}")
    return v


def check_array(a, path, name, shape, dtype):
    """An array of the checkpoint has the shape and dtype the model needs, and finite values."""
    if a.shape != shape or a.dtype != dtype:
        raise CheckpointError(f"checkpoint {path}: array {name!r} is {a.dtype}{list(a.shape)}, "
                              f"expected {dtype}{list(shape)} for this model")
    if not np.isfinite(a).all():
        raise CheckpointError(f"checkpoint {path}: array {name!r} holds non-finite values")


def diff_fingerprints(saved: dict, current: dict, prefix=""):
    """Human-readable differences between two nested config fingerprints."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_fingerprints(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} is {a!r} in the checkpoint but {b!r} now")
    return out


# ----------------------------------------------------------------------------- a trainer's checkpoint

def restore(tr):
    """Put trainer `tr` where its checkpoint left it, after checking the checkpoint fits it. What
    a person should know before it trains on (the run's length changed) goes to tr.notes."""
    path = tr.ckpt_path
    arrays, meta = load(path)
    diffs = diff_fingerprints(field(meta, path, "fingerprint", dict), tr.fp)
    if diffs:      # every one of them: fixing one at a time, run after run, is no way to learn them
        raise CheckpointError(f"checkpoint {path} does not match the config: {'; '.join(diffs)} (resume "
                              "with the settings it was made with, or start afresh with --overwrite)")
    if field(meta, path, "layout", list) != tr.space.layout():
        raise CheckpointError(f"checkpoint {path} holds parameters of another model layout")
    state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
    for name, a in [("params", arrays["params"]), *((f"opt.{k}", v) for k, v in state.items())]:
        check_array(a, path, name, tr.space.params.shape, tr.space.params.dtype)
    missing = [n for n in tr.opt.state_names if n not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks optimizer state {missing[0]!r} "
                              f"(optimizer {tr.cfg.optim.name})")
    step = field(meta, path, "step", int)
    if step < 0:
        raise CheckpointError(f"checkpoint {path}: metadata 'step' is {step}, expected >= 0")
    from .summary import RunState
    tr.state = RunState.from_meta(meta.get("run"), f"checkpoint {path}")
    _check_length(tr, meta, step)
    _note_comm_change(tr, meta)
    tr.space.params[...] = B.xp.asarray(arrays["params"])
    if getattr(tr, "zero", None) is not None:     # ZeRO-1: this rank's slice of the whole state
        state = {k: v[tr.zero.lo:tr.zero.hi] for k, v in state.items()}
    tr.opt.load_state_dict(state | {"t": field(meta, path, "opt_t", int)})
    tr.step = step


# How gradients travel may change on resume (another world, another interconnect), and so may what
# runs the elementwise work (kernels: the same values to rounding), so these keys are not in the
# fingerprint; but a change is said, or a resumed compressed run would read as an uncompressed one
# in its summary without a word. Section None: a top-level key.
COMM_KEYS = (("comm", "algorithm"), ("comm", "compress"), ("comm", "error_feedback"), ("optim", "zero"),
             (None, "kernels"))


def _note_comm_change(tr, meta):
    saved = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    was, now = [], []
    for sec, key in COMM_KEYS:
        if sec is None:
            old, new, name = saved.get(key), getattr(tr.cfg, key), key
        else:
            old = saved.get(sec, {}).get(key) if isinstance(saved.get(sec), dict) else None
            new, name = getattr(getattr(tr.cfg, sec), key), f"{sec}.{key}"
        if old is not None and old != new:
            was.append(f"{name}={str(old).lower() if isinstance(old, bool) else old}")
            now.append(f"{name}={str(new).lower() if isinstance(new, bool) else new}")
    if was:
        tr.notes.append(f"note: the checkpoint was made with {', '.join(was)}; this run goes on with "
                        f"{', '.join(now)} (to keep them, resume with {' '.join('--set ' + w for w in was)})")


def _check_length(tr, meta, step):
    """The run's length may change on resume (train.epochs, train.max_steps are not in the
    fingerprint), but never to before the checkpoint's step, and never without a word."""
    path, total, t = tr.ckpt_path, tr.total_steps, tr.cfg.train
    saved = meta.get("config")
    saved = saved.get("train") if isinstance(saved, dict) else None
    saved = saved if isinstance(saved, dict) else {}
    was = [f"train.{k}={saved[k]}" for k in ("epochs", "max_steps")
           if isinstance(saved.get(k), int) and saved[k] != getattr(t, k)]
    keep = " ".join(f"--set {w}" for w in was) or "the same --set as before"
    if step > total:
        how = (f"it was made with {', '.join(was)}: resume with {keep}" if was else
               "resume with a larger train.epochs or train.max_steps")
        raise CheckpointError(f"checkpoint {path} is at step {step:,}, beyond the end of this config's run "
                              f"(step {total:,} = {round(total / tr.spe, 2):g} epochs of {tr.spe:,} steps); {how} (or any "
                              f"length past step {step:,}), or start afresh with --overwrite")
    run = meta.get("run")
    before = run.get("total_steps") if isinstance(run, dict) else None
    if not isinstance(before, int) or isinstance(before, bool) or before == total:
        return
    if step >= before:
        had, kept = f"this run had {before:,} steps and is complete", "to keep it as it was"
    else:
        had, kept = f"this run had {before:,} steps (it stopped at step {step:,})", f"to keep its {before:,} steps"
    going = (f"training on from step {step:,} to {total:,}" if step < total else
             f"it ends at step {step:,}, where it is now")
    note = f"note: {had}; the config now asks for {total:,}: {going} ({kept}, resume with {keep})"
    o = tr.cfg.optim
    if o.schedule != "constant" and step < total:      # a schedule follows the run's length
        note += (f"; the {o.schedule} learning-rate schedule follows the new length from step {step:,} "
                 f"(lr {lr_at(o, step, total):.3g} there, {lr_at(o, step, before):.3g} before)")
    tr.notes.append(note)


def check_stop_at(stop_at_step, step, path):
    """--stop-at-step K of a run whose checkpoint is at `step`: K must lie ahead of it."""
    if stop_at_step and stop_at_step <= step:
        raise CheckpointError(f"--stop-at-step {stop_at_step}: the run is already at step {step} ({path}); "
                              "give a later step, or start afresh with --overwrite")


def read_meta(path):
    """The metadata of checkpoint `path` alone (the arrays stay unread); CheckpointError if none."""
    try:
        with np.load(path, allow_pickle=False) as z:
            blob = z["__meta__"]
        meta = json.loads(blob.tobytes().decode())
    except Exception as e:      # a damaged file fails in many ways; this only describes it
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} was not written by ddp_scratch (no valid metadata)")
    return meta


def left_behind(out):
    """What a run killed at once (a second Ctrl-C) left in OUT, said as it is, after removing the
    temp files of a write it was killed in. Only once its writers are gone."""
    from .preflight import RUN_FILES
    remove_stale_temps(out, RUN_FILES)
    path = os.path.join(out, "checkpoint.npz")
    if not os.path.exists(path):
        return f"no checkpoint had been written in {out} yet (a new run starts from step 0)"
    try:
        step = field(read_meta(path), path, "step", int)
    except CheckpointError as e:
        return str(e)
    return f"the checkpoint at step {step:,} in {out} stays (--resume continues from it)"


def write(tr, state=None):
    """Trainer `tr`'s parameters, optimizer state and run state, atomically (rank 0 calls it).
    state: the whole optimizer state gathered from the ranks' slices (optim.zero: 1), else the
    optimizer's own; either way the same arrays, so a resume may change ranks or toggle ZeRO."""
    arrays = {"params": B.to_numpy(tr.space.params)}
    if state is None:
        state = {k: v for k, v in tr.opt.state_dict().items() if k != "t"}
    for k, v in state.items():
        arrays[f"opt.{k}"] = B.to_numpy(v)
    epoch, i = divmod(tr.step, tr.spe)
    meta = {"step": tr.step, "epoch": epoch, "step_in_epoch": i, "opt_t": tr.opt.t,
            "fingerprint": tr.fp, "config_hash": config_hash(tr.fp), "layout": tr.space.layout(),
            "config": tr.cfg.to_dict(), "world_size": tr.comm.size,
            "run": tr.state.to_meta() | {"total_steps": tr.total_steps},
            "rng": "stateless: data order from (train.seed, epoch), dropout from (train.seed, step)"}
    if getattr(tr.task, "vocab", None):      # text tasks: the tokenizer, for `launch.py sample`
        meta["vocab"] = tr.task.vocab
    save(tr.ckpt_path, arrays, meta)
