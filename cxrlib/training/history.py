"""A stage's history (one row per epoch, ``history.json``): the early-stopping rule, whether a fit
has ended, and the one-line summary of an epoch that every notebook prints."""

from __future__ import annotations

import numpy as np


def early_stop(history: list[dict], patience: int) -> bool:
    """The early-stopping rule: stop once ``patience`` epochs in a row brought no improvement of
    the validation loss (``improved`` in each history row); ``patience`` 0 never stops."""
    return bool(patience) and len(history) >= patience and not any(r.get("improved") for r in history[-patience:])


def ended(history: list[dict]) -> bool:
    """Whether a stage's history (``history.json``) records a finished fit: all its epochs, or an
    early stop (``early_stop``, or ``lr_floor``: the learning rate fell below its floor). An
    interrupted stage (crash, ``stop_after``) has not ended."""
    return bool(history) and history[-1].get("end") in ("epochs", "early_stop", "lr_floor")


def epoch_line(row: dict, stage: str = "", epochs: int | None = None) -> str:
    """One history row as one line: epoch, losses, the validation metrics present, seconds."""
    keys = ("val_auc_macro", "val_accuracy", "val_cc", "val_kld", "val_sim", "val_nss")
    metrics = "  ".join(f"{k.removeprefix('val_')} {row[k]:.3f}" for k in keys
                        if isinstance(row.get(k), (int, float)) and np.isfinite(row[k]))
    of = f"/{epochs}" if epochs else ""
    mark = "  *best" if row.get("improved") else ""
    return (f"{stage} epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
            f"  {metrics}  {row.get('seconds', float('nan')):.1f} s{mark}").replace("    ", "  ")
