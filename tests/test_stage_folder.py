"""The Trainer's run-folder writer: the loop without a disk (MemoryFolder), the in-progress
marker that keeps a half-written stage from reading as complete, and a refused resume."""

import pytest
import torch

from cxrlib.config import make_config
from cxrlib.training.checkpoints import BEST, LAST
from cxrlib.training.equal_stages import stage_complete
from cxrlib.training.stage_folder import IN_PROGRESS, MemoryFolder, StageFolder
from cxrlib.training.trainer import Trainer


class _Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Linear(1, 1)

    def parts(self):
        return {"w": self.w}


def _loss(model, batch, extra=None):
    return {"loss": ((model.w(batch["x"]) - 3.0) ** 2).mean()}


SAMPLES = [{"x": torch.ones(1), "label": torch.tensor(0)} for _ in range(4)]


def _fit(run_dir, *, folder=None, **kw):
    cfg = make_config("stage1b", "smoke", run_dir=str(run_dir), **{"epochs": 3, "lr": 0.1, **kw})
    trainer = Trainer(_Line(), cfg, train_parts=("w",), loss_fn=_loss, progress=False, folder=folder)
    return trainer, trainer.fit(SAMPLES, SAMPLES)


def test_the_loop_runs_without_a_disk(tmp_path):
    folder = MemoryFolder()
    trainer, history = _fit(tmp_path / "run", folder=folder)
    assert not (tmp_path / "run").exists()  # nothing written
    assert len(history) == 3 and history["end"].iloc[-1] == "epochs"
    assert folder.events[:2] == ["start", "config"] and folder.events[-1] == "finish"
    assert folder.events.count("last") == 3 and folder.events.count("best") == history["improved"].sum()
    assert IN_PROGRESS not in folder.files and folder.files[LAST]["epoch"] == 2
    best = folder.files[BEST]["model"]  # the best weights are loaded into the model at the end
    assert all(torch.equal(best[k], v) for k, v in trainer.model.state_dict().items())
    assert folder.files["history.json"][-1]["end"] == "epochs"


class _KilledAfterBest(StageFolder):
    """Dies (as kill -9 would) after writing best.pt and before last.pt."""

    def save_last(self, state):
        raise KeyboardInterrupt("killed between best.pt and last.pt")


def test_a_retrain_killed_between_best_and_last_is_not_complete(tmp_path):
    _fit(tmp_path)
    stage_dir = tmp_path / "stage1b"
    assert stage_complete(stage_dir) and not (stage_dir / IN_PROGRESS).exists()
    before = (stage_dir / BEST).read_bytes()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, folder=_KilledAfterBest(stage_dir), lr=0.05)  # a retrain with other weights
    assert (stage_dir / BEST).read_bytes() != before  # the new run's best.pt, beside the old last.pt and history
    assert (stage_dir / IN_PROGRESS).is_file() and not stage_complete(stage_dir)
    _fit(tmp_path, lr=0.05)  # trained again to the end: complete
    assert stage_complete(stage_dir)


def test_resume_without_last_but_with_a_finished_best_is_refused(tmp_path):
    _fit(tmp_path)
    stage_dir = tmp_path / "stage1b"
    (stage_dir / LAST).unlink()
    before = (stage_dir / BEST).read_bytes()
    with pytest.raises(FileNotFoundError, match="has a best.pt and no last.pt.*resume=False"):
        _fit(tmp_path, resume=True)
    assert (stage_dir / BEST).read_bytes() == before  # not overwritten


def test_resume_in_an_empty_folder_starts_from_scratch(tmp_path):
    _, history = _fit(tmp_path, resume=True)
    assert len(history) == 3 and stage_complete(tmp_path / "stage1b")
