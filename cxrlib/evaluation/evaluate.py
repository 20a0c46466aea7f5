"""The final evaluation on the test split (touched once, in notebook 05) and ``metrics.json``.

Every number comes with a 95 % bootstrap interval over test images (docs/method.md section 6), and
the centre-bias map is scored on the same images as a floor the predicted saliency must beat.

``eval_split="val"`` evaluates on the validation split instead, as the paper's code does
(``NetLearn.evaluate`` in ``Classfication/hzhu_learn.py`` scores ``dataAll('Valid')``, the split
that also chose the checkpoint). Such figures are optimistic and are labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxrlib import metrics

# The paper's headline figures (arXiv:2403.16970, abstract), for a side-by-side table only:
# they were measured on EGD-CXR, not on the data this project runs by default. The authors' code
# reports per-class and micro-averaged ROC AUC (MetricsHandle_Class in hzhu_metrics_class.py; no
# macro average), so the paper's AUC stands beside this project's micro AUC.
PAPER_RESULTS = {"auc_micro": 0.93, "cc": 0.58}
# The paper does not name its evaluation split; the code's only evaluation (NetLearn.evaluate) scores
# Valid, which also chose the checkpoint, and its loaders never read Test: an inference from the code.
PAPER_DATA = ("EGD-CXR (arXiv:2403.16970); by the authors' code, inferred: its validation split, split by "
              "image, which also chose the checkpoint")
EVAL_SPLITS = {
    "test": "test split (touched once; the checkpoint was chosen on validation)",
    "val": "validation split, as the paper's code: OPTIMISTIC (the same split chose the checkpoint)",
}
SALIENCY_KEYS = ("cc", "kld", "sim", "nss", "auc_judd")


def data_label(config) -> str:
    """What a run's figures were measured on: the bundled synthetic set or EGD-CXR."""
    return "synthetic EGD-format data" if config.egd_root is None else "EGD-CXR (this run's split)"


def eval_dataset(data, config):
    """``(data set, label)`` of the split the final figures come from (``config.eval_split``).

    ``data`` is a `cxrlib.training.stages.DataBundle` (or anything with ``test`` and ``val``).
    """
    split = getattr(config, "eval_split", "test")
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {tuple(EVAL_SPLITS)}, got {split!r}")
    if split == "val":
        import warnings

        warnings.warn("eval_split='val': the figures come from the validation split that also chose the "
                      "checkpoint (the paper code's protocol); they are optimistic", stacklevel=2)
    return (data.val if split == "val" else data.test), EVAL_SPLITS[split]


def saliency_table(predicted_maps, gaze_maps, fixations, *, kld_eps: float = metrics.EPS) -> "pd.DataFrame":
    """Per-image CC, KLD, SIM, NSS, AUC-Judd (fixation maps built from the output-pixel points).

    ``kld_eps``: the KLD's eps (`metrics.kld`; 0 is the exact KL of the paper's code)."""
    shape = gaze_maps.shape[1:]
    fix = [metrics.fixation_map_from_points(p, shape) if len(p) else None for p in fixations]
    fix = [f if f is not None and f.any() else None for f in fix]
    return _scores_batched(predicted_maps, gaze_maps, fix, kld_eps=kld_eps)


def _scores_batched(predicted_maps, gaze_maps, fix, *, kld_eps: float) -> "pd.DataFrame":
    """`metrics.batch_saliency_scores` computed batched in torch (float64, equal to it to 1e-5):
    one call instead of a Python loop over test images; an image without fixations gets NaN."""
    import pandas as pd
    import torch

    from cxrlib.metrics.torch_saliency import batch_scores_torch

    predicted, gaze = torch.as_tensor(np.asarray(predicted_maps)), torch.as_tensor(np.asarray(gaze_maps))
    fixation = None
    if any(f is not None for f in fix):
        fixation = torch.as_tensor(np.stack([np.zeros(gaze.shape[-2:], np.uint8) if f is None else f for f in fix]))
    scores = batch_scores_torch(predicted, gaze, fixation, kld_eps=kld_eps)
    return pd.DataFrame({k: v.cpu().numpy() for k, v in scores.items()})


def _with_ci(table, *, n_boot: int, seed: int) -> dict:
    out = {}
    for key in SALIENCY_KEYS:
        if key not in table:  # NSS and AUC-Judd need fixations: without any, there are none
            continue
        values = table[key].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        point, low, high = metrics.bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed)
        out[key], out[f"{key}_std"], out[f"{key}_ci"] = float(point), float(values.std()), [float(low), float(high)]
    out["n_images"] = int(len(table))
    return out


def evaluate_predictions(predictions: dict, *, n_boot: int = 1000, seed: int = 0, kld_eps: float = metrics.EPS,
                         eval_split: str = "test") -> dict:
    """Metrics of ``stages.predict`` output: classification, saliency and the centre baseline.

    ``kld_eps``: the KLD metric's eps (config ``kld_eps``; 0: the exact KL of the paper's code).
    ``eval_split``: the split ``predictions`` come from (`eval_dataset`), recorded in the result with its
    label so that `paper_comparison` and ``metrics.json`` say which split was scored."""
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {tuple(EVAL_SPLITS)}, got {eval_split!r}")
    probs, labels = predictions["probs"], predictions["labels"]
    scores = metrics.classification_scores(probs, labels)
    classification = {k: v for k, v in scores.items()}
    for key, fn in (("auc_macro", lambda p, y: metrics.classification_scores(p, y)["auc_macro"]),
                    ("auc_micro", lambda p, y: metrics.classification_scores(p, y)["auc_micro"]),
                    ("accuracy", lambda p, y: float((p.argmax(1) == y).mean())),
                    ("f1_macro", lambda p, y: metrics.classification_scores(p, y)["f1_macro"])):
        _, low, high = metrics.bootstrap_ci(fn, probs, labels, n_boot=n_boot, seed=seed)
        classification[f"{key}_ci"] = [float(low), float(high)]
    result = {"classification": jsonable(classification), "n_test": int(len(labels)),
              "eval_split": eval_split, "split": EVAL_SPLITS[eval_split]}
    gaze_maps, fixations = predictions["gaze_map"], predictions["fixations"]
    if predictions.get("predicted_map") is not None:
        table = saliency_table(predictions["predicted_map"], gaze_maps, fixations, kld_eps=kld_eps)
        result["saliency"] = _with_ci(table, n_boot=n_boot, seed=seed)
    centre = np.broadcast_to(metrics.centre_bias_map(gaze_maps.shape[1:]), gaze_maps.shape)
    result["baseline_centre"] = _with_ci(saliency_table(centre, gaze_maps, fixations, kld_eps=kld_eps),
                                         n_boot=n_boot, seed=seed)
    return result


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics(path, result: dict, **context) -> Path:
    """``metrics.json`` with the run's context (profile, data, seed) beside the numbers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable({**context, **result}), indent=2))
    return path


def paper_comparison(result: dict, *, data_label: str, split_label: str | None = None) -> "pd.DataFrame":
    """Our figures beside the paper's, with the data and split each was measured on.

    The paper's AUC sits beside our **micro** AUC (what the authors' code computes); our macro AUC
    is shown too, with no paper figure beside it. ``split_label``: the split of ``result`` (default:
    ``result["eval_split"]`` if recorded, else the test split).
    """
    import pandas as pd

    split = split_label or EVAL_SPLITS.get(result.get("eval_split", "test"), str(result.get("eval_split")))
    rows = []
    for key, group in (("auc_micro", "classification"), ("auc_macro", "classification"), ("cc", "saliency")):
        ours = result.get(group, {}).get(key)
        ci = result.get(group, {}).get(f"{key}_ci")
        paper = PAPER_RESULTS.get(key)
        rows.append({"metric": key, "this run": ours, "95% CI": None if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                     "this run's data": f"{data_label}, {split}", "paper": paper,
                     "paper's data": PAPER_DATA if paper is not None else "-"})
    return pd.DataFrame(rows)
