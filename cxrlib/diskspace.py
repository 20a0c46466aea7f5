"""A full disk, named as such: the path being written, the space it needs and the space left.

A write that runs out of space fails deep inside a library: pydicom raises ``OSError`` (errno
ENOSPC) from its writer, and ``torch.save`` raises ``RuntimeError: [enforce fail at
inline_container.cc:...] unexpected pos ...`` or ``PytorchStreamWriter failed writing file``,
which say nothing about the disk. :func:`disk_full_error` turns either into one line.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

_TORCH_WRITE_FAILURES = ("inline_container", "pytorchstreamwriter failed", "file write failed")


class DiskFullError(OSError):
    """No space left on the disk a file is being written to."""


def free_bytes(path) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing folder); None if unknown."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def is_write_failure(err: BaseException) -> bool:
    """An error that a write on a full disk raises (OSError ENOSPC/EDQUOT, torch's zip writer)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    return isinstance(err, (OSError, RuntimeError)) and (
        "no space left" in text or any(k in text for k in _TORCH_WRITE_FAILURES))


def disk_full_error(err: BaseException, path, needed_bytes: int, what: str = "the file") -> OSError | None:
    """The one-line error for ``err`` raised while writing ``what`` to ``path``, or None if ``err``
    is not a write failure. ``needed_bytes``: an estimate of what the write needs in all."""
    if not is_write_failure(err):
        return None
    free = free_bytes(path)
    free_text = "unknown" if free is None else _mb(free)
    disk_full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "no space left" in str(err).lower() or (free is not None and free < needed_bytes)
    if disk_full:
        full = DiskFullError(f"disk full while writing {what} {path}: it needs about {_mb(needed_bytes)}, "
                             f"{free_text} free on that disk; free some space or write elsewhere")
        full.errno = errno.ENOSPC
        return full
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return OSError(f"could not write {what} {path} ({first}); {free_text} free on that disk, about "
                   f"{_mb(needed_bytes)} needed: check the disk and its permissions")
