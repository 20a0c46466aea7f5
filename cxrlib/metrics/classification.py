"""Diagnosis metrics (docs/method.md, section 6) from softmax scores, and the statistics every
comparison uses: bootstrap confidence intervals, the paired t-test and k-NN accuracy of features.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from cxrlib import CLASS_NAMES
from cxrlib.metrics.arrays import as_numpy as _np


def _scores_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(probs), _np(labels, dtype=np.int64)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
        raise ValueError(f"need probs (N, C) and labels (N,), got {p.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y


def classification_scores(
    probs, labels, class_names: Sequence[str] = CLASS_NAMES
) -> dict:
    """Diagnosis metrics of docs/method.md, section 6, from softmax scores (N, C) and labels (N,).

    Returns ``auc_per_class`` {name: one-vs-rest ROC AUC}, ``auc_macro`` (mean of the defined
    per-class AUCs), ``auc_micro`` (one ROC over all N*C one-hot entries), ``accuracy`` (of the
    argmax), ``f1_per_class`` {name: F1}, ``f1_macro`` and ``confusion_matrix`` (rows = true,
    columns = predicted, list of lists).

    Undefined values are NaN, not warnings: the AUC of a class absent from ``labels`` (no
    positives, so no true-positive rate), and the F1 of a class neither present nor predicted
    (0/0). Macro averages are over the defined classes (NaN if none).
    """
    p, y = _scores_labels(probs, labels)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} score columns")
    onehot = np.eye(k, dtype=np.int64)[y]
    auc = [
        float(roc_auc_score(onehot[:, c], p[:, c])) if 0 < onehot[:, c].sum() < len(y) else np.nan
        for c in range(k)
    ]
    auc_micro = float(roc_auc_score(onehot.ravel(), p.ravel())) if 0 < len(y) else np.nan
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    f1 = f1_score(y, pred, labels=list(range(k)), average=None, zero_division=0).astype(float)
    f1[(cm.sum(0) + cm.sum(1)) == 0] = np.nan  # 2tp + fp + fn == 0: never true, never predicted
    return {
        "auc_per_class": dict(zip(class_names, auc)),
        "auc_macro": float(np.nanmean(auc)) if not np.isnan(auc).all() else np.nan,
        "auc_micro": auc_micro,
        "accuracy": float(accuracy_score(y, pred)),
        "f1_per_class": dict(zip(class_names, f1.tolist())),
        "f1_macro": float(np.nanmean(f1)) if not np.isnan(f1).all() else np.nan,
        "confusion_matrix": cm.tolist(),
    }


def roc_curves(probs, labels) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curves ``{class_index: (fpr, tpr)}`` for plotting; classes absent from
    ``labels`` (or present in every row) are left out."""
    p, y = _scores_labels(probs, labels)
    out = {}
    for c in range(p.shape[1]):
        pos = y == c
        if 0 < pos.sum() < len(y):
            fpr, tpr, _ = roc_curve(pos.astype(int), p[:, c])
            out[c] = (fpr, tpr)
    return out


def bootstrap_ci(
    metric_fn: Callable[..., float], *arrays, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval ``(point, low, high)`` of any metric.

    Rows are resampled with replacement, the same indices for every array (Efron & Tibshirani
    1993), e.g. ``bootstrap_ci(lambda p, y: classification_scores(p, y)["auc_macro"], probs,
    labels)`` or ``bootstrap_ci(np.mean, per_image_cc)``. ``point`` is the metric on all rows.
    Resamples whose metric is NaN or raises ValueError (e.g. one class only) are skipped; if
    more than half fail, RuntimeError.
    """
    if not arrays:
        raise ValueError("give at least one array")
    data = [_np(a, dtype=None) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data) or n == 0:
        lengths = [len(a) for a in data]
        raise ValueError(f"arrays must be non-empty and of equal length, got {lengths}")
    point = float(metric_fn(*data))
    rng = np.random.default_rng(seed)
    values, failed = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            with warnings.catch_warnings():  # scikit-learn >= 1.6 warns and returns NaN
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                v = float(metric_fn(*(a[idx] for a in data)))
        except ValueError:  # older scikit-learn raises
            v = np.nan
        if np.isnan(v):
            failed += 1
        else:
            values.append(v)
    if failed > n_boot / 2:
        raise RuntimeError(f"{failed} of {n_boot} bootstrap resamples gave no metric value")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return point, float(low), float(high)


def paired_ttest(a, b) -> dict[str, float]:
    """Paired t-test (``scipy.stats.ttest_rel``) of per-image scores a vs b, as the paper's
    significance test (docs/method.md, section 6). Returns ``t``, two-sided ``p``,
    ``mean_diff = mean(a - b)`` and ``n``."""
    x, y = _np(a).ravel(), _np(b).ravel()
    if len(x) != len(y):
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    if len(x) < 2:
        raise ValueError("need at least two pairs")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("samples contain NaN or inf")
    res = stats.ttest_rel(x, y)
    return {
        "t": float(res.statistic),
        "p": float(res.pvalue),
        "mean_diff": float((x - y).mean()),
        "n": len(x),
    }


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 5, metric: str = "cosine") -> float:
    """Accuracy of a k-nearest-neighbour probe on frozen embeddings.

    The usual read-out of a contrastive representation (e.g. Wu et al. 2018; Chen et al. 2020):
    it measures how well classes cluster without training anything on top. Use the geometry
    the loss shaped: ``"euclidean"`` for the triplet loss (L2 distances), ``"cosine"`` for
    SupCon and NT-Xent (normalised embeddings).
    """
    from sklearn.neighbors import KNeighborsClassifier

    train_x, test_x = _np(train_x), _np(test_x)
    k = max(1, min(k, len(train_x)))
    probe = KNeighborsClassifier(n_neighbors=k, metric=metric).fit(train_x, np.asarray(train_y))
    return float((probe.predict(test_x) == np.asarray(test_y)).mean())
