"""External validation on REFLACX and the inter-reader ceiling (notebook 08).

EGD-CXR has one radiologist, so its CC of a predicted map says nothing about how close a model
can get: another radiologist would not match the first exactly either. REFLACX has images read
several times. Two questions, with the same five metrics (CC, KLD, SIM, NSS, AUC-Judd;
Bylinskii et al. 2019, as in ``cxrlib.metrics``):

* **The inter-reader ceiling.** For an image with several readings, each reading's map (and
  fixations) is the ground truth and the mean map of the image's *other* readings the
  prediction. That is how well "what other radiologists looked at" predicts one radiologist: a
  model of gaze in general should not be expected to beat it. The public files do not say who
  made a reading; each reading of an image counts as a different radiologist's, true by the
  study's protocol within phases 1 and 2 (``cxrlib.data.reflacx``).
* **External validation.** The stage-3 model trained on EGD-CXR predicts the map of every
  REFLACX reading (other readers, another eye tracker, another map convention), beside the
  centre-bias baseline. Images that are also in the EGD-CXR training split are left out and
  counted, so the model is never scored on an image it was trained on.

Scores are per reading; summaries average the readings of an image first and bootstrap over
images (readings of one image are not independent), with 95 % percentile intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib import metrics
from cxrlib.evaluation.evaluate import SALIENCY_KEYS, jsonable, saliency_table

CEILING, MODEL, CENTRE = "inter-reader (mean of the other readings)", "model (stage 3)", "centre bias"
ALL, SEVERAL = "all readings", "images with several readings"


def ensure_reflacx(config, *, progress: bool = True) -> tuple[Path, Path]:
    """The REFLACX folder to read: the user's, or a synthetic one written once per run folder."""
    if config.reflacx_root is not None:
        root = Path(config.reflacx_root).expanduser()
        if not (root / "main_data").is_dir():
            raise FileNotFoundError(f"reflacx_root={root} has no main_data/ folder; point it at REFLACX "
                                    f"(reflacx-xray-localization/1.0.0) or leave it None for the synthetic set")
        image_root = config.reflacx_image_root or config.image_root
        if image_root is None:
            raise ValueError("reflacx_root is set but neither reflacx_image_root nor image_root: give the "
                             "MIMIC-CXR(-JPG) folder holding files/p10/...")
        return root, Path(image_root).expanduser()
    from cxrlib.synthetic.reflacx import make_reflacx_like

    root = Path(config.run_dir) / "synthetic_reflacx"
    marker = root / "synthetic.json"
    wanted = {"n_images": config.synthetic_reflacx_images, "seed": config.data_seed}
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        make_reflacx_like(root, n_images=config.synthetic_reflacx_images, seed=config.data_seed,
                          overwrite=True, progress=progress)
        marker.write_text(json.dumps(wanted))
    return root, root


def egd_training_ids(config) -> set[str]:
    """dicom_ids of the EGD-CXR training split of this run folder (made now if not yet made)."""
    from cxrlib.data import load_or_make_splits, read_master_sheet, split_ids
    from cxrlib.training.stages import ensure_data

    egd_root, _ = ensure_data(config, progress=False)
    splits = load_or_make_splits(Path(config.run_dir) / "splits.csv", read_master_sheet(egd_root / "master_sheet.csv"),
                                 seed=config.data_seed, rule=config.split)
    return set(split_ids(splits, "train"))


def reflacx_data(config, *, exclude_dicom_ids=None, progress: bool = True):
    """``REFLACXDataset`` with the config's geometry and cache, the EGD training images left out."""
    from cxrlib.data.reflacx import REFLACXDataset

    root, image_root = ensure_reflacx(config, progress=progress)
    return REFLACXDataset(root, image_root, image_size=config.image_size, resize=config.resize,
                          phases=config.reflacx_phases, exclude_dicom_ids=exclude_dicom_ids,
                          label_mapping=config.label_mapping, cache_dir=Path(config.run_dir) / "cache",
                          off_image=config.reflacx_off_image)


def _ids(data) -> pd.DataFrame:
    counts = data.meta.groupby("dicom_id").size()
    return pd.DataFrame({"dicom_id": data.meta["dicom_id"], "reading_id": data.meta["id"],
                         "reading_index": data.meta["reading_index"],
                         "n_readings": data.meta["dicom_id"].map(counts).to_numpy()})


def ceiling_table(data, *, min_readers: int = 2) -> pd.DataFrame:
    """One row per reading of an image read ``min_readers`` or more times: that reading's map
    and fixations scored against the mean map of the image's other readings (each reading
    counts as another radiologist: the module notes say when that holds)."""
    ids = _ids(data)
    predicted_maps, gaze_maps, fixations, rows = [], [], [], []
    for dicom_id, indices in data.readings_by_image().items():
        if len(indices) < min_readers:
            continue
        samples = [data[i] for i in indices]
        maps = np.stack([s["gaze_map"][0].numpy().astype(np.float64) for s in samples])
        for k, sample in enumerate(samples):
            predicted_maps.append(np.delete(maps, k, axis=0).mean(0))  # the other readings of the image
            gaze_maps.append(maps[k])
            fixations.append(sample["fixations"].numpy())
            rows.append(indices[k])
    if not rows:
        raise ValueError(f"no image has {min_readers} or more readings: the inter-reader ceiling needs some "
                         f"(REFLACX phases 1 and 2 have up to five per image; check reflacx_phases and min_readers)")
    scores = saliency_table(np.stack(predicted_maps), np.stack(gaze_maps), fixations)
    return pd.concat([ids.iloc[rows].reset_index(drop=True).assign(map=CEILING), scores], axis=1)


def model_table(model, data, config, *, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per reading: the model's predicted map and the centre bias scored against the reading's
    map and fixations. Also returns the predictions (``stages.predict``: probabilities, maps)."""
    from cxrlib.training.stages import predict

    predictions = predict(model, data, config, progress=progress)
    if predictions["predicted_map"] is None:
        raise ValueError("the model predicts no saliency map; external validation needs the stage-3 network")
    ids, gaze_maps = _ids(data), predictions["gaze_map"]
    centre = np.broadcast_to(metrics.centre_bias_map(gaze_maps.shape[1:]), gaze_maps.shape)
    tables = [pd.concat([ids.assign(map=name), saliency_table(maps, gaze_maps, predictions["fixations"])], axis=1)
              for name, maps in ((MODEL, predictions["predicted_map"]), (CENTRE, centre))]
    return pd.concat(tables, ignore_index=True), predictions


def summary_table(table: pd.DataFrame, *, min_readers: int = 2, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean and 95 % CI per map, subset and metric: readings averaged per image, bootstrap over images.

    The model and the centre bias are summarised over all readings and over the readings of
    images read ``min_readers`` or more times: the latter is the set the ceiling is measured on.
    """
    out = []
    for (name, subset), part in _subsets(table, min_readers):
        per_image = part.groupby("dicom_id")[list(SALIENCY_KEYS)].mean()
        for key in SALIENCY_KEYS:
            values = per_image[key].dropna().to_numpy()
            if not len(values):
                continue
            mean, low, high = (metrics.bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed) if len(values) > 1
                               else (float(values[0]), np.nan, np.nan))
            out.append({"map": name, "subset": subset, "metric": key, "mean": mean, "ci_low": low, "ci_high": high,
                        "n_images": len(per_image), "n_readings": len(part)})
    return pd.DataFrame(out)


def _subsets(table, min_readers):
    for name, part in table.groupby("map", sort=False):
        if name != CEILING:
            yield (name, ALL), part
        several = part[part["n_readings"] >= min_readers]
        if len(several):
            yield (name, SEVERAL), several


def comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """The headline table: on images with several readings, model, centre bias and ceiling side by
    side, each cell ``mean [low, high]``."""
    part = summary[summary["subset"] == SEVERAL].copy()
    part["cell"] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"
                    for m, lo, hi in zip(part["mean"], part["ci_low"], part["ci_high"])]
    order = [n for n in (MODEL, CENTRE, CEILING) if n in set(part["map"])]
    return part.pivot(index="map", columns="metric", values="cell").reindex(order)[list(SALIENCY_KEYS)]


def gap_to_ceiling(table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Model minus ceiling on the same readings (paired by ``reading_id``): mean over images of the
    per-image mean difference, with a 95 % bootstrap interval over images. An interval that
    holds 0 means this many images cannot tell the model from the other readers; it does not
    show that the two are equally good (that would need the whole interval inside a margin
    chosen beforehand)."""
    model = table[table["map"] == MODEL].set_index("reading_id")
    ceiling = table[table["map"] == CEILING].set_index("reading_id")
    if ceiling.empty or model.empty:
        raise ValueError("gap_to_ceiling needs both the model's and the ceiling's rows (model_table, ceiling_table)")
    both = ceiling.index.intersection(model.index)
    diff = model.loc[both, list(SALIENCY_KEYS)] - ceiling.loc[both, list(SALIENCY_KEYS)]
    per_image = diff.groupby(ceiling.loc[both, "dicom_id"]).mean()
    rows = []
    for key in SALIENCY_KEYS:
        values = per_image[key].dropna().to_numpy()
        if len(values) > 1:
            mean, low, high = metrics.bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed)
            rows.append({"metric": key, "model - ceiling": mean, "ci_low": low, "ci_high": high,
                         "n_images": len(values)})
    return pd.DataFrame(rows)


def classification(predictions: dict, labels, *, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Diagnosis metrics on the readings a label mapping placed (label >= 0); None without any."""
    labels = np.asarray(labels)
    keep = labels >= 0
    if not keep.any():
        return None
    probs, y = predictions["probs"][keep], labels[keep]
    scores = metrics.classification_scores(probs, y)
    try:
        _, low, high = metrics.bootstrap_ci(lambda p, t: metrics.classification_scores(p, t)["auc_macro"],
                                            probs, y, n_boot=n_boot, seed=seed)
        scores["auc_macro_ci"] = [low, high]
    except (RuntimeError, ValueError):  # too few readings of some class to resample
        scores["auc_macro_ci"] = None
    scores["n_readings"] = int(keep.sum())
    return jsonable(scores)


def write_results(config, summary: pd.DataFrame, tables: pd.DataFrame, counts: dict, classes: dict | None,
                  gap: pd.DataFrame | None = None) -> Path:
    """``<run_dir>/external/metrics.json`` (summary, gap to the ceiling, counts, classification)
    and the per-reading ``scores.csv``."""
    folder = config.stage_dir
    folder.mkdir(parents=True, exist_ok=True)
    tables.to_csv(folder / "scores.csv", index=False)
    result = {"profile": config.profile, "data": "REFLACX" if config.reflacx_root else "synthetic REFLACX-format",
              "label_mapping": config.label_mapping, "counts": counts, "classification": classes,
              "summary": summary.to_dict(orient="records"),
              "gap_to_ceiling": None if gap is None else gap.to_dict(orient="records")}
    path = folder / "metrics.json"
    path.write_text(json.dumps(jsonable(result), indent=2))
    return path


def save_figure(fig, name: str, config):
    """``plots.save_figure`` (into the run folder, where ``make figures`` may publish it), but
    never for a run on the real REFLACX: its provenance record only knows about ``egd_root``."""
    from cxrlib.plots import save_figure as save

    if config.reflacx_root is not None:
        print(f"not saving figures/{name}: it shows REFLACX data, which must not enter the repository")
        return None
    return save(fig, name, config)


def readers_figure(data, dicom_id: str | None = None, predictions: dict | None = None):
    """One image: each reading's map with its fixations, the readings' mean, and the model's map.

    ``dicom_id`` None: the image with the most readings. ``predictions``: ``model_table``'s second output.
    """
    import matplotlib.pyplot as plt

    from cxrlib.plots import overlay

    groups = data.readings_by_image()
    if dicom_id is None:
        dicom_id = max(groups, key=lambda d: len(groups[d]))
    if dicom_id not in groups:
        raise ValueError(f"dicom_id {dicom_id!r} is not among the {len(groups)} REFLACX images read here")
    samples = [data[i] for i in groups[dicom_id]]
    image = samples[0]["image"][0].numpy()
    panels = [(f"reading {s['reading_index'] + 1}", s["gaze_map"][0].numpy(), s["fixations"].numpy()) for s in samples]
    panels.append((f"mean of {len(samples)} readings", np.mean([p[1] for p in panels], 0), None))
    if predictions is not None and predictions.get("predicted_map") is not None:
        panels.append(("model (stage 3)", predictions["predicted_map"][groups[dicom_id][0]], None))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.8), squeeze=False)
    for ax, (title, heat, points) in zip(axes[0], panels):
        overlay(ax, image, heat, points=points, title=title)
    fig.suptitle(f"image {dicom_id[:8]}", fontsize=9)
    fig.tight_layout()
    return fig
