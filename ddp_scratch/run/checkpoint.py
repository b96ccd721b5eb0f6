"""Checkpoints as plain .npz (no pickle, ever): arrays plus one JSON metadata blob stored as bytes.

Written atomically (temporary file, fsync, rename) so a crash mid-write leaves the previous
checkpoint intact; loaded with allow_pickle=False and validated before anything is trusted.
"""
import io
import json

import numpy as np

from ..errors import CheckpointError
from ..fsutil import atomic_write_bytes, read_regular_file

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
