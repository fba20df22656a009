"""Output files written whole or not at all: a full disk, a size limit or a crash mid-write leaves the
previous file as it was and no temporary behind.

Every writer goes through a temporary file in the target's directory (same filesystem), flushed and
fsync'ed, then ``os.replace``d over the target (atomic on POSIX), and the directory fsync'ed.  On any
error the temporary is removed and the error propagates unchanged (an ``OSError`` such as ENOSPC or
EFBIG).  The new file gets the mode a plain ``open(path, "w")`` would give (0666 & ~umask), or the
previous file's mode when it replaces one.

``check_output_path(path, what="output") -> Path``
    Before the work starts: raise ``OutputPathError`` (a ValueError, one line) when ``path`` is a
    directory, its parent is missing or not a directory, or the place is not writable.
``open_atomic(path, mode="w", encoding=None, newline=None)``
    Context manager yielding the temporary's file object (mode "w"/"wt" or "wb").
``atomic_path(path)``
    Context manager yielding the temporary's *path* (same suffix as ``path``), for libraries that
    write by name (matplotlib's ``savefig`` infers the format from the suffix).
``write_bytes(path, data)`` / ``write_text(path, text, encoding="utf-8")``
    One call each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["OutputPathError", "check_output_path", "open_atomic", "atomic_path", "write_bytes", "write_text"]


class OutputPathError(ValueError):
    """An output path that cannot be written; the message is one line naming it."""


def check_output_path(path: os.PathLike | str, what: str = "output") -> Path:
    """Refuse, before any work, an output path that cannot be written (see the module docstring)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is a directory: give a file name")
    if not parent.exists():
        raise OutputPathError(f"{what} {p}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"{what} {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {p}: directory {parent} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what} {p} exists and is not writable")
    return p


def _mode_for(p: Path) -> int:
    try:
        return p.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    p = Path(path)
    directory = p.parent if str(p.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{p.name}.", suffix=f".tmp{p.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(p))
        with open(tmp, "rb+") as f:      # the library closed it; make its bytes durable
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def open_atomic(path: os.PathLike | str, mode: str = "w", encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO]:
    """Yield a file object on a temporary beside ``path``; closed, fsync'ed and moved over ``path``
    when the block ends normally, removed when it raises."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"open_atomic: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f


def write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    with open_atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: os.PathLike | str, text: str, encoding: str = "utf-8") -> Path:
    with open_atomic(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
