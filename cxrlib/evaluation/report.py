"""What the notebooks print after training and evaluation, read from the run itself.

``history_summary`` turns a stage's history into the few sentences a student should check
("the loss fell from X to Y"); ``test_report`` is notebook 05's final evaluation on the test
split (predictions, metrics with 95 % intervals, ``metrics.json``) as one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlib.training.history import epoch_line

SHOWN_METRICS = ("val_auc_macro", "val_accuracy", "val_cc", "val_kld", "val_sim")
LOWER_IS_BETTER = ("val_loss", "val_kld")


def epoch_lines(history, stage: str = "") -> str:
    """The history as one line per epoch (the lines the training loop prints while it runs)."""
    return "\n".join(epoch_line(row, stage, len(history)) for row in history.to_dict("records"))


def _finite(history, key) -> np.ndarray:
    return history[key].to_numpy(dtype=float) if key in history else np.array([])


def history_summary(history, metrics=SHOWN_METRICS) -> str:
    """A few plain sentences on a stage's history: how the losses moved, where validation was
    best, and the first and best value of each validation metric the history holds."""
    if history is None or len(history) == 0:
        return "no epochs were trained (the history is empty)"
    if "phase" in history and history["phase"].nunique() > 1:  # stage 3 with mode="finetune"
        # each phase apart: their losses are on different scales, and the checkpoint is the last phase's best
        phases = list(dict.fromkeys(history["phase"]))
        parts = []
        for phase in phases:
            text = history_summary(history[history["phase"] == phase].reset_index(drop=True), metrics)
            if phase != phases[-1]:
                text = text.replace("that epoch's weights are the checkpoint (best.pt) the next stage starts from",
                                    f"the {phases[phases.index(phase) + 1]} phase starts from that epoch's weights")
            parts.append(f"{phase} phase:\n" + text)
        return "\n".join(parts)
    n = len(history)
    lines = [f"{n} epoch(s), {history['seconds'].sum():.1f} s of training and validation in all"
             if "seconds" in history else f"{n} epoch(s)"]
    for key in ("train_loss", "val_loss"):
        values = _finite(history, key)
        if not len(values) or not np.isfinite(values).any():
            continue
        if n == 1:
            lines.append(f"{key.replace('_', ' ')} {values[0]:.4f} after the only epoch (nothing to compare with yet)")
            continue
        change = values[-1] - values[0]
        trend = "fell" if change < 0 else "rose" if change > 0 else "stayed"
        pct = f" ({abs(change) / abs(values[0]):.0%})" if values[0] else ""
        lines.append(f"{key.replace('_', ' ')} {trend} from {values[0]:.4f} (epoch 1) to {values[-1]:.4f} "
                     f"(epoch {n}){pct if change else ''}")
    val = _finite(history, "val_loss")
    if len(val) and np.isfinite(val).any():
        best = int(np.nanargmin(val))
        lines.append(f"best validation loss {val[best]:.4f} at epoch {best + 1}: that epoch's weights are "
                     "the checkpoint (best.pt) the next stage starts from")
    for key in metrics:
        values = _finite(history, key)
        if not len(values) or not np.isfinite(values).any():
            continue
        if n == 1:
            lines.append(f"{key.removeprefix('val_')} on validation: {values[0]:.3f} after the only epoch")
            continue
        pick = np.nanargmin if key in LOWER_IS_BETTER else np.nanargmax
        best = int(pick(values))
        lines.append(f"{key.removeprefix('val_')} on validation: {values[0]:.3f} after epoch 1, "
                     f"{values[-1]:.3f} after epoch {n}, best {values[best]:.3f} (epoch {best + 1})")
    return "\n".join(lines)


@dataclass
class TestReport:
    """Notebook 05's final numbers: ``predictions`` (``stages.predict`` on the test split), ``metrics``
    (``evaluate.evaluate_predictions``), ``path`` of ``metrics.json`` and the data's label."""

    predictions: dict
    metrics: dict
    path: Path
    data_label: str

    def saliency_table(self):
        """Predicted saliency and the centre-bias baseline, metric by metric (means and 95 % CIs)."""
        import pandas as pd

        return pd.DataFrame({"predicted saliency": self.metrics.get("saliency", {}),
                             "centre-bias baseline": self.metrics["baseline_centre"]}).T

    def classification_table(self):
        """Macro and micro AUC, accuracy and macro F1 with their 95 % bootstrap intervals."""
        import pandas as pd

        c = self.metrics["classification"]
        keys = ("auc_macro", "auc_micro", "accuracy", "f1_macro")
        return pd.DataFrame({"value": {k: c[k] for k in keys}, "95% CI": {k: c[f"{k}_ci"] for k in keys}})

    def summary(self) -> str:
        """What you should see: the headline numbers of this run, with their intervals."""
        c, s, b = self.metrics["classification"], self.metrics.get("saliency", {}), self.metrics["baseline_centre"]
        split = self.metrics.get("split", "test split")
        lines = [f"{self.metrics['n_test']} images of the {split} ({self.data_label})",
                 f"macro AUC {c['auc_macro']:.3f} [{c['auc_macro_ci'][0]:.3f}, {c['auc_macro_ci'][1]:.3f}], "
                 f"accuracy {c['accuracy']:.3f} (chance: {1 / 3:.3f})"]
        if "cc" in s and "cc" in b:
            verdict = "beats" if s["cc"] > b["cc"] else "does not beat"
            lines.append(f"predicted saliency CC {s['cc']:.3f} [{s['cc_ci'][0]:.3f}, {s['cc_ci'][1]:.3f}] "
                         f"{verdict} the centre-bias baseline's CC {b['cc']:.3f}")
        lines.append(f"written to {self.path}")
        return "\n".join(lines)


def test_report(config, model, data, *, progress: bool = True) -> TestReport:
    """Predict the test split with ``model``, score it (95 % bootstrap intervals, centre-bias
    baseline on the same images) and write ``<stage_dir>/metrics.json`` with the run's context.
    ``config.eval_split="val"`` scores the validation split instead (the paper code's protocol,
    labelled optimistic); ``config.kld_eps`` sets the KLD's eps (`evaluate.evaluate_predictions`)."""
    from cxrlib.evaluation import evaluate
    from cxrlib.training import stages

    scored, _ = evaluate.eval_dataset(data, config)
    predictions = stages.predict(model, scored, config, progress=progress)
    metrics = evaluate.evaluate_predictions(predictions, n_boot=config.n_boot, seed=config.seed, kld_eps=config.kld_eps,
                                            eval_split=config.eval_split)
    label = evaluate.data_label(config)
    path = evaluate.write_metrics(config.stage_dir / "metrics.json", metrics, profile=config.profile, data=label,
                                  seed=config.seed, image_size=list(config.image_size))
    return TestReport(predictions, metrics, path, label)
