"""Watch a run live in TensorBoard, where it is installed (Colab has it): each epoch's losses and
validation metrics, and for a stage that predicts saliency one predicted map of the first
validation image, as event files in the stage's folder (``<run_dir>/<stage>/tensorboard``).

On Colab: ``%load_ext tensorboard`` then ``%tensorboard --logdir <run_dir>``. Without the
``tensorboard`` package :func:`writer_for` returns None and nothing else changes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from cxrlib.model import predicted_maps

FOLDER = "tensorboard"
_WRITERS: dict[str, object] = {}  # stage folder -> its SummaryWriter, one per process


def writer_for(stage_dir) -> object | None:
    """The stage folder's event writer, or None without TensorBoard."""
    key = str(Path(stage_dir))
    if key not in _WRITERS:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's module needs the tensorboard package
            _WRITERS[key] = None
        else:
            _WRITERS[key] = SummaryWriter(log_dir=str(Path(stage_dir) / FOLDER))
    return _WRITERS[key]


def log_epoch(trainer, row: dict, val_data=None) -> None:
    """Write one history row (losses, validation metrics, lr) and, for saliency stages, a map."""
    writer = writer_for(trainer.stage_dir)
    if writer is None:
        return
    step = int(row["epoch"])
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            group = "val" if key.startswith("val_") else "train"
            writer.add_scalar(f"{trainer.config.stage}/{group}/{key.removeprefix('val_')}", value, step)
    if val_data is not None and len(val_data):
        try:
            _log_map(trainer, writer, val_data, step)
        except Exception as error:  # a picture is not worth a failed stage
            warnings.warn(f"TensorBoard: no predicted map for epoch {step} ({error})", stacklevel=2)
    writer.flush()


def _log_map(trainer, writer, val_data, step: int) -> None:
    from cxrlib.training.batches import to_device

    collate = trainer.collate_fn or torch.utils.data.default_collate
    batch = to_device(collate([val_data[0]]), trainer.device)
    trainer.model.eval()  # as after evaluate(); the next epoch sets the training modes again
    with torch.no_grad():
        out = trainer._forward(batch)
    if "saliency_log" not in out:
        return
    predicted_map = predicted_maps(out)[0]
    writer.add_image(f"{trainer.config.stage}/val/predicted_map",
                     (predicted_map / predicted_map.max().clamp_min(1e-12))[None].cpu(), step)
