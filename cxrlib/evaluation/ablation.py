"""The ablation study (notebook 07, ``cxrlib ablate``): does each component of the method help?

Every variant is a chain of ordinary stage configs (:func:`cxrlib.config.make_config`) trained by
the ordinary stage code, plus a rule for how it is evaluated; nothing is copied. The claims of the
paper (arXiv:2403.16970, sections on the ablation and the baselines) and the variant that tests
each are in :data:`cxrlib.config.variants.VARIANTS`.

Run folders::

    <run_root>/splits.csv, synthetic/, cache/       the main run's data: every variant and seed sees
                                                     the same split (``data_seed`` stays fixed)
    <run_root>/ablation/<variant>/seed<k>/<stage>/   a stage of that variant at model seed k, or a
                                                     copy of an equal stage trained elsewhere
                                                     (``reused_from.json`` names it)
    <run_root>/ablation/<variant>/seed<k>/metrics.json, per_image.csv   its test-split results

Equal stages are trained once and reused (:mod:`cxrlib.training.equal_stages`): the action is
called "linked", but the stage is copied (its ``best.pt``, ``config.json`` and history; not the
resume state ``last.pt``), since a Google Drive mount refuses symlinks and hard links.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cxrlib import CLASS_NAMES, metrics
from cxrlib.evaluation import evaluate
from cxrlib.explain import cams
from cxrlib.training import stages
from cxrlib.config import ResultsConfig, StageConfig, make_config
from cxrlib.data import collate
from cxrlib.training.equal_stages import chain_signatures, find_equal, fingerprint, folder_fingerprint, is_done, observed_seconds
from cxrlib.config.variants import VARIANTS


# Common fields a results config does not pass on to the variants' stages.
_NOT_PASSED = {"profile", "run_dir"} | ResultsConfig.inapplicable


def stage_params(config) -> dict:
    """The common fields of a results config that differ from its profile's defaults: they
    override every stage of every variant (e.g. ``image_size``, ``epochs``, ``synthetic_images``)."""
    base = make_config("results", config.profile, run_dir=config.run_dir)
    names = [f.name for f in dataclasses.fields(StageConfig) if f.name not in _NOT_PASSED]
    return {n: getattr(config, n) for n in names if getattr(config, n) != getattr(base, n)}


def variant_dir(run_root, name: str, seed: int) -> Path:
    return Path(run_root) / "ablation" / name / f"seed{seed}"


def variant_configs(name: str, profile: str = "smoke", *, seed: int = 0, run_root=None, **params) -> list:
    """The stage configs of a variant, in training order, with run_dir = its folder."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    run_root = run_root or make_config("results", profile, **params).run_dir
    folder = str(variant_dir(run_root, name, seed))
    return [make_config(stage, profile, **{**params, **overrides, "run_dir": folder, "seed": seed})
            for stage, overrides in VARIANTS[name].chain]


# -- training ------------------------------------------------------------------------------
def _remove(folder: Path) -> None:
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


REUSED_FROM = "reused_from.json"  # in a copied stage folder: the folder it was copied from
_NOT_COPIED = {"last.pt", ".lock"}  # the resume state and the source's lock


def copy_equal_stage(equal: Path, folder: Path) -> None:
    """Put a copy of the complete stage ``equal`` at ``folder`` (no links: Drive has none). The
    copy is made beside ``folder`` under a temporary name and renamed, so an interrupted copy is
    never taken for a complete stage."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.copy.tmp")
    _remove(tmp)
    shutil.copytree(equal, tmp, copy_function=shutil.copyfile,
                    ignore=lambda _, names: [n for n in names if n in _NOT_COPIED or n.endswith(".tmp")])
    (tmp / REUSED_FROM).write_text(json.dumps({"copied_from": str(equal)}, indent=1))
    _remove(folder)
    os.replace(tmp, folder)


class DataCache(dict):
    """Data bundles of the main run folder by loader settings, shared by every variant and seed."""

    def get_for(self, config, run_root, *, progress: bool = True) -> stages.DataBundle:
        key = json.dumps({**stages.dataset_kwargs(config), "cache_dir": None, "egd_root": config.egd_root,
                          "image_root": config.image_root, "n": config.synthetic_images,
                          "data_seed": config.data_seed}, sort_keys=True, default=str)
        if key not in self:
            self[key] = stages.prepare_data(dataclasses.replace(config, run_dir=str(run_root)), progress=progress)
        return self[key]


def _cached(data, config, run_root, progress):
    if isinstance(data, stages.DataBundle):
        return data
    return data.get_for(config, run_root, progress=progress)


def ensure_stage(config, sig: dict, run_root, data, *, progress=True, log=print) -> dict:
    """Train ``config`` (signature ``sig``) unless its folder holds it or an equal stage can be linked."""
    folder, started, cpu = config.stage_dir, time.perf_counter(), time.process_time()
    fp = fingerprint(sig)
    row = {"stage": config.stage, "fingerprint": fp, "dir": str(folder)}
    if is_done(folder, fp):
        return {**row, "action": "done", "seconds": 0.0, "cpu_seconds": 0.0}
    equal = find_equal(config.stage, fp, run_root, exclude=folder)
    if equal is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        copy_equal_stage(equal, folder)
        log(f"  {config.stage}: equal to {equal}, copied (reused, not trained)")
        return {**row, "action": "linked", "reused_from": str(equal), "seconds": 0.0, "cpu_seconds": 0.0}
    same = (folder / "config.json").is_file() and not folder.is_symlink() and folder_fingerprint(folder) == fp
    if not same:
        _remove(folder)  # a stale stage of other settings
    config = dataclasses.replace(config, resume=same)  # an interrupted stage continues
    bundle = _cached(data, config, run_root, progress)
    log(f"  {config.stage}: training ({config.epochs} epochs{', resumed' if same else ''})")
    stages.run_stage(config, bundle, progress=progress)
    return {**row, "action": "trained", "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu}


# -- evaluation ----------------------------------------------------------------------------
def gradcam_maps(model, dataset, config) -> np.ndarray:
    """Grad-CAM (predicted class, last dense block) of every image, as (N, H, W) distributions."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False, collate_fn=collate)
    return np.concatenate([cams.cam_maps(model, batch["image"], method="gradcam") for batch in loader])


def per_image_table(predictions: dict, *, kld_eps: float = metrics.EPS):
    """One row per scored image: id, label, class probabilities and the five saliency scores."""
    table = evaluate.saliency_table(predictions["predicted_map"], predictions["gaze_map"], predictions["fixations"],
                                    kld_eps=kld_eps)
    table.insert(0, "dicom_id", list(predictions["dicom_id"]))
    table.insert(1, "label", np.asarray(predictions["labels"]))
    for c, name in enumerate(CLASS_NAMES):
        table[f"prob_{name}"] = predictions["probs"][:, c]
    return table


def evaluate_variant(name: str, configs: list, run_root, data, *, progress=True) -> tuple[dict, object]:
    """Predictions of a trained variant on the scored split (``eval_split``: test, or the paper
    code's optimistic validation split): metrics (as ``metrics.json``) and per image."""
    variant = VARIANTS[name]
    by_stage = {c.stage: c for c in configs}
    clf_cfg = by_stage[variant.diagnosis_from]
    scored, _ = evaluate.eval_dataset(_cached(data, clf_cfg, run_root, progress), clf_cfg)
    diagnosis_model = stages.load_stage_model(clf_cfg, clf_cfg.stage)
    predictions = stages.predict(diagnosis_model, scored, clf_cfg, progress=progress)
    if variant.map_from == "gradcam":
        predictions["predicted_map"] = gradcam_maps(diagnosis_model, scored, clf_cfg)
    elif variant.map_from != variant.diagnosis_from:
        map_cfg = by_stage[variant.map_from]
        map_scored, _ = evaluate.eval_dataset(_cached(data, map_cfg, run_root, progress), map_cfg)
        map_predictions = stages.predict(stages.load_stage_model(map_cfg, map_cfg.stage), map_scored, map_cfg,
                                         progress=progress)
        assert list(map_predictions["dicom_id"]) == list(predictions["dicom_id"]), \
            "both models must see the same images"
        predictions["predicted_map"] = map_predictions["predicted_map"]
    report = evaluate.evaluate_predictions(predictions, n_boot=clf_cfg.n_boot, seed=clf_cfg.seed,
                                           kld_eps=clf_cfg.kld_eps, eval_split=clf_cfg.eval_split)
    return report, per_image_table(predictions, kld_eps=clf_cfg.kld_eps)


def run_variant(name: str, profile: str = "smoke", *, seed: int = 0, run_root=None, data=None,
                progress: bool = True, force: bool = False, log=print, **params) -> dict:
    """Train (or link) a variant's stages at model seed ``seed``, evaluate it on the test split
    and write ``metrics.json`` and ``per_image.csv`` in its folder; return the metrics.

    ``params``: common config fields for every stage (e.g. ``epochs=1``). ``data``: a
    :class:`DataCache` shared between calls, or one ``DataBundle`` for every stage. A variant
    whose ``metrics.json`` matches its current stages is not evaluated again (unless ``force``).
    """
    run_root = Path(run_root or make_config("results", profile, **params).run_dir)
    data = DataCache() if data is None else data
    configs = variant_configs(name, profile, seed=seed, run_root=run_root, **params)
    folder = variant_dir(run_root, name, seed)
    started, cpu = time.perf_counter(), time.process_time()
    log(f"[seed {seed}] {name}")
    rows = [ensure_stage(c, sig, run_root, data, progress=progress, log=log)
            for c, sig in zip(configs, chain_signatures(configs))]
    last = configs[-1]
    fp = fingerprint({"variant": name, "eval": [VARIANTS[name].diagnosis_from, VARIANTS[name].map_from],
                      "eval_split": last.eval_split, "kld_eps": last.kld_eps,
                      "stages": [r["fingerprint"] for r in rows]})
    path = folder / "metrics.json"
    if not force and path.is_file() and (folder / "per_image.csv").is_file():
        old = json.loads(path.read_text())
        if old.get("fingerprint") == fp:
            return old
    eval_started = time.perf_counter()
    report, table = evaluate_variant(name, configs, run_root, data, progress=progress)
    table.to_csv(folder / "per_image.csv", index=False)
    evaluate.write_metrics(path, report, variant=name, label=VARIANTS[name].label, seed=seed,
                           profile=last.profile, data=evaluate.data_label(last), data_run_dir=str(run_root),
                           image_size=list(last.image_size), fingerprint=fp, stages=rows,
                           seconds={"train": sum(r["seconds"] for r in rows),
                                    "evaluate": time.perf_counter() - eval_started,
                                    "total": time.perf_counter() - started,
                                    "cpu_total": time.process_time() - cpu})
    return json.loads(path.read_text())


# -- the whole study -------------------------------------------------------------------------
def plan(config) -> "pd.DataFrame":
    """What running ``config`` will do, stage by stage, with an estimate of the training seconds
    (from an equal stage at another seed already trained under the run folder; NaN if none)."""
    import pandas as pd

    params, run_root, rows, planned = stage_params(config), Path(config.run_dir), [], set()
    for seed in config.seeds:
        for name in config.variants:
            configs = variant_configs(name, config.profile, seed=seed, run_root=run_root, **params)
            for cfg, sig in zip(configs, chain_signatures(configs)):
                fp = fingerprint(sig)
                if is_done(cfg.stage_dir, fp):
                    action, est = "done", 0.0
                elif fp in planned:
                    action, est = "link (trained earlier in this run)", 0.0
                elif (equal := find_equal(cfg.stage, fp, run_root, exclude=cfg.stage_dir)) is not None:
                    action, est = f"link {os.path.relpath(equal, run_root)}", 0.0
                else:
                    action, est = "train", observed_seconds(cfg, run_root)
                    planned.add(fp)
                rows.append({"seed": seed, "variant": name, "stage": cfg.stage, "epochs": cfg.epochs,
                             "action": action, "est_seconds": np.nan if est is None else est})
    return pd.DataFrame(rows)


def budget_text(table) -> str:
    """One line: stages to train, the seconds estimated for those with a timing, the rest."""
    train = table[table["action"] == "train"]
    known = train["est_seconds"].notna()
    text = (f"{len(train)} stage trainings, {len(table) - len(train)} done or linked; "
            f"estimated {train['est_seconds'].sum() / 60:.1f} CPU-min for the {int(known.sum())} "
            f"with an earlier timing")
    if (~known).any():
        text += f"; {int((~known).sum())} not yet timed ({', '.join(sorted(set(train.loc[~known, 'stage'])))})"
    return text


def run_ablation(config, *, progress: bool = True, log=print) -> "pd.DataFrame":
    """Every variant at every seed in one process (data, cache and equal stages shared).

    Seed-major, so a complete first seed of every variant exists early. Returns one row per
    variant and seed with the seconds it took. With ``config.train_missing`` False nothing runs.
    """
    import pandas as pd

    if not config.train_missing:
        log("train_missing=False: reading existing results only")
        return pd.DataFrame()
    table = plan(config)
    log(f"ablation ({config.profile}): {len(config.variants)} variants x {len(config.seeds)} seeds in "
        f"{Path(config.run_dir) / 'ablation'}\n{budget_text(table)}")
    data, params, rows, started = DataCache(), stage_params(config), [], time.perf_counter()
    for seed in config.seeds:
        for name in config.variants:
            metrics = run_variant(name, config.profile, seed=seed, run_root=config.run_dir, data=data,
                                  progress=progress, log=log, **params)
            rows.append({"variant": name, "seed": seed, **metrics.get("seconds", {})})
        log(f"seed {seed} finished: {(time.perf_counter() - started) / 60:.1f} min so far")
    return pd.DataFrame(rows)
