"""Notebook 03 driven as a student drives it, through one live kernel (nbclient), smoke profile.

Run all; run all again in the same kernel; change a parameter and run from the parameters cell;
interrupt the stage during ``run_stage`` and run again with ``resume = True``; then a "disconnect":
the kernel is killed while it trains, and a second kernel on another host (``CXRLIB_HOSTNAME``)
resumes in the same run folder, taking over the lock the first one left once its heartbeat is stale.
Each step checks the outputs, the run folder and ``config.json``.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbclient.util import run_sync

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_stage1_encoder.ipynb"
PARAMS, SETUP = 2, 5  # the cells' indices in the notebook
TRAIN = next(i for i, c in enumerate(nbformat.read(NOTEBOOK, as_version=4).cells)
             if "stages.run_stage(config" in c.source)


def kernel(nb, **env):
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "CXRLIB_HEADLESS": "1", "OMP_NUM_THREADS": "1", **env}
    environ.pop("CXRLIB_RUN_DIR", None)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.km = client.create_kernel_manager()
    client.start_new_kernel(env=environ)
    client.start_new_kernel_client()
    return client


def signal_kernel(client, signum):
    os.kill(client.km.provisioner.process.pid, signum)  # what the notebook's stop button / a dying VM does


def shutdown(client):
    run_sync(client.km.shutdown_kernel)(now=True)


def set_params(nb, run_dir, **values):
    lines = [f"run_dir = {str(run_dir)!r}", "synthetic_images = 24"] + [f"{k} = {v!r}" for k, v in values.items()]
    nb.cells[PARAMS].source = nbformat.read(NOTEBOOK, as_version=4).cells[PARAMS].source + "\n" + "\n".join(lines)


def run_from(client, nb, first=0, last=None):
    for i, cell in enumerate(nb.cells[: (last or len(nb.cells) - 1) + 1]):
        if i >= first and cell.cell_type == "code":
            cell.outputs = []
            client.execute_cell(cell, i)


def text(nb, first=0):
    return "".join(o.get("text", "") for c in nb.cells[first:] if c.cell_type == "code" for o in c.outputs)


def saved(run_dir):
    return json.loads((run_dir / "stage1b" / "config.json").read_text())


def history(run_dir):
    return json.loads((run_dir / "stage1b" / "history.json").read_text())


def interrupt_when_training(client, nb, run_dir, stop):
    """Run the training cell and stop it once an epoch is saved: ``stop(client)``."""
    errors = []

    def train():
        try:
            client.execute_cell(nb.cells[TRAIN], TRAIN)
        except BaseException as error:  # the interrupted cell, or a dead kernel
            errors.append(error)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.time() + 240
    while not (run_dir / "stage1b" / "last.pt").is_file() and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    assert thread.is_alive(), f"the stage finished before it could be interrupted: {errors}"
    stop(client)
    thread.join(timeout=120)
    return errors


def test_a_student_reruns_changes_interrupts_and_moves_host(tmp_path):
    run_dir = tmp_path / "run"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_params(nb, run_dir, train_upstream=True)
    client = kernel(nb)
    try:
        # 1. run all: the upstream stage 1a is trained first, one line per stage
        run_from(client, nb)
        out = text(nb)
        assert "train_upstream 1/1: stage1a" in out and (run_dir / "stage1a" / "best.pt").is_file()
        assert saved(run_dir)["profile"] == "smoke" and saved(run_dir)["run_dir"] == str(run_dir)
        assert len(history(run_dir)) == 1 and history(run_dir)[-1]["end"] == "epochs"
        assert "0%|" not in out and "epoch 1/1" in out  # text progress, readable when saved

        # 2. run all again in the same kernel: no "unknown parameter(s) ['config', ...]"
        run_from(client, nb)
        assert "train_upstream" not in text(nb) and "interrupted" not in text(nb, SETUP)
        assert saved(run_dir)["epochs"] == 1 and len(history(run_dir)) == 1

        # 3. change a parameter, run from the parameters cell on: used everywhere
        set_params(nb, run_dir, epochs=2)
        run_from(client, nb, first=PARAMS)
        assert saved(run_dir)["epochs"] == 2 and len(history(run_dir)) == 2
        assert "stage1b epoch 2/2" in text(nb)

        # 4. interrupt the stage while it trains, then resume = True
        set_params(nb, run_dir, epochs=30)
        run_from(client, nb, first=PARAMS, last=SETUP)
        (run_dir / "stage1b" / "last.pt").unlink()
        errors = interrupt_when_training(client, nb, run_dir, lambda c: signal_kernel(c, signal.SIGINT))
        assert errors and isinstance(errors[0], CellExecutionError) and "KeyboardInterrupt" in str(errors[0])
        done = len(history(run_dir))
        assert 1 <= done < 30 and not (run_dir / "stage1b" / ".lock").exists()  # released on the interrupt
        set_params(nb, run_dir, epochs=done + 1, resume=True)
        run_from(client, nb, first=PARAMS, last=TRAIN)
        assert f"resumed after epoch {done}" in text(nb, TRAIN)
        assert len(history(run_dir)) == done + 1 and saved(run_dir)["resume"] is True

        # 5. a disconnect: the kernel dies while it trains and leaves its lock behind
        set_params(nb, run_dir, epochs=30)
        run_from(client, nb, first=PARAMS, last=SETUP)
        (run_dir / "stage1b" / "last.pt").unlink()
        interrupt_when_training(client, nb, run_dir, lambda c: signal_kernel(c, signal.SIGKILL))
        lock = json.loads((run_dir / "stage1b" / ".lock").read_text())
    finally:
        shutdown(client)
    done = len(history(run_dir))
    other = nbformat.read(NOTEBOOK, as_version=4)
    set_params(other, run_dir, epochs=done + 1, resume=True)
    client = kernel(other, CXRLIB_HOSTNAME="colab-runtime-2", CXRLIB_LOCK_STALE_MINUTES="0.05")
    try:
        time.sleep(3.5)  # the first runtime's heartbeat is now older than the 3 s timeout
        run_from(client, other, last=TRAIN)
    finally:
        shutdown(client)
    out = text(other)
    assert f"took over the stale lock" in out and lock["host"] in out and "last heartbeat" in out
    assert f"resumed after epoch {done}" in out and len(history(run_dir)) == done + 1
    assert not (run_dir / "stage1b" / ".lock").exists()
