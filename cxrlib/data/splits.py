"""Train / validation / test splits: stratified by class, grouped by patient, seeded.

Two rules (the config field ``split``):

* ``"patient"`` (default): patients are shuffled within each class and dealt out 70/10/20, so no
  patient is in two splits. EGD-CXR has patients with more than one image; split by image, a
  repeat study of the same patient can sit in train and test, and the test score then measures
  recognising a patient as much as diagnosing an image.
* ``"image"``: the authors' code (``Data/hzhu_data_raw.py``, ``MasterDataHandle.save_all``): the
  images in the order of a ``torch.utils.data.random_split`` seeded with ``seed`` (the code: 0),
  and per class a running counter: the k-th image of a class (k = 1, 2, ...) goes to test when
  k mod 10 is 0 or 1, to validation when it is 2, else to train (2/1/7 of every 10).

The split is written once to ``splits.csv`` in the run folder and every stage reads it back, so
no stage can ever see another stage's test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlib.config.choices import SPLIT_RULES
from cxrlib.runfolder import atomic_write_text, locked

SPLITS = ("train", "val", "test")
RULES = SPLIT_RULES


def make_splits(sheet, *, fractions=(0.7, 0.1, 0.2), seed: int = 0, rule: str = "patient"):
    """Assign each image of a master sheet (with ``label``) to train, val or test.

    ``rule="patient"``: patients (not images) are shuffled within each class (a patient's class
    is that of their first image) and dealt out so each split gets its fraction of every class.
    ``rule="image"``: the code's counter (module docstring); ``fractions`` does not apply.
    """
    import pandas as pd

    if rule not in RULES:
        raise ValueError(f"parameter 'split' must be one of {RULES}, got {rule!r}")
    if rule == "image":
        return make_image_splits(sheet, seed=seed)

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


def make_image_splits(sheet, *, seed: int = 0):
    """The code's split by image: a seeded permutation (as ``torch.utils.data.random_split`` with
    ``torch.Generator().manual_seed(seed)`` and fraction 1 draws it), then per class the k-th
    image goes to test if k % 10 <= 1, to val if k % 10 == 2, else to train (k counts from 1)."""
    import pandas as pd
    import torch

    order = torch.randperm(len(sheet), generator=torch.Generator().manual_seed(seed)).tolist()
    labels = sheet["label"].to_numpy()
    counter, split = {}, [None] * len(sheet)
    for i in order:
        counter[labels[i]] = counter.get(labels[i], 0) + 1
        select = counter[labels[i]] % 10
        split[i] = "test" if select <= 1 else ("val" if select == 2 else "train")
    return pd.DataFrame({"dicom_id": sheet["dicom_id"].to_numpy(), "patient_id": sheet["patient_id"].to_numpy(),
                         "label": labels, "split": split})


def check_patient_disjoint(splits) -> None:
    """Raise if a patient appears in two splits."""
    per_patient = splits.groupby("patient_id")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise AssertionError(f"patients in more than one split: {list(leaking.index[:5])} ({len(leaking)} in all)")


def split_summary(splits, rule: str = "patient") -> str:
    """One line on the split: under the patient rule checked disjoint; under the code's image rule,
    how many patients have images in more than one split."""
    head = f"{splits['patient_id'].nunique()} patients, {len(splits)} images"
    if rule == "patient":
        check_patient_disjoint(splits)
        return f"{head}; no patient is in two splits"
    straddling = int((splits.groupby("patient_id")["split"].nunique() > 1).sum())
    return f"{head}; split by image (the code's rule): {straddling} patient(s) have images in two splits"


def load_or_make_splits(path, sheet, *, fractions=(0.7, 0.1, 0.2), seed: int = 0, rule: str = "patient"):
    """Read ``path`` if it exists, else make and write it (under a lock: one writer at a time).

    A file that does not match (other images, or not the split ``seed`` and ``rule`` make) is an
    error, never silently used: the stages of a run folder must all see one split, the one its
    config records. Every split must hold images.
    """
    path = Path(path)
    with locked(path.with_name(f".{path.name}.lock"), what=f"the split {path}", wait=600):
        if path.is_file():
            splits = _read_splits(path, sheet, fractions=fractions, seed=seed, rule=rule)
        else:
            splits = make_splits(sheet, fractions=fractions, seed=seed, rule=rule)
            _check_not_empty(splits, path, rule)
            atomic_write_text(path, splits.to_csv(index=False))
    _check_not_empty(splits, path, rule)
    return splits


def _read_splits(path: Path, sheet, *, fractions, seed, rule="patient"):
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
    expected = make_splits(sheet, fractions=fractions, seed=seed, rule=rule).set_index("dicom_id")["split"]
    differ = splits.set_index("dicom_id")["split"] != expected.reindex(splits["dicom_id"]).to_numpy()
    if differ.any():
        raise ValueError(
            f"{path} does not hold the split of data_seed={seed}, split={rule!r} ({int(differ.sum())} of "
            f"{len(splits)} images assigned otherwise, e.g. dicom_id {differ.index[differ.to_numpy()][0]}): it was "
            f"made with another data_seed or split rule, or edited; {new_folder}")
    if rule == "patient":
        check_patient_disjoint(splits)
    return splits


def _check_not_empty(splits, path, rule="patient") -> None:
    counts = splits["split"].value_counts()
    empty = [name for name in SPLITS if counts.get(name, 0) == 0]
    how = "70/10/20 by patient" if rule == "patient" else "2/1/7 of every 10 images (the code's counter)"
    if empty:
        raise ValueError(
            f"{path}: the {' and '.join(empty)} split(s) would hold no image ({len(splits)} images, "
            f"{splits['patient_id'].nunique()} patients, split {how} within each class): "
            f"use a larger data set (synthetic_images, or more of EGD-CXR)")


def split_ids(splits, name: str) -> list[str]:
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return splits.loc[splits["split"] == name, "dicom_id"].astype(str).tolist()
