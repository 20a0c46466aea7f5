"""One writer per run folder: lock files, unique temporary names, atomic writes.

A run folder holds the synthetic data, ``splits.csv``, the sample cache and one folder per
stage with its checkpoints, ``config.json`` and history. Two processes writing the same files
corrupt each other silently (the last to finish wins, and a checkpoint may then disagree with
``config.json``). So every writer first takes a lock:

* ``<run_dir>/.lock``: a whole command (``cxrlib run``, ``cxrlib train``);
* ``<run_dir>/<stage>/.lock``: one stage's training (:meth:`cxrlib.training.trainer.Trainer.fit`), also
  when a notebook runs alone;
* ``<run_dir>/.data.lock``: writing the synthetic set and the split (brief: others wait).

A lock is a file created exclusively, holding the holder's pid, host, process start time,
command and a heartbeat: a lease. While a process holds locks, a background thread rewrites their
heartbeat every :data:`HEARTBEAT_S` seconds. A second writer is refused at once (or, for the brief
data and split locks, waits) with a message naming the holder. A lock is stale, and is taken over
with a warning naming the old holder and its last heartbeat, when its process is gone (same host:
pid dead or reused) or, on any host, when its heartbeat is older than :func:`stale_after` (minutes;
``CXRLIB_LOCK_STALE_MINUTES``): a Colab runtime that disconnected leaves a lock on Drive that the
next runtime takes over. A live holder on another host keeps refreshing, so it is still refused.
Locks are re-entrant within one process. Nothing here needs ``fcntl``, symlinks or hard links,
which a Google Drive mount does not offer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"
DATA_LOCK_NAME = ".data.lock"
HEARTBEAT_S = 15.0  # how often a holder rewrites its locks' heartbeat
STALE_MINUTES = 3.0  # a heartbeat older than this: the holder is gone (12 missed beats)


def stale_after() -> float:
    """Seconds after the last heartbeat at which a lock counts as abandoned, on any host
    (``CXRLIB_LOCK_STALE_MINUTES``, default :data:`STALE_MINUTES`)."""
    raw = os.environ.get("CXRLIB_LOCK_STALE_MINUTES")
    if raw is None:
        return STALE_MINUTES * 60
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"CXRLIB_LOCK_STALE_MINUTES must be a positive number of minutes, got {raw!r}")
    return minutes * 60


def _clock() -> float:
    """Wall-clock seconds for heartbeats (tests replace it)."""
    return time.time()


def hostname() -> str:
    """This machine's name in lock files; ``CXRLIB_HOSTNAME`` stands for another host (tests)."""
    return os.environ.get("CXRLIB_HOSTNAME") or socket.gethostname()


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


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _me() -> dict:
    now = _clock()
    return {"pid": os.getpid(), "host": hostname(), "pid_start": _process_start(os.getpid()),
            "started": _stamp(now), "heartbeat": now, "heartbeat_utc": _stamp(now),
            "token": uuid.uuid4().hex, "command": " ".join(sys.argv)[:300]}


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


def last_heartbeat(path: Path, holder: dict) -> float | None:
    """When the holder last showed it was alive: the heartbeat in the file (a lock written before
    heartbeats existed, or unreadable: the file's modification time)."""
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)):
        return float(beat)
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _stale_reason(path: Path, holder: dict) -> str | None:
    """Why the lock ``holder`` wrote at ``path`` is abandoned, or None while it may be alive."""
    beat = last_heartbeat(path, holder)
    if holder.get("host") == hostname() and int(holder.get("pid", -1)) > 0:
        if not _alive(int(holder["pid"]), holder.get("pid_start")):
            return "that process is no longer running (killed or crashed)"
        return None  # a live process on this machine: its heartbeat may lag (a suspended laptop)
    if beat is not None and _clock() - beat > stale_after():
        return (f"its last heartbeat was {_stamp(beat)} UTC, {(_clock() - beat) / 60:.1f} min ago, over the "
                f"{stale_after() / 60:g} min after which a holder counts as gone (a runtime that disconnected)")
    return None


_HELD: dict[str, int] = {}  # lock path -> depth, for re-entrant use within this process
_TOKENS: dict[str, tuple[Path, str]] = {}  # lock path -> (path, our token): the leases to refresh
_BEAT_LOCK = threading.RLock()  # held while a heartbeat is written, so release never races a refresh
_beat_thread: threading.Thread | None = None
_WAKE = threading.Event()  # set: beat now (a new lease, or a shorter HEARTBEAT_S in tests)


def _refresh(path: Path, token: str) -> None:
    """Rewrite our lock's heartbeat, unless the file is no longer ours."""
    holder = _read(path) if path.exists() else None
    if holder is None or holder.get("token") != token:
        return  # released, or taken over after we stalled past the timeout: never overwrite another's
    now = _clock()
    atomic_write_text(path, json.dumps({**holder, "heartbeat": now, "heartbeat_utc": _stamp(now)}))


def refresh_heartbeats() -> None:
    """Refresh every lock this process holds (the heartbeat thread calls it; tests may too)."""
    with _BEAT_LOCK:
        for path, token in list(_TOKENS.values()):
            with contextlib.suppress(OSError):  # a flaky network drive: try again at the next beat
                _refresh(path, token)


@atexit.register
def _stop_heartbeats() -> None:
    """At exit, wait for a heartbeat being written (no half-written temporary file) and stop."""
    with _BEAT_LOCK:
        _TOKENS.clear()


def _beat_loop() -> None:
    global _beat_thread
    while True:
        _WAKE.wait(HEARTBEAT_S)
        _WAKE.clear()
        with _BEAT_LOCK:
            if not _TOKENS:
                _beat_thread = None
                return
        refresh_heartbeats()


def _start_heartbeat() -> None:
    global _beat_thread
    with _BEAT_LOCK:
        if _beat_thread is None or not _beat_thread.is_alive():
            _beat_thread = threading.Thread(target=_beat_loop, name="cxrlib-lock-heartbeat", daemon=True)
            _beat_thread.start()
        else:
            _WAKE.set()


def _try_create(path: Path, content: dict | None = None) -> dict | None:
    """Create the lock file exclusively; return what it holds, or None when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    content = content or _me()
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
    return content


def _take_over_stale(path: Path, holder: dict, reason: str) -> bool:
    """Remove an abandoned lock. The rename moves exactly one file aside, so of two takers one gets
    the old lock; the exclusive create after it decides who holds the new one."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else removed it: try again
    if _read(aside) == holder:
        aside.unlink(missing_ok=True)
        warnings.warn(f"took over the stale lock {path} of {describe(holder)}: {reason}; files it was writing "
                      f"are checked or rebuilt", stacklevel=4)
        return True
    # a live process took it meanwhile: put its lock back (no hard link: Drive has none)
    content = _read(aside)
    if content is not None and content.get("pid") != -1:
        _try_create(path, content)
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
        created = _try_create(path)
        if created is not None:
            _hold(key, path, created["token"])
            return
        holder = _read(path)
        if holder is None:
            continue  # released between our two calls
        me = _me()
        if holder.get("host") == me["host"] and holder.get("pid") == me["pid"] \
                and holder.get("pid_start") == me["pid_start"]:
            _hold(key, path, holder.get("token"))  # this process's own lock, left by a call that did not release
            return
        reason = _stale_reason(path, holder)
        if reason is not None:
            _take_over_stale(path, holder, reason)
            continue
        if time.monotonic() >= deadline:
            beat = last_heartbeat(path, holder)
            beat_text = f"its last heartbeat was {_stamp(beat)} UTC" if beat is not None else "no heartbeat"
            raise RunFolderBusy(
                f"{what} is in use by {describe(holder)} (lock file {path}; {beat_text}). Wait for it to "
                f"finish, or use another run folder (run_dir / --run-dir); if that process is gone, the lock "
                f"is taken over {stale_after() / 60:g} min after its last heartbeat (or delete {path} by hand)."
            )
        if not told:
            print(f"waiting for {describe(holder)}, which holds {path} (taken over if its heartbeat stops for "
                  f"{stale_after() / 60:g} min)", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.25)


def _hold(key: str, path: Path, token: str | None) -> None:
    _HELD[key] = 1
    if token is None:  # our own lock from before heartbeats: rewrite it with one
        token = _me()["token"]
        atomic_write_text(path, json.dumps({**(_read(path) or {}), **_me(), "token": token}))
    with _BEAT_LOCK:
        _TOKENS[key] = (path, token)
    _start_heartbeat()


def release(path) -> None:
    path = Path(path)
    key = str(path.resolve())
    depth = _HELD.get(key, 0)
    if depth > 1:
        _HELD[key] = depth - 1
        return
    _HELD.pop(key, None)
    with _BEAT_LOCK:
        _, token = _TOKENS.pop(key, (None, None))
        holder = _read(path) if path.exists() else None
        if holder is not None and (holder.get("token") == token if token else
                                   holder.get("pid") == os.getpid() and holder.get("host") == hostname()):
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
