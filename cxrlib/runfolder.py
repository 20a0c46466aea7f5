"""One writer per run folder: lock files, unique temporary names, atomic writes.

A run folder holds the synthetic data, ``splits.csv``, the sample cache and one folder per
stage with its checkpoints, ``config.json`` and history. Two processes writing the same files
corrupt each other silently (the last to finish wins, and a checkpoint may then disagree with
``config.json``). So every writer first takes a lock:

* ``<run_dir>/.lock``: a whole command (``cxrlib run``, ``cxrlib train``);
* ``<run_dir>/<stage>/.lock``: one stage's training (:meth:`cxrlib.training.trainer.Trainer.fit`), also
  when a notebook runs alone;
* ``<run_dir>/.data.lock``: writing the synthetic set and the split (brief: others wait).

A lock is a file created exclusively, holding the holder's pid, host, process start time and
command. A second writer is refused at once (or, for the brief data lock, waits) with a message
naming the holder. A lock whose process is gone (same host, pid dead or reused) is stale and is
taken over with a warning; on another host that cannot be checked, so the message says how to
remove it by hand. Locks are re-entrant within one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"
DATA_LOCK_NAME = ".data.lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the lock."""


def unique_tmp(path) -> Path:
    """A temporary name beside ``path`` that no other process or thread can pick:
    ``.<name>.<pid>.<random>.tmp`` (the pid lets a later run tell whose it was)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write to a unique temporary file, then rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def remove_orphan_tmp(folder, pattern: str = ".*.tmp") -> tuple[int, int]:
    """Delete temporary files a killed writer left in ``folder``; return (count, bytes).

    Call it only while holding the folder's lock: then no live writer owns such a file.
    """
    count = size = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0, 0
    for tmp in folder.glob(pattern):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                size += tmp.stat().st_size
                tmp.unlink()
                count += 1
    return count, size


# -- the lock ------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after "comm"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (for removing what dead writers left)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _alive(pid: int, start: str | None) -> bool:
    if pid <= 0:  # an unreadable lock file: its holder cannot be checked
        return True
    if not process_alive(pid):
        return False
    now = _process_start(pid)
    return start is None or now is None or now == start


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": _process_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _read(path: Path) -> dict | None:
    for _ in range(20):  # the holder may be between creating and filling the file
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict) and "pid" in holder:
                return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {"pid": -1, "host": "?", "started": "?", "command": "? (unreadable lock file)"}


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command') or 'unknown command'})")


_HELD: dict[str, int] = {}  # lock path -> depth, for re-entrant use within this process


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(_me(), f)
    return True


def _take_over_stale(path: Path, holder: dict) -> bool:
    """Remove a dead holder's lock; the rename makes sure it is that lock we remove."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else removed it: try again
    if _read(aside) == holder:
        aside.unlink(missing_ok=True)
        warnings.warn(f"removed the stale lock {path} of {describe(holder)}: that process is no longer "
                      f"running (killed or crashed); files it was writing are checked or rebuilt", stacklevel=4)
        return True
    with contextlib.suppress(FileExistsError):  # a live process took it meanwhile: put it back
        os.link(aside, path)
    aside.unlink(missing_ok=True)
    return False


def acquire(path, *, what: str, wait: float = 0.0) -> None:
    """Take the lock file ``path`` for ``what`` (words for the message); see :func:`locked`."""
    path = Path(path)
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, told = time.monotonic() + wait, False
    while True:
        if _try_create(path):
            _HELD[key] = 1
            return
        holder = _read(path)
        if holder is None:
            continue  # released between our two calls
        me = _me()
        if holder.get("host") == me["host"] and holder.get("pid") == me["pid"] \
                and holder.get("pid_start") == me["pid_start"]:
            _HELD[key] = 1  # this process's own lock, left by an earlier call that did not release
            return
        if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1)), holder.get("pid_start")):
            _take_over_stale(path, holder)
            continue
        if time.monotonic() >= deadline:
            stale_hint = ("if that process is gone (another machine, or a container that was stopped), "
                          f"delete {path} by hand")
            raise RunFolderBusy(
                f"{what} is in use by {describe(holder)} (lock file {path}). Wait for it to finish, or use "
                f"another run folder (run_dir / --run-dir); {stale_hint}."
            )
        if not told:
            print(f"waiting for {describe(holder)}, which holds {path}", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.25)


def release(path) -> None:
    path = Path(path)
    key = str(path.resolve())
    depth = _HELD.get(key, 0)
    if depth > 1:
        _HELD[key] = depth - 1
        return
    _HELD.pop(key, None)
    holder = _read(path) if path.exists() else None
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path, *, what: str, wait: float = 0.0):
    """Hold the lock file ``path`` for the block.

    ``wait``: seconds to wait for a live holder before giving up (0: refuse at once).
    Raises :class:`RunFolderBusy` naming the holder and how to clear a stale lock.
    """
    acquire(path, what=what, wait=wait)
    try:
        yield Path(path)
    finally:
        release(path)


def run_folder_lock(run_dir, *, what: str | None = None):
    """The whole run folder, for one command (refused at once if another holds it)."""
    return locked(Path(run_dir) / LOCK_NAME, what=what or f"run folder {run_dir}")


def stage_lock(stage_dir):
    """One stage's folder while it trains (refused at once if another holds it)."""
    stage_dir = Path(stage_dir)
    return locked(stage_dir / LOCK_NAME, what=f"stage folder {stage_dir}")


def data_lock(run_dir, *, wait: float = 1800.0):
    """The run folder's data (synthetic set, split): brief, so a second process waits."""
    return locked(Path(run_dir) / DATA_LOCK_NAME, what=f"the data of run folder {run_dir}", wait=wait)
