"""Checks before a run allocates or writes anything: the output folder, and the memory it will need."""
import os

from .. import backend as B
from ..errors import ConfigError, UserError


def check_memory(what, parts, ranks_here=1, hint="use a smaller model, batch or dataset, or fewer ranks per node"):
    """Refuse, before allocating, what cannot fit. `parts`: bytes per rank by name; the ranks on
    a node share its memory."""
    need = sum(parts.values()) * ranks_here
    avail, where = B.available_memory()
    if avail is None or need <= avail:
        return
    detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v)
    ranks = f" x {ranks_here} ranks on this node" if ranks_here > 1 else ""
    raise ConfigError(f"{what} needs about {_gib(need)} ({detail}{ranks}) but only {_gib(avail)} is {where}; {hint}")


def _gib(n):
    for unit, div in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} bytes"


def synthetic_bytes(cfg):
    """Host bytes the synthetic dataset takes while it is generated and split (float64, ~3 copies)."""
    d = cfg.data
    return 3 * d.n_samples * d.n_features * 8 if d.name == "synthetic" else 0


def check_out_folder(out, resume, overwrite):
    """The output folder is usable: not a file, inside a writable place, and no run is lost."""
    if not out:
        raise UserError("--out: expected a folder, got an empty path")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, expected a folder (or a path to create)")
    ckpt_path = os.path.join(out, "checkpoint.npz")
    if os.path.exists(ckpt_path) and not (resume or overwrite):
        raise UserError(f"{ckpt_path} already exists: pass --resume to continue it or "
                        "--overwrite to start a new run over it")
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"--out {out}: {probe} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {probe} (permission denied or read-only)")


def make_out_folder(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
