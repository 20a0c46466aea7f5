"""Saliency metrics (docs/method.md, section 6), one (H, W) map at a time.

They follow the MIT saliency benchmark (Bylinskii et al. 2019, "What do different evaluation
metrics tell us about saliency models?", TPAMI 41(3)): CC, KLD and SIM against the ground-truth
gaze map, NSS and AUC-Judd against the fixations; plus the centre-bias baseline map.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import xlogy

from cxrlib.metrics.arrays import as_numpy as _np

EPS = 2.2204e-16  # MATLAB's eps, as in the benchmark code


def _pair(predicted_map, gaze_map) -> tuple[np.ndarray, np.ndarray]:
    p, g = _np(predicted_map), _np(gaze_map)
    if p.shape != g.shape:
        raise ValueError(f"maps differ in shape: {p.shape} vs {g.shape}")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise ValueError("maps contain NaN or inf")
    return p, g


def _to_distribution(x: np.ndarray, name: str) -> np.ndarray:
    if (x < 0).any():
        raise ValueError(f"{name} has negative values")
    total = x.sum()
    if total <= 0:
        raise ValueError(f"{name} sums to zero")
    return x / total


def cc(predicted_map, gaze_map) -> float:
    """Pearson linear correlation coefficient of two maps (Bylinskii et al. 2019).

    A constant map has no defined correlation; it scores 0.0 (chance level), without a warning.
    """
    p, g = _pair(predicted_map, gaze_map)
    a, b = p - p.mean(), g - g.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def kld(predicted_map, gaze_map, eps: float = EPS) -> float:
    """KL(gaze_map || predicted_map) = sum gaze_map * log(eps + gaze_map / (predicted_map + eps)),
    both summing to 1.

    The benchmark's KLdiv (Bylinskii et al. 2019), including its eps placement. ``eps=0``: the
    exact ``sum gaze_map (log gaze_map - log predicted_map)`` (0 log 0 = 0; inf where
    predicted_map is 0 and gaze_map is not), what the paper's code reports
    (``F.kl_div(log pred, gt, reduction="batchmean")`` per image).
    Lower is better; 0 for identical maps. Negative or all-zero maps raise ValueError.
    """
    p, g = _pair(predicted_map, gaze_map)
    p, g = _to_distribution(p, "predicted_map"), _to_distribution(g, "gaze_map")
    if eps <= 0:
        with np.errstate(divide="ignore"):
            return float((xlogy(g, g) - np.where(g > 0, g * np.log(p), 0.0)).sum())
    return float((g * np.log(eps + g / (p + eps))).sum())


def sim(predicted_map, gaze_map) -> float:
    """Similarity / histogram intersection: sum min(predicted_map, gaze_map), both normalised to sum 1.

    Bylinskii et al. 2019; 1 for identical maps, 0 for disjoint ones. Unlike the
    benchmark's MATLAB code there is no min-max rescaling before the sum-normalisation: the maps
    here already are distributions (softmax output, normalised gaze maps).
    """
    p, g = _pair(predicted_map, gaze_map)
    p, g = _to_distribution(p, "predicted_map"), _to_distribution(g, "gaze_map")
    return float(np.minimum(p, g).sum())


def _fixated(predicted_map, fixation_map) -> tuple[np.ndarray, np.ndarray]:
    p, f = _pair(predicted_map, fixation_map)
    fix = f > 0
    if not fix.any():
        raise ValueError("fixation map has no fixated pixel")
    return p, fix


def nss(predicted_map, fixation_map) -> float:
    """Normalized Scanpath Saliency (Bylinskii et al. 2019).

    The map is standardised (zero mean, unit standard deviation with ddof=1, as MATLAB's std in
    the benchmark code) and averaged over fixated pixels (``fixation_map > 0``; counts are
    treated as binary). A constant map scores 0.0 (chance level).
    """
    p, fix = _fixated(predicted_map, fixation_map)
    std = p.std(ddof=1) if p.size > 1 else 0.0
    if std == 0:
        return 0.0
    return float(((p[fix] - p.mean()) / std).mean())


def auc_judd(predicted_map, fixation_map, jitter: bool = True, seed: int = 0) -> float:
    """AUC-Judd (Bylinskii et al. 2019; the benchmark's AUC_Judd.m).

    Thresholds are the map's values at the fixated pixels, in descending order; at the i-th
    threshold ``tp = i / n_fix`` and ``fp = (#pixels >= thresh - i) / (n_pixels - n_fix)``; the
    score is the trapezoid area under (0, 0), ..., (1, 1). Fixated = ``fixation_map > 0``.

    Choice: the map is rescaled to [0, 1] *before* the tie-breaking jitter (uniform, < 1e-7,
    seeded), so the jitter is small whatever the map's units (a softmax over 640x512 pixels has
    values near 3e-6, where the benchmark's absolute jitter would not be negligible).
    A constant map scores 0.5 (chance level).
    """
    p, fix = _fixated(predicted_map, fixation_map)
    lo, hi = p.min(), p.max()
    if hi == lo:
        return 0.5
    s = (p - lo) / (hi - lo)
    if jitter:
        s = s + np.random.default_rng(seed).random(s.shape) / 1e7
    s = s.ravel()
    n_pix, n_fix = s.size, int(fix.sum())
    if n_fix == n_pix:
        raise ValueError("every pixel is fixated: no negatives for AUC")
    thresholds = np.sort(s[fix.ravel()])[::-1]
    above = n_pix - np.searchsorted(np.sort(s), thresholds, side="left")  # #(s >= thresh)
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / (n_pix - n_fix), [1.0]])
    return float(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2).sum())  # trapezoid rule


def fixation_map_from_points(points, shape: tuple[int, int]) -> np.ndarray:
    """Binary (H, W) uint8 map with 1 at each point, for NSS and AUC-Judd.

    Args:
        points: (N, 2) array of (x = column, y = row) coordinates in output pixels. They are
            rounded to the nearest pixel (``np.rint``); points outside the image after rounding,
            and NaN points, are dropped, never clipped onto the border.
        shape: (H, W) of the map.
    """
    h, w = shape
    out = np.zeros((h, w), dtype=np.uint8)
    pts = _np(points).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    xy = np.rint(pts).astype(np.int64)
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    out[xy[keep, 1], xy[keep, 0]] = 1
    return out


def centre_bias_map(shape: tuple[int, int], width_frac: float = 0.25) -> np.ndarray:
    """Centre-bias baseline: an image-centred Gaussian, summing to 1 (float64, (H, W)).

    The standard "centre prior" baseline of saliency benchmarks (Bylinskii et al. 2019): the
    score a model gets from predicting "the middle of the image" alone. Anisotropic:
    ``sigma_y = width_frac * H``, ``sigma_x = width_frac * W``, centre at ((H-1)/2, (W-1)/2)
    (``width_frac``, not the gaze maps' ``sigma_frac``: a different Gaussian).
    """
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / (width_frac * h)
    x = (np.arange(w) - (w - 1) / 2) / (width_frac * w)
    g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    return g / g.sum()


def saliency_scores(predicted_map, gaze_map, fixation_map=None, *, kld_eps: float = EPS) -> dict[str, float]:
    """CC, KLD and SIM of one (H, W) map against the ground-truth map; NSS and AUC-Judd too
    when a fixation map is given. ``kld_eps``: `kld`'s eps."""
    out = {"cc": cc(predicted_map, gaze_map), "kld": kld(predicted_map, gaze_map, eps=kld_eps),
           "sim": sim(predicted_map, gaze_map)}
    if fixation_map is not None:
        out["nss"] = nss(predicted_map, fixation_map)
        out["auc_judd"] = auc_judd(predicted_map, fixation_map)
    return out


def _map2d(m) -> np.ndarray:
    a = _np(m)
    return a.reshape(a.shape[-2:])  # (H, W) or (1, H, W) -> (H, W); more channels: error


def _maps(x) -> list[np.ndarray]:
    return [_map2d(m) for m in (x if isinstance(x, (list, tuple)) else _np(x))]


def batch_saliency_scores(predicted_maps, gaze_maps, fixation_maps=None, *, kld_eps: float = EPS) -> pd.DataFrame:
    """`saliency_scores` per image: one row per image, one column per metric.

    ``predicted_maps`` and ``gaze_maps`` are (N, H, W) or (N, 1, H, W) arrays/tensors or sequences of maps.
    ``fixation_maps`` is None or a sequence of N maps; an entry None gives NaN NSS/AUC-Judd.
    """
    p, g = _maps(predicted_maps), _maps(gaze_maps)
    fx = [None] * len(p) if fixation_maps is None else list(fixation_maps)
    fx = [None if f is None else _map2d(f) for f in fx]
    if not len(p) == len(g) == len(fx):
        raise ValueError(f"{len(p)} predictions, {len(g)} gaze maps, {len(fx)} fixation maps")
    rows = [saliency_scores(a, b, f, kld_eps=kld_eps) for a, b, f in zip(p, g, fx)]
    return pd.DataFrame(rows)  # rows without fixations get NaN in nss and auc_judd
