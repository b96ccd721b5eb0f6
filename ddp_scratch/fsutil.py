"""Crash-safe file writes.

A reader (a plotting script, a resumed sweep, a second rank) must never see a
half-written JSON/CSV/PNG, so every write goes to a temp file in the *same*
directory (os.replace is only atomic within one filesystem), is fsynced, and
then renamed over the target.
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_write_text"]

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
    path = os.fspath(path)
    dirname = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp", dir=dirname)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would hide results from group members
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)
    return path


def atomic_write_text(path: str | os.PathLike, text: str,
                      encoding: str = "utf-8") -> str:
    """Text variant of :func:`atomic_write_bytes` (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))
