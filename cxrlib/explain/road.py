"""ROAD faithfulness of class activation maps (notebook 06): does removing the pixels a CAM calls
relevant change the diagnosis more than removing those it calls irrelevant?

ROAD is Rong et al. 2022 ("A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML), after Hooker et al. 2019's remove-and-retrain idea; the imputation is
pytorch-grad-cam's. The CAMs themselves come from :mod:`cxrlib.explain.cams`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from cxrlib.explain.cams import LogitsOnly, class_targets, inference_state


def _rank_map(cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ranks in [0, 1] with ties broken at random, so a percentile removes exactly that share of
    pixels even where a CAM is flat (ReLU leaves large zero regions)."""
    flat = cam.ravel()
    order = np.lexsort((rng.random(flat.size), flat))
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(flat.size) / max(flat.size - 1, 1)
    return ranks.reshape(cam.shape).astype(np.float32)


def faithfulness(model: nn.Module, images: torch.Tensor, cams: np.ndarray, *,
                 percentiles: Sequence[float] = (10, 30, 50, 70, 90), target_classes=None,
                 seed: int = 0) -> pd.DataFrame:
    """ROAD faithfulness of CAMs (Rong et al. 2022, "A Consistent and Efficient Evaluation
    Strategy for Attribution Methods", ICML; after Hooker et al. 2019's remove-and-retrain idea).

    For each percentage k of ``percentiles`` the k% most (and, separately, least) relevant pixels
    of each (H, W) map in ``cams`` are replaced by ROAD's noisy linear imputation from their
    neighbours (the package's ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst``, which work on
    1-channel inputs: a sparse solve per image, milliseconds at 64 x 64) and the softmax
    probability of the target class (default: the predicted class) is measured again. Rows per
    image and k: ``prob`` before, ``drop_most``, ``drop_least`` (prob - prob after) and
    ``road = (drop_most - drop_least) / 2``, whose mean over k is the package's ``ROADCombined``
    score: higher means a more faithful map. Ties in a map are broken at random (``seed``, also
    seeding the imputation noise) so exactly k% of the pixels go.
    """
    if not all(0 < k < 100 for k in percentiles):
        raise ValueError(f"percentiles must lie strictly between 0 and 100, got {percentiles}")
    wrapped = LogitsOnly(model)
    x = images.detach().to(next(model.parameters()).device, torch.float32)
    rng = np.random.default_rng(seed)
    ranks = np.stack([_rank_map(np.asarray(c, dtype=np.float64), rng) for c in cams])  # (B, H, W)
    with inference_state(model), torch.no_grad(), torch.random.fork_rng(devices=[]), \
            warnings.catch_warnings():
        # the package's imputer passes torch tensors to NumPy (a NumPy 2 deprecation, harmless)
        warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
        torch.manual_seed(seed)
        probs = torch.softmax(wrapped(x), dim=1)  # (B, C)
        classes = class_targets(target_classes, len(x)) or probs.argmax(1).tolist()
        targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
        before = probs[torch.arange(len(x)), classes].cpu().numpy()
        rows = []
        for k in percentiles:
            # The package's percentile p keeps the pixels below it: it removes (100 - p)%.
            after = {name: metric(percentile=100 - k)(x, ranks, targets, wrapped, return_diff=False)
                     for name, metric in (("most", ROADMostRelevantFirst),
                                          ("least", ROADLeastRelevantFirst))}
            for i in range(len(x)):
                most, least = before[i] - after["most"][i], before[i] - after["least"][i]
                rows.append({"image": i, "target": classes[i], "removed_pct": k,
                             "prob": float(before[i]), "drop_most": float(most),
                             "drop_least": float(least), "road": float((most - least) / 2)})
    return pd.DataFrame(rows)
