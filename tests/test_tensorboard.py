"""TensorBoard events per epoch where it is installed (a fake SummaryWriter here); nothing without it."""

import sys
import types

import torch

from cxrlib.training import tensorboard


class FakeWriter:
    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.images = log_dir, {}, {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag, step] = value

    def add_image(self, tag, image, step):
        self.images[tag, step] = image

    def flush(self):
        pass


class FakeTrainer:
    collate_fn = None
    device = torch.device("cpu")

    def __init__(self, stage_dir, stage):
        self.stage_dir, self.config, self.model = stage_dir, types.SimpleNamespace(stage=stage), torch.nn.Identity()

    def _forward(self, batch):
        return {"saliency_log": torch.log_softmax(batch["image"].flatten(1), 1).reshape(batch["image"].shape)}


def test_epoch_scalars_and_a_predicted_map_where_tensorboard_is_installed(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(tensorboard, "_WRITERS", {})
    trainer = FakeTrainer(tmp_path / "stage2", "stage2")
    val = [{"image": torch.rand(1, 8, 6)}]
    tensorboard.log_epoch(trainer, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_cc": 0.3,
                                    "improved": True, "lr": 1e-3}, val)
    writer = tensorboard.writer_for(trainer.stage_dir)
    assert writer.log_dir == str(tmp_path / "stage2" / "tensorboard")
    assert writer.scalars == {("stage2/train/train_loss", 2): 0.5, ("stage2/val/loss", 2): 0.7,
                              ("stage2/val/cc", 2): 0.3, ("stage2/train/lr", 2): 1e-3}
    (tag, step), image = next(iter(writer.images.items()))
    assert (tag, step) == ("stage2/val/predicted_map", 2) and image.shape == (1, 8, 6) and image.max() == 1


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(tensorboard, "_WRITERS", {})
    trainer = FakeTrainer(tmp_path / "stage1b", "stage1b")
    tensorboard.log_epoch(trainer, {"epoch": 1, "train_loss": 0.5}, [{"image": torch.rand(1, 4, 4)}])
    assert tensorboard.writer_for(trainer.stage_dir) is None and not (tmp_path / "stage1b").exists()
