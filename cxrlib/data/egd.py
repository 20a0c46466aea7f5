"""EGD-CXR as a PyTorch data set (docs/method.md section 5; docs/method.md section 5).

``EGDDataset(egd_root, image_root)`` reads ``master_sheet.csv``, one gaze file and the MIMIC-CXR
images (DICOM, or the ``.jpg`` of MIMIC-CXR-JPG at the same relative path). The bundled
synthetic data set (``cxrlib.synthetic.egd``) is written in the same format and read by this code.

Problems in the input are reported when the data set is built, naming the file and line, not an
hour into training: missing columns, empty files, rows without exactly one label, duplicated ids,
gaze rows for unknown ids, images without gaze and missing image files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlib.data import tables
from cxrlib.data.cache import SampleCache, sample_key
from cxrlib.data.dicom import INTENSITY_MODES, load_image, read_image
from cxrlib.data.gaze import (
    GAZE_SOURCES,
    PAPER_SIGMA_PX,
    GazePoints,
    gaze_map,
    gaze_map_native,
    load_gaze_csv,
    resolve_sigma,
)
from cxrlib.data.geometry import RESIZE_MODES, Geometry, check_image_size

LABEL_COLUMNS = ("Normal", "CHF", "pneumonia")  # -> class 0, 1, 2
MASTER_COLUMNS = ("dicom_id", "path", "patient_id") + LABEL_COLUMNS


def read_master_sheet(path):
    """``master_sheet.csv`` as a DataFrame with an integer ``label`` column (0, 1, 2).

    Only the columns this project needs are required; the many others are kept untouched.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"master sheet not found: {path} (expected <egd_root>/master_sheet.csv)")
    try:
        sheet = tables.read_csv(path, MASTER_COLUMNS, dtype={"dicom_id": str, "path": str})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (expected a header and one row per image)") from None
    missing = [c for c in MASTER_COLUMNS if c not in sheet.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; found {list(sheet.columns)[:20]}")
    if sheet.empty:
        raise ValueError(f"{path}: the file has a header but no rows")
    tables.check_filled(sheet, ("dicom_id", "path", "patient_id"), path,
                        " (an image without its patient would leave every split unseen)")
    labels = sheet[list(LABEL_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    positives = (labels == 1).sum(axis=1)
    valid = labels.isin([0, 1]).all(axis=1) & (positives == 1)
    if not valid.all():
        row = int(np.flatnonzero(~valid.to_numpy())[0])
        raise ValueError(
            f"{path}, line {row + 2} (dicom_id {sheet['dicom_id'].iloc[row]}): the labels "
            f"{dict(zip(LABEL_COLUMNS, sheet[list(LABEL_COLUMNS)].iloc[row].tolist()))} must be 0/1 with "
            f"exactly one 1 ({int((~valid).sum())} such rows)"
        )
    sheet = sheet.copy()
    sheet["dicom_id"] = sheet["dicom_id"].str.strip()  # before the duplicate check: "id " is "id"
    duplicated = sheet["dicom_id"].duplicated(keep=False)
    if duplicated.any():
        rows = np.flatnonzero(duplicated.to_numpy())
        first = sheet["dicom_id"].iloc[rows[0]]
        lines = [int(r) + 2 for r in rows if sheet["dicom_id"].iloc[r] == first]
        raise ValueError(
            f"{path}, lines {', '.join(map(str, lines))}: dicom_id {first!r} appears {len(lines)} times "
            f"(ids are compared without surrounding spaces; {int(sheet['dicom_id'].duplicated().sum())} "
            f"duplicate row(s) in all); keep one row per image"
        )
    sheet["label"] = labels.to_numpy().argmax(axis=1).astype(int)
    return sheet


def resolve_image_path(image_root, relative: str) -> Path:
    """The DICOM at ``relative``, or the MIMIC-CXR-JPG ``.jpg`` beside it."""
    dcm = Path(image_root) / relative
    if dcm.is_file():
        return dcm
    jpg = dcm.with_suffix(".jpg")
    if jpg.is_file():
        return jpg
    raise FileNotFoundError(dcm)


def check_image_files(egd_root, image_root=None) -> int:
    """Every image of ``<egd_root>/master_sheet.csv`` under ``image_root`` (default: egd_root),
    counted over the whole sheet (all splits); raise FileNotFoundError naming the count and an
    example, else return the number of images. One ``stat`` per image: cheap before a long run."""
    egd_root = Path(egd_root).expanduser()
    image_root = egd_root if image_root is None else Path(image_root).expanduser()
    sheet = read_master_sheet(egd_root / "master_sheet.csv")
    missing = []
    for row, relative in enumerate(sheet["path"]):
        try:
            resolve_image_path(image_root, relative)
        except FileNotFoundError:
            missing.append((row, relative))
    if missing:
        row, relative = missing[0]
        raise FileNotFoundError(
            f"{len(missing)} of the {len(sheet)} image files of {egd_root / 'master_sheet.csv'} (all splits) not "
            f"found under image_root {image_root}, e.g. {image_root / relative} (line {row + 2}, dicom_id "
            f"{sheet['dicom_id'].iloc[row]}); looked for the .dcm and the MIMIC-CXR-JPG .jpg. Check image_root "
            f"(the folder that holds files/p10 ...)")
    return len(sheet)


class EGDDataset(Dataset):
    """Images, gaze-saliency maps, fixations and labels of EGD-CXR.

    ``ds[i]`` is a dict: ``image`` (1, H, W) float32 in [0, 1]; ``gaze_map`` (1, H, W) float32,
    non-negative, sums to 1; ``fixations`` (N, 2) float32 output-pixel (x, y) of the fixations
    on the image; ``label`` int (0 Normal, 1 CHF, 2 Pneumonia); ``dicom_id``; ``patient_id``;
    ``gaze_dropped`` how many gaze points fell off the image. Use :func:`collate` in DataLoaders.

    Parameters
    ----------
    egd_root : folder with ``master_sheet.csv``, ``eye_gaze.csv`` and/or ``fixations.csv``.
    image_root : MIMIC-CXR (or -JPG) root that the master sheet's ``path`` is relative to.
    image_size : (H, W), multiples of 32.
    gaze_source : ``"eye_gaze"`` (raw samples, the paper code) or ``"fixations"``.
    sigma, sigma_frac : Gaussian sigma in native pixels, or (if given, it wins) as a fraction of
        the native long side.
    weighting : ``"count"`` or ``"duration"`` (fixation duration, REFLACX style).
    resize : ``"pad_resize"`` (anti-aliased) or ``"stride"`` (paper code).
    ids : restrict to these dicom_ids (a split), in this order.
    cache_dir : folder for preprocessed samples (None: no cache).
    map_method : ``"analytic"`` (fast) or ``"native"`` (literal blur at native resolution).
    intensity, modality_lut : how grey values are read and scaled (`cxrlib.data.dicom.load_image`);
        ``resize="stride", intensity="max", modality_lut=False`` is the paper code's pipeline.
    """

    def __init__(self, egd_root, image_root=None, *, image_size=(320, 256), gaze_source="eye_gaze",
                 sigma=PAPER_SIGMA_PX, sigma_frac=None, weighting="count", resize="pad_resize",
                 ids=None, cache_dir=None, voi_lut=False, map_method="analytic", intensity="minmax",
                 modality_lut=True):
        self.egd_root = Path(egd_root)
        self.image_root = Path(image_root) if image_root is not None else self.egd_root
        self.image_size = check_image_size(image_size)
        if gaze_source not in GAZE_SOURCES:
            raise ValueError(f"gaze_source must be one of {tuple(GAZE_SOURCES)}, got {gaze_source!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if map_method not in ("analytic", "native"):
            raise ValueError(f"map_method must be 'analytic' or 'native', got {map_method!r}")
        self.gaze_source, self.sigma, self.sigma_frac = gaze_source, sigma, sigma_frac
        self.weighting, self.resize, self.voi_lut, self.map_method = weighting, resize, voi_lut, map_method
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
        self.intensity, self.modality_lut = intensity, bool(modality_lut)
        resolve_sigma((1, 1), sigma, sigma_frac)  # validate early

        sheet = read_master_sheet(self.egd_root / "master_sheet.csv")
        known = set(sheet["dicom_id"])
        if ids is not None:
            ids = [str(i) for i in ids]
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise ValueError(f"ids not in {self.egd_root / 'master_sheet.csv'}: {unknown[:5]} ({len(unknown)} in all)")
            sheet = sheet.set_index("dicom_id").loc[ids].reset_index()
        self.sheet = sheet.reset_index(drop=True)

        gaze_file = self.egd_root / GAZE_SOURCES[gaze_source]
        self.gaze = load_gaze_csv(gaze_file, weighting=weighting, known_ids=known)
        fixation_file = self.egd_root / GAZE_SOURCES["fixations"]
        if gaze_source == "fixations" or not fixation_file.is_file():
            self.fixation_points = self.gaze
        else:
            self.fixation_points = load_gaze_csv(fixation_file, known_ids=known)
        no_gaze = [i for i in self.sheet["dicom_id"] if i not in self.gaze]
        if no_gaze:
            raise ValueError(
                f"{gaze_file}: no gaze rows for {len(no_gaze)} image(s) of the master sheet, e.g. "
                f"{no_gaze[:3]}; pass ids= without them or use the gaze file of the same release"
            )
        self.image_paths = []
        missing = []
        for row, relative in enumerate(self.sheet["path"]):
            try:
                self.image_paths.append(resolve_image_path(self.image_root, relative))
            except FileNotFoundError:
                missing.append((row, relative))
        if missing:
            check_image_files(self.egd_root, self.image_root)  # names the count over the whole sheet
            row, relative = missing[0]
            raise FileNotFoundError(
                f"{len(missing)} image file(s) of master_sheet.csv not found under {self.image_root}, e.g. "
                f"{self.image_root / relative} (dicom_id {self.sheet['dicom_id'].iloc[row]}); looked for the "
                f".dcm and MIMIC-CXR-JPG .jpg. Check image_root (the folder that holds files/p10 ...)."
            )
        self.cache = SampleCache(cache_dir)
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.sheet)

    @property
    def labels(self) -> np.ndarray:
        return self.sheet["label"].to_numpy()

    @property
    def params(self) -> dict:
        return {"image_size": self.image_size, "gaze_source": self.gaze_source, "sigma": self.sigma,
                "sigma_frac": self.sigma_frac, "weighting": self.weighting, "resize": self.resize,
                "voi_lut": self.voi_lut, "map_method": self.map_method, "intensity": self.intensity,
                "modality_lut": self.modality_lut}

    def _compute(self, index: int) -> dict:
        dicom_id = self.sheet["dicom_id"].iloc[index]
        image, geometry = load_image(self.image_paths[index], self.image_size, resize=self.resize,
                                     intensity=self.intensity, modality_lut=self.modality_lut, voi_lut=self.voi_lut)
        native_shape = geometry.native
        sigma_px = resolve_sigma(native_shape, self.sigma, self.sigma_frac)
        make_map = gaze_map if self.map_method == "analytic" else gaze_map_native
        gaze, dropped = make_map(self.gaze[dicom_id], geometry, sigma_px, dicom_id=dicom_id)
        fixations, _ = self.fixation_points.get(dicom_id, GazePoints(np.zeros((0, 2)), np.zeros(0))).inside(native_shape)
        return {
            "image": np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16),  # 16 bits: lossless for 12-16 bit data
            "gaze_map": gaze,
            "fixations": geometry.apply_points(fixations.xy),
            "gaze_dropped": np.int64(dropped),
            "native_shape": np.asarray(native_shape, dtype=np.int64),
        }

    def key(self, index: int) -> str:
        """The cache key of sample ``index`` (hashed once per data set instance: files do not
        change under a run)."""
        key = self._keys.get(index)
        if key is None:
            gaze = self.gaze[self.sheet["dicom_id"].iloc[index]]
            key = self._keys[index] = sample_key(self.image_paths[index], self.params, gaze.xy, gaze.weight,
                                                  digests=self.cache.digests)
        return key

    def load(self, index: int) -> dict:
        """The preprocessed arrays of sample ``index``: from the cache, else computed and cached.

        A cache entry that passes its checksum but holds arrays of the wrong kind (written by
        another version, say) is named with its sample, recomputed and rewritten."""
        key = self.key(index)
        arrays = self.cache.get(key)
        dicom_id = self.sheet["dicom_id"].iloc[index]
        if arrays is not None and (problem := self._entry_problem(arrays)):
            warnings.warn(f"the cached sample of dicom_id {dicom_id} is damaged ({problem}); recomputing it "
                          f"from {self.image_paths[index]}", stacklevel=2)
            arrays = None
        if arrays is None:
            arrays = self._compute(index)
            if problem := self._entry_problem(arrays):
                raise ValueError(f"dicom_id {dicom_id} ({self.image_paths[index]}): bad sample ({problem})")
            self.cache.put(key, arrays)
        return arrays

    def _entry_problem(self, arrays: dict) -> str | None:
        """What is wrong with a sample's arrays (a damaged cache entry), or None. Cheap: it runs
        on every read, so the damage is named with its sample instead of failing in a batch."""
        missing = [k for k in ("image", "gaze_map", "fixations", "gaze_dropped", "native_shape") if k not in arrays]
        if missing:
            return f"no {missing[0]!r} array"
        image, gaze = arrays["image"], arrays["gaze_map"]
        if image.shape != self.image_size or image.dtype != np.uint16:
            return f"image of {image.dtype} {image.shape}, expected uint16 {self.image_size}"
        if gaze.shape != self.image_size or gaze.dtype != np.float32:
            return f"gaze map of {gaze.dtype} {gaze.shape}, expected float32 {self.image_size}"
        total = float(gaze.sum(dtype=np.float64))
        if not (abs(total - 1.0) < 1e-3 and gaze.min() >= 0):
            return f"the gaze map sums to {total:.6g} (min {float(gaze.min()):.3g}), not 1 with no negative value"
        return None

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        dicom_id = self.sheet["dicom_id"].iloc[index]
        arrays = self.load(index)
        return {
            "image": torch.from_numpy(arrays["image"].astype(np.float32) / 65535.0)[None],
            "gaze_map": torch.from_numpy(arrays["gaze_map"].copy())[None],
            "fixations": torch.from_numpy(arrays["fixations"].copy()),
            "label": int(self.sheet["label"].iloc[index]),
            "dicom_id": dicom_id,
            "patient_id": str(self.sheet["patient_id"].iloc[index]),
            "gaze_dropped": int(arrays["gaze_dropped"]),
            "native_shape": tuple(int(v) for v in arrays["native_shape"]),
        }

    def gaze_map_for(self, index: int, *, sigma=None, sigma_frac=None) -> np.ndarray:
        """The (H, W) gaze map of one image with another sigma (not cached), e.g. to compare.

        ``sigma`` (native pixels) or ``sigma_frac`` (of the long side) as for the data set; with
        neither, the data set's own blur, so the map equals the one its samples carry."""
        dicom_id = self.sheet["dicom_id"].iloc[index]
        native = read_image(self.image_paths[index], voi_lut=self.voi_lut)
        geometry = Geometry.fit(native.shape, self.image_size, self.resize)
        if sigma is None and sigma_frac is None:
            sigma, sigma_frac = self.sigma, self.sigma_frac
        sigma_px = resolve_sigma(native.shape, sigma, sigma_frac)
        return gaze_map(self.gaze[dicom_id], geometry, sigma_px, dicom_id=dicom_id)[0]

    def gaze_summary(self):
        """Per image: gaze points in the file and how many were dropped as off the image."""
        import pandas as pd

        rows = []
        for i in range(len(self)):
            sample = self[i]
            total = len(self.gaze[sample["dicom_id"]].weight)
            rows.append({"dicom_id": sample["dicom_id"], "gaze_points": total,
                         "dropped_off_image": sample["gaze_dropped"]})
        return pd.DataFrame(rows)


def collate(batch: list[dict]) -> dict:
    """Stack tensors of equal shape; keep ``fixations`` (variable length) and strings as lists.
    A batch a data set already assembled (a dict: cached features, indexed by batch) is returned as it is."""
    if isinstance(batch, dict):
        return batch
    out = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if key == "label":
            out[key] = torch.as_tensor(values, dtype=torch.long)
        elif key != "fixations" and torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
