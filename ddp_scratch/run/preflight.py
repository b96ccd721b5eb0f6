"""Checks before a run allocates or writes anything: the output folder, and the memory it will need."""
import os

from .. import backend as B
from ..errors import ConfigError, UserError
from ..fsutil import remove_stale_temps

RUN_FILES = ("checkpoint.npz", "summary.json", "trace.json")     # what a run writes into OUT (atomically)


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


def check_out_folder(out, resume, overwrite):
    """The output folder is usable: not a file, inside a writable place, and no run is lost."""
    if not out:
        raise UserError("--out: expected a folder, got an empty path")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, expected a folder (or a path to create)")
    for name in RUN_FILES:
        if os.path.isdir(os.path.join(out, name)):
            raise UserError(f"--out {out}: {name} there is a folder; a run writes a file of that name")
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


def lock_out_folder(out):
    """Create the output folder and hold OUT/.lock for the rest of this process: a second run
    into the same folder is refused instead of both writing it. The lock is the flock, not the
    file: it goes with its process however that ends, so a crashed run's .lock (which stays, with
    the crashed pid in it) stops no one. Once it is held, no one else writes here, so the temp
    files of a write that was killed halfway are removed. Returns the lock's descriptor."""
    import fcntl
    import socket
    make_out_folder(out)
    path = os.path.join(out, ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create its lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"--out {out}: another run ({holder}) is writing there now; wait for it to end "
                        "or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    remove_stale_temps(out, RUN_FILES)
    return fd
