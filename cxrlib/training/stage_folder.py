"""Where a stage run's files go: the run-folder writer the :class:`~cxrlib.training.trainer.Trainer`
is given, so the loop itself touches no disk.

:class:`StageFolder` is the stage's folder in the run directory: one writer at a time (a lock),
temporary files a killed run left removed, ``config.json``, ``history.csv``/``history.json``,
``best.pt`` and ``last.pt`` written atomically, and an in-progress marker written first and
removed last, so the folder always describes one run: a folder with the marker holds a run that
has not finished (killed between ``best.pt`` and ``last.pt``, say), whatever its history says.
:class:`MemoryFolder` keeps the same things in memory (tests; a loop without a disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from cxrlib import runfolder
from cxrlib.training.checkpoints import BEST, LAST, atomic_save, load_checkpoint

IN_PROGRESS = "in_progress.json"  # written when a run starts, removed when it has written everything
FINISHED = "finished.json"  # the settings of the run that finished here (a new run removes it first)

BEST_OPTIMIZER = "best_optimizer.pt"  # reload_best_on_drop only: the best epoch's optimiser state


def in_progress(folder) -> bool:
    """Whether ``folder`` holds a stage run that started and has not finished."""
    return (Path(folder) / IN_PROGRESS).is_file()


class StageFolder:
    """A stage's folder on disk. ``writes``: False on the ranks of a torchrun job other than 0,
    which read checkpoints but write nothing."""

    def __init__(self, folder, *, writes: bool = True):
        self.folder, self.writes = Path(folder), writes

    def __str__(self) -> str:
        return str(self.folder)

    @contextlib.contextmanager
    def session(self, stage: str):
        """Hold the folder for one run: the lock, orphan clean-up, then the in-progress marker.
        The marker stays when the run stops early (an error, ``stop_after``): :meth:`finish` removes it."""
        if not self.writes:
            yield self
            return
        with runfolder.stage_lock(self.folder):
            removed, size = runfolder.remove_orphan_tmp(self.folder)
            if removed:
                print(f"{stage}: removed {removed} temporary file(s) ({size / 1e6:.1f} MB) that an "
                      f"interrupted run left in {self.folder}")
            runfolder.atomic_write_text(self.folder / IN_PROGRESS,
                                        json.dumps({"pid": os.getpid(), "started": time.time()}))
            (self.folder / FINISHED).unlink(missing_ok=True)
            yield self

    def finish(self, config=None) -> None:
        """The run wrote all its files: the folder now describes a finished run, whose settings
        (``config``, as it ended: a resume's too) go to ``finished.json``."""
        if self.writes:
            if config is not None:
                runfolder.atomic_write_text(self.folder / FINISHED, json.dumps(config.to_dict(), indent=2))
            (self.folder / IN_PROGRESS).unlink(missing_ok=True)

    def load_last(self, map_location) -> dict | None:
        """The state of ``last.pt``, or None when there is none (then nothing to resume). A
        finished ``best.pt`` without ``last.pt`` is refused: training again would overwrite it."""
        path = self.folder / LAST
        if path.is_file():
            return load_checkpoint(path, map_location=map_location)
        if (self.folder / BEST).is_file():
            raise FileNotFoundError(
                f"resume=True but {self.folder} has a best.pt and no last.pt, so there is nothing to continue; "
                f"set resume=False to train this stage again (replaces {self.folder / BEST}), or keep it and "
                f"use another run_dir")
        return None

    def restore_config(self, saved: dict) -> None:
        """Put back the ``config.json`` of the weights beside it (a refused resume)."""
        if self.writes and saved:
            runfolder.atomic_write_text(self.folder / "config.json", json.dumps(saved, indent=2))

    def save_config(self, config) -> None:
        if self.writes:
            config.save(self.folder / "config.json")

    def save_best(self, state: dict) -> None:
        if self.writes:
            atomic_save(state, self.folder / BEST)

    def save_last(self, state: dict) -> None:
        if self.writes:
            atomic_save(state, self.folder / LAST)

    def load_best(self, map_location) -> tuple[dict, Path] | None:
        path = self.folder / BEST
        return (load_checkpoint(path, map_location=map_location), path) if path.is_file() else None

    def save_best_optimizer(self, state: dict) -> None:
        """``reload_best_on_drop``: the optimiser state of the best epoch, beside ``best.pt``."""
        if self.writes:
            atomic_save(state, self.folder / BEST_OPTIMIZER)

    def load_best_optimizer(self, map_location) -> dict | None:
        path = self.folder / BEST_OPTIMIZER
        return load_checkpoint(path, map_location=map_location) if path.is_file() else None

    def write_history(self, history: list) -> None:
        import pandas as pd

        if self.writes:
            runfolder.atomic_write_text(self.folder / "history.csv", pd.DataFrame(history).to_csv(index=False))
            runfolder.atomic_write_text(self.folder / "history.json", json.dumps(history, indent=1))

    def describe(self, name: str) -> str:
        return str(self.folder / name)


class MemoryFolder:
    """The same interface in memory: the loop tested without a disk. ``files`` maps a file name
    (``best.pt``, ``last.pt``, ``config.json``, ``history.json``) to what was written;
    ``events`` lists the calls in order."""

    def __init__(self):
        self.files: dict = {}
        self.events: list = []
        self.writes = True

    def __str__(self) -> str:
        return "<memory>"

    @contextlib.contextmanager
    def session(self, stage: str):
        self.events.append("start")
        self.files[IN_PROGRESS] = stage
        yield self

    def finish(self, config=None) -> None:
        self.events.append("finish")
        if config is not None:
            self.files[FINISHED] = config.to_dict()
        self.files.pop(IN_PROGRESS, None)

    def load_last(self, map_location) -> dict | None:
        return self.files.get(LAST)

    def restore_config(self, saved: dict) -> None:
        self.files["config.json"] = saved

    def save_config(self, config) -> None:
        self.events.append("config")
        self.files["config.json"] = config.to_dict()

    def save_best(self, state: dict) -> None:
        self.events.append("best")
        self.files[BEST] = _copy(state)

    def save_last(self, state: dict) -> None:
        self.events.append("last")
        self.files[LAST] = _copy(state)

    def load_best(self, map_location) -> tuple[dict, str] | None:
        return (self.files[BEST], BEST) if BEST in self.files else None

    def save_best_optimizer(self, state: dict) -> None:
        self.events.append("best_optimizer")
        self.files[BEST_OPTIMIZER] = _copy(state)

    def load_best_optimizer(self, map_location) -> dict | None:
        return self.files.get(BEST_OPTIMIZER)

    def write_history(self, history: list) -> None:
        self.events.append("history")
        self.files["history.json"] = [dict(row) for row in history]

    def describe(self, name: str) -> str:
        return f"<memory>/{name}"


def _copy(state):
    """A deep copy of a state (tensors cloned), as a save and load would give back."""
    import copy

    return copy.deepcopy(state)
