"""Train / validation / test splits: stratified by class, grouped by patient, seeded.

The paper code splits images 70/10/20 stratified by class with seed 0. EGD-CXR has patients
with two images, so images are split by patient here (no patient in two splits) while keeping
the class balance. The split is written once to ``splits.csv`` in the run folder and every stage
reads it back, so no stage can ever see another stage's test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    """Read ``path`` if it exists (checking it matches ``sheet``), else make and write it."""
    import pandas as pd

    path = Path(path)
    if path.is_file():
        splits = pd.read_csv(path, dtype={"dicom_id": str})
        if set(splits["dicom_id"]) != set(sheet["dicom_id"].astype(str)):
            raise ValueError(
                f"{path} was made for another data set (its dicom_ids differ from the master sheet); "
                f"delete it or use a new run folder"
            )
        if not set(splits["split"]).issubset(SPLITS):
            raise ValueError(f"{path}: the split column must only hold {SPLITS}")
        check_patient_disjoint(splits)
        return splits
    splits = make_splits(sheet, fractions=fractions, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    splits.to_csv(tmp, index=False)
    tmp.replace(path)
    return splits


def split_ids(splits, name: str) -> list[str]:
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return splits.loc[splits["split"] == name, "dicom_id"].astype(str).tolist()
