"""Run-folder locks are leases: a heartbeat while held, taken over on any host once it stops.

Fake hosts (``CXRLIB_HOSTNAME``, lock files written by hand) and a fake clock (``runfolder._clock``)
stand for a Colab runtime that disconnected and the next one that opens the same folder on Drive.
"""

import json
import multiprocessing
import time

import pytest

from cxrlib import runfolder

NOW = 1_800_000_000.0  # the fake clock's "now"


def _lock_of(path, *, host, heartbeat, pid=4242):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "pid_start": "1", "started": "earlier",
                                "heartbeat": heartbeat, "token": "old", "command": "jupyter kernel"}))


@pytest.fixture
def clock(monkeypatch):
    now = {"t": NOW}
    monkeypatch.setattr(runfolder, "_clock", lambda: now["t"])
    monkeypatch.delenv("CXRLIB_LOCK_STALE_MINUTES", raising=False)
    return now


def test_stale_lock_from_another_host_is_taken_over_naming_holder_and_heartbeat(tmp_path, clock):
    lock = tmp_path / "stage2" / ".lock"
    _lock_of(lock, host="colab-runtime-old", heartbeat=NOW - 10 * 60)
    with pytest.warns(UserWarning, match=r"took over .*colab-runtime-old.*last heartbeat was .* 10\.0 min ago"):
        with runfolder.stage_lock(tmp_path / "stage2"):
            held = json.loads(lock.read_text())
            assert held["host"] == runfolder.hostname() and held["token"] != "old"
    assert not lock.exists()


def test_fresh_lock_from_another_host_is_refused(tmp_path, clock):
    lock = tmp_path / ".lock"
    _lock_of(lock, host="colab-runtime-live", heartbeat=NOW - 30)
    with pytest.raises(runfolder.RunFolderBusy, match=r"colab-runtime-live.*last heartbeat"):
        with runfolder.run_folder_lock(tmp_path):
            pass
    assert json.loads(lock.read_text())["token"] == "old"  # left alone


def test_waiting_for_a_holder_that_dies_takes_over_once_its_heartbeat_is_stale(tmp_path, clock, monkeypatch):
    _lock_of(tmp_path / ".data.lock", host="other", heartbeat=NOW)
    real_sleep = time.sleep

    def sleep(seconds):  # each wait moves the fake clock a minute on
        clock["t"] += 60
        real_sleep(0)

    monkeypatch.setattr(runfolder.time, "sleep", sleep)
    with pytest.warns(UserWarning, match="took over"):
        with runfolder.data_lock(tmp_path, wait=1800):
            assert clock["t"] - NOW > runfolder.stale_after()


def test_stale_timeout_is_a_stated_number_of_minutes(monkeypatch):
    monkeypatch.setenv("CXRLIB_LOCK_STALE_MINUTES", "0.5")
    assert runfolder.stale_after() == 30
    monkeypatch.setenv("CXRLIB_LOCK_STALE_MINUTES", "soon")
    with pytest.raises(ValueError, match="CXRLIB_LOCK_STALE_MINUTES"):
        runfolder.stale_after()


def test_the_holder_refreshes_its_heartbeat_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "HEARTBEAT_S", 0.05)
    lock = tmp_path / ".lock"
    with runfolder.run_folder_lock(tmp_path):
        first = json.loads(lock.read_text())["heartbeat"]
        deadline = time.time() + 10
        while json.loads(lock.read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads(lock.read_text())["heartbeat"] > first


def test_a_taken_over_lock_is_not_overwritten_by_the_stalled_holder(tmp_path, clock):
    lock = tmp_path / ".lock"
    runfolder.acquire(lock, what="test")
    try:
        mine = json.loads(lock.read_text())
        lock.write_text(json.dumps({**mine, "host": "new-runtime", "token": "theirs"}))  # taken over meanwhile
        runfolder.refresh_heartbeats()
        assert json.loads(lock.read_text())["token"] == "theirs"
    finally:
        runfolder.release(lock)
    assert lock.exists()  # release leaves the new holder's lock


def _take(lock, host, barrier, results):
    import os
    os.environ["CXRLIB_HOSTNAME"] = host
    barrier.wait()
    try:
        runfolder.acquire(lock, what="the race")
        results.put((host, "won"))
        time.sleep(1.0)  # hold it while the other looks
    except runfolder.RunFolderBusy:
        results.put((host, "refused"))


def test_two_takers_of_a_stale_lock_race_and_one_wins(tmp_path):
    lock = tmp_path / ".lock"
    _lock_of(lock, host="dead-runtime", heartbeat=time.time() - 3600)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(lock, host, barrier, results)) for host in ("taker-a", "taker-b")]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sorted(outcome.values()) == ["refused", "won"], outcome
