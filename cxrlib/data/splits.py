"""Train / validation / test splits: stratified by class, grouped by patient, seeded.

The paper code splits images 70/10/20 stratified by class with seed 0. EGD-CXR has patients
with two images, so images are split by patient here (no patient in two splits) while keeping
the class balance. The split is written once to ``splits.csv`` in the run folder and every stage
reads it back, so no stage can ever see another stage's test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlib.runfolder import atomic_write_text, locked

SPLITS = ("train", "val", "test")


def make_splits(sheet, *, fractions=(0.7, 0.1, 0.2), seed: int = 0):
    """Assign each image of a master sheet (with ``label``) to train, val or test.

    Patients (not images) are shuffled within each class (a patient's class is that of their
    first image) and dealt out so each split gets its fraction of every class.
    """
    import pandas as pd

    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    rng = np.random.default_rng(seed)
    patients = sheet.groupby("patient_id", sort=True)["label"].first()
    assignment = {}
    for label in sorted(patients.unique()):
        members = patients.index[patients == label].to_numpy()
        members = members[rng.permutation(len(members))]
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        for i, patient in enumerate(members):
            assignment[patient] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    out = pd.DataFrame({
        "dicom_id": sheet["dicom_id"].to_numpy(),
        "patient_id": sheet["patient_id"].to_numpy(),
        "label": sheet["label"].to_numpy(),
    })
    out["split"] = out["patient_id"].map(assignment)
    check_patient_disjoint(out)
    return out


def check_patient_disjoint(splits) -> None:
    """Raise if a patient appears in two splits."""
    per_patient = splits.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise AssertionError(f"patients in more than one split: {list(leaking.index[:5])} ({len(leaking)} in all)")


def load_or_make_splits(path, sheet, *, fractions=(0.7, 0.1, 0.2), seed: int = 0):
    """Read ``path`` if it exists, else make and write it (under a lock: one writer at a time).

    A file that does not match (other images, or not the split ``seed`` makes) is an error, never
    silently used: the stages of a run folder must all see one split, the one its config records.
    Every split must hold images.
    """
    path = Path(path)
    with locked(path.with_name(f".{path.name}.lock"), what=f"the split {path}", wait=600):
        if path.is_file():
            splits = _read_splits(path, sheet, fractions=fractions, seed=seed)
        else:
            splits = make_splits(sheet, fractions=fractions, seed=seed)
            _check_not_empty(splits, path)
            atomic_write_text(path, splits.to_csv(index=False))
    _check_not_empty(splits, path)
    return splits


def _read_splits(path: Path, sheet, *, fractions, seed):
    import pandas as pd

    splits = pd.read_csv(path, dtype={"dicom_id": str})
    missing = [c for c in ("dicom_id", "patient_id", "split") if c not in splits.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; delete it (it is made again) or use a new run folder")
    new_folder = "start a new run folder (run_dir / --run-dir), or delete this file and every stage trained on it"
    if set(splits["dicom_id"]) != set(sheet["dicom_id"].astype(str)):
        raise ValueError(
            f"{path} was made for another data set (its dicom_ids differ from the master sheet: another "
            f"egd_root, or another data_seed / synthetic_images for the synthetic set); {new_folder}")
    if not set(splits["split"]).issubset(SPLITS):
        raise ValueError(f"{path}: the split column must only hold {SPLITS}")
    check_patient_disjoint(splits)
    expected = make_splits(sheet, fractions=fractions, seed=seed).set_index("dicom_id")["split"]
    differ = splits.set_index("dicom_id")["split"] != expected.reindex(splits["dicom_id"]).to_numpy()
    if differ.any():
        raise ValueError(
            f"{path} does not hold the split of data_seed={seed} ({int(differ.sum())} of {len(splits)} images "
            f"assigned otherwise, e.g. dicom_id {differ.index[differ.to_numpy()][0]}): it was made with another "
            f"data_seed, or edited; {new_folder}")
    return splits


def _check_not_empty(splits, path) -> None:
    counts = splits["split"].value_counts()
    empty = [name for name in SPLITS if counts.get(name, 0) == 0]
    if empty:
        raise ValueError(
            f"{path}: the {' and '.join(empty)} split(s) would hold no image ({len(splits)} images, "
            f"{splits['patient_id'].nunique()} patients, split 70/10/20 by patient within each class): "
            f"use a larger data set (synthetic_images, or more of EGD-CXR)")


def split_ids(splits, name: str) -> list[str]:
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return splits.loc[splits["split"] == name, "dicom_id"].astype(str).tolist()
