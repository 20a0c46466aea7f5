"""Executed copies of the notebooks (docs/executed/, `make executed`): synthetic data only, and
the same code as the source notebooks."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from cxrlib import run

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "03_stage1_encoder.ipynb"


def test_committed_executed_copies_have_the_source_code_cells():
    assert run.executed_mismatches(ROOT) == [], "docs/executed/ is stale: rebuild it with `make executed`"


def _fake_run(tmp_path, config):
    (tmp_path / "run" / "notebooks").mkdir(parents=True)
    (tmp_path / "run" / "stage1b").mkdir()
    (tmp_path / "run" / "stage1b" / "config.json").write_text(json.dumps(config))
    nb = nbformat.read(SOURCE, as_version=4)
    nb.cells[-1].source += "\n(executed)"  # markdown may differ; outputs are what the copy adds
    injected = nbformat.v4.new_code_cell('profile = "demo"', metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(3, injected)  # as papermill does
    nbformat.write(nb, tmp_path / "run" / "notebooks" / SOURCE.name)
    return tmp_path / "run"


def test_a_demo_run_on_synthetic_data_is_copied(tmp_path):
    run_dir = _fake_run(tmp_path, {"profile": "demo", "egd_root": None})
    copied = run.publish_executed(run_dir, tmp_path / "docs" / "executed")
    assert [p.name for p in copied] == [SOURCE.name]
    (tmp_path / "notebooks").mkdir()
    shutil.copy(SOURCE, tmp_path / "notebooks" / SOURCE.name)
    assert run.executed_mismatches(tmp_path) == []


def test_real_data_is_refused(tmp_path):
    run_dir = _fake_run(tmp_path, {"profile": "paper", "egd_root": "/data/egd-cxr/1.0.0"})
    with pytest.raises(ValueError, match="PhysioNet data must never be committed"):
        run.publish_executed(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_changed_code_cell_is_found(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs" / "executed").mkdir(parents=True)
    shutil.copy(SOURCE, tmp_path / "notebooks" / SOURCE.name)
    nb = nbformat.read(SOURCE, as_version=4)
    next(c for c in nb.cells if c.cell_type == "code").source += "\nprint('changed')"
    nbformat.write(nb, tmp_path / "docs" / "executed" / SOURCE.name)
    assert run.executed_mismatches(tmp_path) == [SOURCE.name]
    run_dir = _fake_run(tmp_path, {"profile": "demo", "egd_root": None})
    nbformat.write(nb, run_dir / "notebooks" / SOURCE.name)
    with pytest.raises(ValueError, match="other code"):
        run.publish_executed(run_dir, tmp_path / "out")
