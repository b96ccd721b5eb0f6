"""Checkpoints as plain .npz (no pickle, ever): arrays plus one JSON metadata blob stored as bytes.

Written atomically (temporary file, fsync, rename) so a crash mid-write leaves the previous
checkpoint intact; loaded with allow_pickle=False and validated before anything is trusted.
"""
import io
import json
import zipfile

import numpy as np

from ..errors import CheckpointError
from ..fsutil import atomic_write_bytes

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
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, expected an .npz file") from None
    except ValueError as e:
        if "pickle" in str(e):
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects; refused "
                                  "(loading them could run code)") from None
        raise CheckpointError(f"checkpoint {path} is not a valid .npz file ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                              "expected an .npz written by ddp_scratch") from None
    blob = arrays.pop("__meta__", None)
    try:
        meta = json.loads(bytes(blob).decode()) if blob is not None else None
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by ddp_scratch (no valid metadata)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')}, expected {VERSION}")
    if "params" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no 'params' array")
    return arrays, meta


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
