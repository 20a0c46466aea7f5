"""The reproduction report (notebook 07): the ablation runs' results, their statistics, the tables
and the figure. Everything is read from the runs' ``metrics.json`` and ``per_image.csv`` files
(written by :mod:`cxrlib.evaluation.ablation`); nothing here trains or hard-codes a result.

Statistics (docs/method.md section 6), for each variant and metric:

* ``mean`` and ``std``: over model seeds, of the values in the seeds' ``metrics.json``;
* ``low``, ``high``: 95 % percentile-bootstrap interval of that seed-mean, resampling test images
  (the same resamples in every seed and every variant);
* against the reference (the full method), paired on the same test images: ``diff`` (variant -
  reference) with its bootstrap interval, and ``p``: for the saliency metrics the paper's paired
  t-test of per-image scores (each image's score averaged over seeds); for the classification
  metrics, which exist only per set, the two-sided paired-bootstrap p (twice the smaller tail of
  the resampled differences).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrlib import CLASS_NAMES, metrics
from cxrlib.evaluation.evaluate import PAPER_DATA, PAPER_RESULTS, SALIENCY_KEYS
from cxrlib.config.variants import VARIANTS

CLASSIFICATION = ("auc_macro", "auc_micro", *(f"auc_{c}" for c in CLASS_NAMES), "accuracy", "f1_macro")
METRICS = CLASSIFICATION + SALIENCY_KEYS
LOWER_IS_BETTER = {"kld"}


def collect(run_root, variants=None, seeds=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_seed, per_image) of ``<run_root>/ablation/<variant>/seed<k>/``: per_seed has one row
    per variant, seed and metric (``value`` from metrics.json), per_image the per_image.csv rows
    with ``variant`` and ``seed``. Missing runs are left out."""
    rows, tables = [], []
    for path in sorted(Path(run_root).glob("ablation/*/seed*/metrics.json")):
        m = json.loads(path.read_text())
        name, seed = m["variant"], int(m["seed"])
        if (variants is not None and name not in variants) or (seeds is not None and seed not in seeds):
            continue
        c, s = m.get("classification", {}), m.get("saliency", {})
        values = {k: c.get(k) for k in ("auc_macro", "auc_micro", "accuracy", "f1_macro")}
        values.update({f"auc_{k}": v for k, v in c.get("auc_per_class", {}).items()})
        values.update({k: s.get(k) for k in SALIENCY_KEYS})
        rows += [{"variant": name, "label": m.get("label", name), "seed": seed, "metric": k,
                  "value": np.nan if v is None else float(v)} for k, v in values.items()]
        if (path.parent / "per_image.csv").is_file():
            tables.append(pd.read_csv(path.parent / "per_image.csv").assign(variant=name, seed=seed))
    order = {v: i for i, v in enumerate(variants or VARIANTS)}  # the variants' order, not the folders'
    per_seed = pd.DataFrame(rows, columns=["variant", "label", "seed", "metric", "value"])
    per_seed = per_seed.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                                    kind="stable", ignore_index=True)
    per_image = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return per_seed, per_image


def _class_scores(probs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``CLASSIFICATION`` metrics of every bootstrap resample at once: (n_boot, len(CLASSIFICATION)).

    The same definitions as ``metrics.classification_scores`` (one-vs-rest AUC by the rank-sum
    statistic with ties averaged, NaN for a class absent or everywhere; F1 NaN when a class is
    neither true nor predicted; macro = mean of the defined values), vectorised over resamples.
    """
    y, p = labels[idx], probs[idx]  # (B, n), (B, n, C)
    n = y.shape[1]
    aucs, f1s = [], []
    pred = p.argmax(-1)
    for c in range(probs.shape[1]):
        pos = y == c
        n_pos = pos.sum(1)
        ranks = stats.rankdata(p[..., c], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
            tp, fp, fn = (pos & (pred == c)).sum(1), (~pos & (pred == c)).sum(1), (pos & (pred != c)).sum(1)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        aucs.append(np.where((n_pos > 0) & (n_pos < n), auc, np.nan))
        f1s.append(f1)
    aucs, f1s = np.stack(aucs, 1), np.stack(f1s, 1)
    # micro AUC (the paper's): one AUC over every (image, class) score, labels one-hot
    flat_pos = (y[..., None] == np.arange(probs.shape[1])).reshape(len(y), -1)
    flat_ranks = stats.rankdata(p.reshape(len(y), -1), axis=1)
    n_pos, total = flat_pos.sum(1), flat_pos.shape[1]
    micro = ((flat_ranks * flat_pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * (total - n_pos))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        macro_auc, macro_f1 = np.nanmean(aucs, 1), np.nanmean(f1s, 1)
    return np.column_stack([macro_auc, micro, aucs, (pred == y).mean(1), macro_f1])


def _boot(per_image: pd.DataFrame, ids: list, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Seed-mean of every metric on every resample of ``ids``: {metric: (n_boot,)}."""
    probs_cols = [f"prob_{c}" for c in CLASS_NAMES]
    by_seed = [t.set_index("dicom_id").loc[ids] for _, t in per_image.groupby("seed")]
    clf = np.mean([_class_scores(t[probs_cols].to_numpy(float), t["label"].to_numpy(int), idx) for t in by_seed], 0)
    out = dict(zip(CLASSIFICATION, clf.T))
    for key in SALIENCY_KEYS:
        with warnings.catch_warnings():  # NSS / AUC-Judd are NaN for images without fixations
            warnings.simplefilter("ignore", RuntimeWarning)
            image_means = np.nanmean(np.stack([t[key].to_numpy(float) for t in by_seed]), 0)
            out[key] = np.nanmean(image_means[idx], 1)
    return out


def _image_means(per_image: pd.DataFrame, key: str) -> pd.Series:
    return per_image.groupby("dicom_id")[key].mean()


def _quantiles(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    return (np.nan, np.nan) if not len(x) else tuple(float(q) for q in np.quantile(x, [0.025, 0.975]))


def compare_variants(per_seed: pd.DataFrame, per_image: pd.DataFrame, *, reference: str = "full",
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per variant and metric: ``n_seeds``, ``mean``, ``std``, ``low``, ``high``, and
    against ``reference`` ``diff``, ``diff_low``, ``diff_high``, ``p`` and ``test`` (see the module
    docstring). Empty input gives an empty table."""
    columns = ["variant", "label", "metric", "group", "n_seeds", "n_images", "mean", "std", "low", "high",
               "diff", "diff_low", "diff_high", "p", "test"]
    if per_seed.empty:
        return pd.DataFrame(columns=columns)
    variants = list(dict.fromkeys(per_seed["variant"]))
    images = {v: per_image[per_image["variant"] == v] for v in variants} if not per_image.empty else {}
    ids = sorted(set.intersection(*(set(t["dicom_id"]) for t in images.values()))) if images else []
    idx = np.random.default_rng(seed).integers(0, len(ids), (n_boot, len(ids))) if ids else None
    boots = {v: _boot(t, ids, idx) for v, t in images.items()} if ids else {}
    rows = []
    for v in variants:
        label = per_seed.loc[per_seed["variant"] == v, "label"].iloc[0]
        for key in METRICS:
            values = per_seed.loc[(per_seed["variant"] == v) & (per_seed["metric"] == key), "value"].dropna()
            row = {"variant": v, "label": label, "metric": key,
                   "group": "classification" if key in CLASSIFICATION else "saliency",
                   "n_seeds": len(values), "n_images": len(ids), "mean": values.mean(),
                   "std": values.std() if len(values) > 1 else np.nan, "low": np.nan, "high": np.nan,
                   "diff": np.nan, "diff_low": np.nan, "diff_high": np.nan, "p": np.nan, "test": ""}
            if v in boots:
                row["low"], row["high"] = _quantiles(boots[v][key])
            if v != reference and v in boots and reference in boots:
                d = boots[v][key] - boots[reference][key]
                row["diff_low"], row["diff_high"] = _quantiles(d)
                ref = per_seed[(per_seed["variant"] == reference) & (per_seed["metric"] == key)]
                row["diff"] = row["mean"] - ref["value"].mean()
                row.update(_paired_test(key, d, images[v], images[reference]))
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _paired_test(key: str, boot_diff: np.ndarray, variant: pd.DataFrame, reference: pd.DataFrame) -> dict:
    if key in SALIENCY_KEYS:
        # an exact KL (kld_eps=0, the code's) is infinite where a prediction is 0 under gaze: such
        # images have no finite difference and leave the t-test (the means keep them)
        pair = pd.concat([_image_means(variant, key), _image_means(reference, key)], axis=1)
        pair = pair.replace([np.inf, -np.inf], np.nan).dropna()
        if len(pair) < 2:
            return {}
        with warnings.catch_warnings():  # identical samples give t = NaN, not an error
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"p": metrics.paired_ttest(pair.iloc[:, 0], pair.iloc[:, 1])["p"], "test": "paired t (images)"}
    d = boot_diff[np.isfinite(boot_diff)]
    if not len(d):
        return {}
    tail = min((d <= 0).sum(), (d >= 0).sum())  # (1 + tail) / (1 + n): never exactly 0
    return {"p": float(min(1.0, 2 * (1 + tail) / (1 + len(d)))), "test": "paired bootstrap (images)"}


def _cell(row, *, digits: int = 3) -> str:
    if not np.isfinite(row["mean"]):
        return "-"
    text = f"{row['mean']:.{digits}f}"
    if np.isfinite(row["std"]):
        text += f" ± {row['std']:.{digits}f}"
    if np.isfinite(row["low"]):
        text += f" [{row['low']:.{digits}f}, {row['high']:.{digits}f}]"
    if np.isfinite(row["p"]):
        text += f" p={row['p']:.3f}" if row["p"] >= 0.001 else " p<0.001"
    return text


def results_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per metric, one column per variant; each cell is
    "mean ± std over seeds [95 % bootstrap CI] p against the reference"."""
    if summary.empty:
        return pd.DataFrame()
    table = summary.assign(cell=summary.apply(_cell, axis=1))
    wide = table.pivot(index=["group", "metric"], columns="label", values="cell")
    order = [(g, m) for g, keys in (("classification", CLASSIFICATION), ("saliency", SALIENCY_KEYS)) for m in keys]
    wide = wide.reindex([o for o in order if o in wide.index])
    wide = wide[list(dict.fromkeys(summary["label"]))]
    wide.columns.name = None
    return wide.rename(index={"kld": "kld (lower is better)"}, level=1)


def paper_table(summary: pd.DataFrame, *, reference: str = "full", data_label: str = "") -> pd.DataFrame:
    """The paper's headline figures beside this project's full method, each with its data."""
    rows = []
    for key, value in PAPER_RESULTS.items():
        ours = summary[(summary["variant"] == reference) & (summary["metric"] == key)]
        rows.append({"metric": key, "paper": value, "paper's data": PAPER_DATA,
                     "this project": _cell(ours.iloc[0]) if len(ours) else "-",
                     "this project's data": data_label})
    return pd.DataFrame(rows)


def results_figure(summary: pd.DataFrame, per_seed: pd.DataFrame, *, reference: str = "full"):
    """One panel per metric: each variant's seed-mean with its 95 % bootstrap interval (bar), the
    seeds as dots, and the reference's mean as a dashed line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if summary.empty:  # nothing trained yet: say so instead of drawing empty axes
        print("no finished variants to plot")
        return None
    keys = [k for k in METRICS if k in set(summary["metric"])]
    labels = list(dict.fromkeys(summary["label"]))
    cols = 4
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, rows * (0.3 * len(labels) + 1.2)),
                             squeeze=False, sharey=True)
    colours = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    for ax, key in zip(axes.flat, keys):
        part = summary[summary["metric"] == key].set_index("label").reindex(labels)
        y = np.arange(len(labels))
        low = (part["mean"] - part["low"]).clip(lower=0).fillna(0)
        high = (part["high"] - part["mean"]).clip(lower=0).fillna(0)
        ax.errorbar(part["mean"], y, xerr=[low, high], fmt="none", ecolor="0.3", capsize=3, lw=1)
        ax.scatter(part["mean"], y, c=[colours[lab] for lab in labels], s=40, zorder=3, edgecolors="k", lw=0.5)
        seeds = per_seed[per_seed["metric"] == key]
        ax.scatter(seeds["value"], seeds["label"].map({lab: i for i, lab in enumerate(labels)}),
                   s=10, c="k", alpha=0.5, marker="|", zorder=4)
        ref = summary[(summary["variant"] == reference) & (summary["metric"] == key)]["mean"]
        if len(ref) and np.isfinite(ref.iloc[0]):
            ax.axvline(ref.iloc[0], ls="--", c="0.5", lw=0.8)
        ax.set_title(key + (" (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
        ax.set_yticks(y, labels, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes.flat[0].invert_yaxis()  # shared: the first variant on top in every panel
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("test split: seed-mean (dot), 95% bootstrap CI (bar), seeds (ticks); dashed: reference", fontsize=9)
    fig.tight_layout()
    return fig


def missing_runs(run_root, variants, seeds) -> list[str]:
    """``variant/seed<k>`` of every expected run without a metrics.json."""
    return [f"{v}/seed{k}" for v in variants for k in seeds
            if not (Path(run_root) / "ablation" / v / f"seed{k}" / "metrics.json").is_file()]


def claims(summary: pd.DataFrame, *, reference: str = "full", alpha: float = 0.05,
           headline=("auc_macro", "cc")) -> pd.DataFrame:
    """Each variant's claim, checked on the headline metrics (the paper's AUC and CC): the
    difference to the reference with its 95 % CI and p, and a verdict. "supported": the reference
    is significantly better (p < alpha) on at least one headline metric and significantly worse
    on none; "contradicted": the variant is significantly better on one; otherwise "not shown"
    (no significant difference: too few images or seeds, or no effect)."""
    rows = []
    for variant in dict.fromkeys(summary["variant"]):
        if variant == reference:
            continue
        row, better, worse = {"variant": variant, "tests": VARIANTS[variant].claim if variant in VARIANTS else ""}, 0, 0
        for key in headline:
            r = summary[(summary["variant"] == variant) & (summary["metric"] == key)]
            if not len(r):
                continue
            r = r.iloc[0]
            sign = -1 if key in LOWER_IS_BETTER else 1  # > 0: the reference is better
            row[f"{key}: variant - {reference}"] = (f"{r['diff']:+.3g} [{r['diff_low']:+.3g}, {r['diff_high']:+.3g}]"
                                                    if np.isfinite(r["diff"]) else "-")
            row[f"{key}: p"] = r["p"]
            if np.isfinite(r["p"]) and r["p"] < alpha and np.isfinite(r["diff"]) and r["diff"] != 0:
                better += sign * -r["diff"] > 0
                worse += sign * -r["diff"] < 0
        row["verdict"] = "contradicted" if worse else ("supported" if better else "not shown")
        rows.append(row)
    return pd.DataFrame(rows)


def fidelity_table(per_seed: pd.DataFrame, per_image: pd.DataFrame, *, code: str = "code", method: str = "full",
                   n_boot: int = 1000, seed: int = 0,
                   metrics_shown=("auc_macro", "auc_micro", *(f"auc_{c}" for c in CLASS_NAMES), "accuracy", "cc",
                                  "kld", "sim")) -> pd.DataFrame:
    """"The code as it ran" beside "the method as described" (the ``code`` and ``full`` variants,
    the same seeds and test images, compared as :func:`compare_variants` does with ``full`` as the
    reference): per metric each one's seed-mean ± std [95 % CI], and the difference code - method
    with its paired 95 % interval and p. Empty when either variant has no results."""
    pair = [code, method]
    summary = compare_variants(per_seed[per_seed["variant"].isin(pair)] if len(per_seed) else per_seed,
                               per_image[per_image["variant"].isin(pair)] if len(per_image) else per_image,
                               reference=method, n_boot=n_boot, seed=seed)
    rows = []
    for key in metrics_shown:
        pick = {v: summary[(summary["variant"] == v) & (summary["metric"] == key)] for v in pair}
        if any(t.empty for t in pick.values()):
            continue
        c, m = pick[code].iloc[0], pick[method].iloc[0]
        diff = (f"{c['diff']:+.3f} [{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]"
                if np.isfinite(c["diff"]) and np.isfinite(c["diff_low"]) else "-")
        rows.append({"metric": key + (" (lower is better)" if key in LOWER_IS_BETTER else ""),
                     "the method as described": _cell({**m, "p": np.nan}),
                     "the code as it ran": _cell({**c, "p": np.nan}), "code - method [95 % CI]": diff,
                     "p": c["p"], "seeds": int(c["n_seeds"]), "images": int(c["n_images"])})
    return pd.DataFrame(rows)


def timing_table(run_root, variants=None) -> pd.DataFrame:
    """Seconds per variant and seed from metrics.json (training of this variant's own stages,
    evaluation, total wall and process CPU); linked stages count zero."""
    rows = []
    for path in sorted(Path(run_root).glob("ablation/*/seed*/metrics.json")):
        m = json.loads(path.read_text())
        if variants is None or m["variant"] in variants:
            trained = [s["stage"] for s in m.get("stages", []) if s.get("action") == "trained"]
            rows.append({"variant": m["variant"], "seed": m["seed"], **m.get("seconds", {}),
                         "trained": " ".join(trained), "linked": " ".join(
                             s["stage"] for s in m.get("stages", []) if s.get("action") == "linked")})
    order = {v: i for i, v in enumerate(variants or [])}
    table = pd.DataFrame(rows)
    if order and len(table):
        table = table.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c,
                                  ignore_index=True)
    return table
