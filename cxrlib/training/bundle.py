"""The data of a stage: the EGD-format folder (the user's, or the synthetic set written once per
run folder), the patient-grouped split kept in ``run_dir/splits.csv``, and the three data sets
with their sample cache built before training (:func:`prepare_data`, ``stages.prepare_data``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cxrlib import runfolder
from cxrlib.training import distributed
from cxrlib.data.egd import EGDDataset, read_master_sheet
from cxrlib.data.prepare import prepare_cache
from cxrlib.data.splits import load_or_make_splits, split_ids


@dataclass
class DataBundle:
    train: EGDDataset
    val: EGDDataset
    test: EGDDataset
    splits: object  # DataFrame: dicom_id, patient_id, label, split
    egd_root: Path
    image_root: Path
    prepared: dict | None = None  # what building the sample cache did (cxrlib.data.prepare)


def ensure_data(config, *, progress: bool = True) -> tuple[Path, Path]:
    """The EGD folder to read: the user's, or the synthetic set (written once per run folder)."""
    if config.egd_root is not None:
        root = Path(config.egd_root).expanduser()
        if not (root / "master_sheet.csv").is_file():
            raise FileNotFoundError(f"egd_root={root} has no master_sheet.csv; point it at the EGD-CXR "
                                    f"folder (egd-cxr/1.0.0) or leave it None for the synthetic data")
        return root, Path(config.image_root).expanduser()
    from cxrlib.synthetic.egd import make_egd_like

    root = Path(config.run_dir) / "synthetic"
    marker = root / "synthetic.json"
    wanted = {"n_images": config.synthetic_images, "seed": config.data_seed,
              "difficulty": config.synthetic_difficulty}
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        make_egd_like(root, n_images=config.synthetic_images, seed=config.data_seed, overwrite=True,
                      progress=progress, difficulty=config.synthetic_difficulty)
        marker.write_text(json.dumps(wanted))
    return root, root


def dataset_kwargs(config, image_size=None) -> dict:
    return {"image_size": image_size or config.image_size, "gaze_source": config.gaze_source,
            "sigma": config.sigma, "sigma_frac": config.sigma_frac, "weighting": config.weighting,
            "resize": config.resize, "cache_dir": Path(config.run_dir) / "cache",
            "intensity": config.intensity, "modality_lut": config.modality_lut}


def prepare_data(config, *, progress: bool = True) -> DataBundle:
    """Data sets of the three splits; the split is made once and kept in ``run_dir/splits.csv``.

    Under torchrun rank 0 writes the synthetic data and the split first; the others then read them.
    """
    with distributed.main_first(), runfolder.data_lock(config.run_dir):  # one writer of the data at a time
        egd_root, image_root = ensure_data(config, progress=progress and distributed.is_main())
        sheet = read_master_sheet(egd_root / "master_sheet.csv")
        splits = load_or_make_splits(Path(config.run_dir) / "splits.csv", sheet, seed=config.data_seed,
                                     rule=config.split)
    kwargs = dataset_kwargs(config)
    sets = {name: EGDDataset(egd_root, image_root, ids=split_ids(splits, name), **kwargs)
            for name in ("train", "val", "test")}
    with distributed.main_first():  # the first pass decodes every image, in parallel, once
        prepared = prepare_cache(sets.values(), workers=config.num_workers, progress=progress and distributed.is_main())
    return DataBundle(sets["train"], sets["val"], sets["test"], splits, egd_root, image_root, prepared)
