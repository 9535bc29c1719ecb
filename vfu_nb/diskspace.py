"""Writes that fail in one line when the disk is full: the file, the cause with the free bytes, and the way out.

A full disk shows up as ``OSError(ENOSPC)`` from Python's own writes, and as a bare ``RuntimeError("[enforce fail at
inline_container.cc:672] . unexpected pos ...")`` from ``torch.save``, which names neither the file nor the cause.
Every file the project writes while training, exporting a study run or building the image cache goes through here:

* :func:`atomic_write` (bytes) and :func:`atomic_save` (anything written by a function, e.g. ``torch.save``) write a
  temporary file beside the target and rename it into place; on any failure the temporary file is removed (no
  ``.tmp`` is left behind) and a full disk becomes a :class:`DiskFullError`;
* :func:`appending` turns a full disk under an append-only log (``batches.csv``, ``train.log``) into the same error;
* :func:`check_room` compares what a large write needs with the free space before it starts (the image cache).

:class:`DiskFullError` is an ``OSError`` (errno ENOSPC) whose message is the one line to show; callers that know
the way out add it with :meth:`DiskFullError.with_way_out` (the trainer names the last good checkpoint and its
epoch, and ``--resume``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

#: errno values that mean "no room": no space left on the device, disk quota exceeded.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """A write refused because the disk (or the quota) is full; ``str()`` is the whole one-line message.

    ``path``: the file that could not be written; ``free``: free bytes on its file system when the write failed
    (after the partial file was removed); ``needed``: about how many bytes it needed, where known.
    """

    def __init__(self, path, free: Optional[int], needed: Optional[int] = None, way_out: str = "",
                 message: Optional[str] = None):
        self.path, self.free, self.needed, self.way_out = Path(path), free, needed, way_out
        if message is None:
            room = f"{human(free)} free" if free is not None else "free space unknown"
            if needed:
                room += f", about {human(needed)} needed"
            message = f"{self.path}: not written: no space left on the device ({room})"
        self.core = message
        super().__init__(errno.ENOSPC, message + (f"; {way_out}" if way_out else ""))

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):          # across processes (a pool worker's error) with its fields, not OSError's args
        return (DiskFullError, (self.path, self.free, self.needed, self.way_out, self.core))

    def with_way_out(self, way_out: str) -> "DiskFullError":
        """The same error with ``way_out`` (what the user does next) in place of the generic one."""
        return DiskFullError(self.path, self.free, self.needed, way_out, message=self.core)


def human(nbytes: Optional[float]) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as ``df -H`` prints them), bytes below 1 kB."""
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def free_bytes(path) -> Optional[int]:
    """Free bytes (for an unprivileged user) on the file system of ``path`` or its nearest existing folder."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
    return None


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class _Recording(io.RawIOBase):
    """A writable file-like that remembers the OSError of the file beneath it (``torch.save`` replaces it with a
    RuntimeError that has no errno)."""

    def __init__(self, f):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_save(path, write: Callable, needed: Optional[int] = None, way_out: str = "") -> None:
    """``write(f)`` into ``path.tmp`` (a binary file object), flushed and fsynced, then renamed to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; a full disk raises
    :class:`DiskFullError` (with ``needed``, the bytes the file needs, when the caller knows them), anything else
    is re-raised as it is.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    recorder = None
    try:
        with open(tmp, "wb") as f:
            recorder = _Recording(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = exc if is_no_space(exc) else (recorder.error if recorder is not None else None)
        if cause is not None and is_no_space(cause):
            raise DiskFullError(path, free_bytes(path), needed, way_out) from None
        raise


def atomic_write(path, data: bytes | str, way_out: str = "") -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, as :func:`atomic_save` does."""
    data = data.encode() if isinstance(data, str) else bytes(data)
    atomic_save(path, lambda f: f.write(data), len(data), way_out)


@contextlib.contextmanager
def appending(path, way_out: str = ""):
    """Around writes to an open log file: a full disk becomes :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path, free_bytes(path), None, way_out) from None
        raise


def check_room(path, needed: int, what: str, way_out: str) -> None:
    """Refuse (:class:`DiskFullError`, before anything is written) when ``path``'s file system has less than
    ``needed`` bytes free; ``what`` names the thing to be written ("the image cache ...")."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFullError(path, free, needed, way_out,
                            message=f"{what} needs {human(needed)} and {Path(path).parent} has {human(free)} "
                                    f"free; not started")


def reserve(f, nbytes: int) -> None:
    """Give the open file ``f`` its full size, allocated on disk where the file system can (``posix_fallocate``),
    so a full disk fails here with ENOSPC and never later inside a memory map (where it is a SIGBUS); where it
    cannot, the file is extended sparsely (``truncate``)."""
    f.truncate(nbytes)
    if nbytes and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as exc:
            if is_no_space(exc):
                raise
            # EOPNOTSUPP, EINVAL ...: this file system cannot preallocate; the sparse file stays
