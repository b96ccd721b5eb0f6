"""Crash-safe file writes.

A reader (a plotting script, a resumed sweep, a second rank) must never see a
half-written JSON/CSV/PNG, so every write goes to a temp file in the *same*
directory (os.replace is only atomic within one filesystem), is fsynced, and
then renamed over the target.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(dirname: str) -> None:
    # The rename itself lives in the directory entry; without this a power loss
    # can leave the old name. Not all platforms allow opening a directory.
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Atomically replace ``path`` with ``data``; returns the path as str."""
    with atomic_open(path) as f:
        f.write(data)
    return os.fspath(path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """A binary file whose contents replace ``path`` atomically when the block ends without an
    error (for files written piece by piece, e.g. the trace); on an error the old file stays."""
    path = os.fspath(path)
    dirname = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(dirname, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=dirname)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would hide results from group members
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    _fsync_dir(dirname)


def remove_stale_temps(dirname, names) -> list:
    """Remove the temp files that atomic writes of `names` into `dirname` left behind when their
    process was killed mid-write (`.NAME.XXXXXXXX.tmp`, mkstemp's pattern above). Call it only when
    no live process can be writing them: the folder's lock held, or its writers killed.
    Returns the paths removed."""
    import re
    pattern = re.compile("|".join(re.escape(f".{n}.") + r"[a-z0-9_]{8}\.tmp" for n in names))
    try:
        entries = os.listdir(dirname)
    except OSError:
        return []
    gone = []
    for e in entries:
        if pattern.fullmatch(e):
            try:
                os.unlink(os.path.join(dirname, e))
                gone.append(os.path.join(dirname, e))
            except OSError:
                pass
    return gone


def _write_error(path, e):
    from .errors import UserError
    kept = " (the previous file is intact)" if os.path.isfile(path) else ""
    why = e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        why = "a file stands where its folder should be"
    return UserError(f"cannot write {path}: {why}{kept}")


def atomic_write_text(path: str | os.PathLike, text: str,
                      encoding: str = "utf-8") -> str:
    """Text variant of :func:`atomic_write_bytes` (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def read_regular_file(path, what: str, error=None, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, or one clear error naming `what` and the path.

    Checked with stat before open: a FIFO or a device would block or never end (/dev/zero), a
    folder cannot be read, a missing file or parent is said as such. `~` is expanded.
    `error`: the UserError subclass to raise (default UserError)."""
    import stat
    from .errors import UserError
    error = error or UserError
    p = os.path.expanduser(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except NotADirectoryError:
        raise error(f"{what} {path} does not exist (a part of the path is a file, not a folder)") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file (a FIFO, device or socket), expected a file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} expected of it")
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror})") from None
