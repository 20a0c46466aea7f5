"""REFLACX as a PyTorch data set: a second gaze data set, several readings per image.

REFLACX (Bigolin Lanfredi et al., PhysioNet ``reflacx-xray-localization`` 1.0.0) recorded 3,032
readings of 2,616 MIMIC-CXR images by five radiologists. Its folder holds
``main_data/metadata_phase_{1,2,3}.csv``, one row per reading (``id``, ``dicom_id``,
``subject_id``, ``image``: the MIMIC-CXR path, ``image_size_x``/``image_size_y``,
``eye_tracking_data_discarded`` and one certainty column per abnormality), and a folder
``main_data/<id>/`` per reading whose ``fixations.csv`` gives each fixation in native image
pixels (``x_position``, ``y_position``), its start and end time, the pixels per degree of visual
angle along x and y, and the image rectangle on screen at that moment (``xmin_shown_from_image``
... ``ymax_shown_from_image``; the readers zoomed and panned).

:class:`REFLACXDataset` yields one sample per kept reading, in the form of ``EGDDataset``'s
samples plus ``reading_id`` and ``reading_index``. Its gaze map follows REFLACX's own convention
(``gaze_map(..., convention="reflacx")``), with fixations off the image dropped and counted
(``off_image="drop"``) or, as the REFLACX authors' own heatmaps do, kept with their Gaussian
cut to the shown rectangle (``off_image="cut"``). Images come from ``image_root`` (the MIMIC-CXR or
MIMIC-CXR-JPG folder holding ``files/p10/...``), read and resampled by the same code as EGD.
Readings whose eye tracking REFLACX discarded are skipped and counted (``discarded``); their
folders hold only ``chest_bounding_box.csv`` and ``anomaly_location_ellipses.csv``, and nothing
of them is read. Every other problem stops the build with the file and line.

**Readings, not readers.** A reading id is ``P<phase><trial>R<random>``: the phase digit, two
digits for the *trial* (the image's place in the reading list of phases 1 and 2, which all five
radiologists read; ``00`` in phase 3) and six random digits (facts from the data set's public
builder, ``post_processing_and_dataset_generation/create_main_table.py`` in ricbl/eyetracking).
The radiologist who made a reading is in no public file, so nothing here counts or names
radiologists. Each reading of an image is treated as a different radiologist's, which the study
protocol makes true within phases 1 and 2 (each radiologist read the list once); an image read
in more than one phase (``summary()`` counts them) may have been read twice by one radiologist,
which the public files cannot tell. ``reading_index`` numbers the kept readings of an image
0, 1, ... in (phase, id) order, a stable index for pairing readings (the inter-reader ceiling).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlib.data.cache import SampleCache, sample_key
from cxrlib.data.dicom import read_image
from cxrlib.data.egd import resolve_image_path
from cxrlib.data.gaze import OFF_IMAGE, ShownGazePoints, gaze_map
from cxrlib.data.geometry import RESIZE_MODES, Geometry, check_image_size

PHASES = (1, 2, 3)
METADATA_COLUMNS = ("id", "dicom_id", "subject_id", "image", "image_size_x", "image_size_y",
                    "eye_tracking_data_discarded")
FIXATION_COLUMNS = ("x_position", "y_position", "timestamp_start_fixation", "timestamp_end_fixation",
                    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree",
                    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
                    "ymax_shown_from_image")
READING_ID = re.compile(r"^P([123])(\d\d)R(\d{6})$")  # phase, trial ("00" in phase 3), random number
NOT_FINDINGS = ("Support devices", "Quality issue", "Other", "split")  # metadata columns that are no abnormality
ADDED_COLUMNS = ("trial", "reading_index", "phase", "source_file", "source_line", "label")  # what the loader adds

# REFLACX has per-abnormality certainties (1 "unlikely" ... 5 "consistent with"), not the three
# EGD classes. Classification on REFLACX is only meaningful through an explicit rule; this is
# one, documented, and readings it cannot place get label -1 (left out of classification).
LABEL_MAPPINGS = {
    "none": None,
    # CHF: pulmonary oedema or an enlarged cardiac silhouette at certainty >= 4, no consolidation
    # at >= 4; Pneumonia: consolidation at >= 4 and neither CHF sign; Normal: no abnormality
    # column (support devices and quality aside) at >= 3; anything else: -1.
    "certainty": {"chf": ("Pulmonary edema", "Enlarged cardiac silhouette"), "pneumonia": ("Consolidation",),
                  "sure": 4, "normal_below": 3},
}


def _fail(path, row, message):
    where = f"{path}, line {row + 2}" if row is not None else str(path)
    raise ValueError(f"{where}: {message}")


def _numeric(table, columns, path):
    import pandas as pd

    for col in columns:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            _fail(path, row, f"column {col} is not a number ({table[col].iloc[row]!r})")
        table[col] = values
    return table


def _read_csv(path, needed, what):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (expected a header and rows)") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; a REFLACX {what} needs {list(needed)}")
    if table.empty:
        raise ValueError(f"{path}: the file has a header but no rows")
    return table


def _flag(value) -> bool | None:
    text = str(value).strip().lower()
    return {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}.get(text)


def _trials(ids, phase: int, path):
    """The trial digits of each reading id, checked against REFLACX's id scheme and the file's phase."""
    parts = ids.str.extract(READING_ID)
    bad = parts[0].isna() | (parts[0] != str(phase))
    if phase == 3:
        bad |= parts[1] != "00"
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        form = "P300R<6 digits>" if phase == 3 else f"P{phase}<trial, 2 digits>R<6 digits>"
        _fail(path, row, f"reading id {ids.iloc[row]!r} is not a phase-{phase} REFLACX id ({form}); "
                         f"is this the metadata file of phase {phase}?")
    return parts[1]


def read_metadata(reflacx_root, phases=PHASES):
    """The metadata of the given phases as one DataFrame (``phase``, ``trial`` added, ids checked)."""
    import pandas as pd

    main = Path(reflacx_root) / "main_data"
    tables = []
    for phase in phases:
        path = main / f"metadata_phase_{phase}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"REFLACX metadata not found: {path}; reflacx_root must be the folder holding "
                                    f"main_data/ (reflacx-xray-localization/1.0.0), or pass phases= without {phase}")
        table = _read_csv(path, METADATA_COLUMNS, "metadata file")
        table = _numeric(table, ("image_size_x", "image_size_y"), path)
        flags = table["eye_tracking_data_discarded"].map(_flag)
        if flags.isna().any():
            row = int(np.flatnonzero(flags.isna().to_numpy())[0])
            _fail(path, row, f"eye_tracking_data_discarded must be True or False, got "
                             f"{table['eye_tracking_data_discarded'].iloc[row]!r}")
        table["eye_tracking_data_discarded"] = flags.astype(bool)
        table["id"] = table["id"].astype(str).str.strip()
        table["dicom_id"] = table["dicom_id"].astype(str).str.strip()
        table["trial"] = _trials(table["id"], phase, path)
        table["phase"], table["source_file"], table["source_line"] = phase, str(path), np.arange(len(table)) + 2
        tables.append(table)
    meta = pd.concat(tables, ignore_index=True)
    twice = meta["id"].duplicated()
    if twice.any():
        row = meta[twice].iloc[0]
        raise ValueError(f"{row['source_file']}, line {row['source_line']}: reading id {row['id']} appears twice")
    return meta


def read_fixations(path) -> ShownGazePoints:
    """One reading's ``fixations.csv`` as duration-weighted points with pixels per degree and
    the shown rectangle; impossible values (end before start, pixels per degree <= 0, an empty
    rectangle) are errors naming the line."""
    table = _read_csv(path, FIXATION_COLUMNS, "fixations file")
    table = _numeric(table, FIXATION_COLUMNS, path)
    duration = (table["timestamp_end_fixation"] - table["timestamp_start_fixation"]).to_numpy(float)
    ppd = table[["angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree"]].to_numpy(float)
    shown = table[["xmin_shown_from_image", "ymin_shown_from_image",
                   "xmax_shown_from_image", "ymax_shown_from_image"]].to_numpy(float)
    checks = ((duration < 0, "the fixation ends before it starts"),
              ((ppd <= 0).any(axis=1), "pixels per degree must be positive"),
              ((shown[:, 2] <= shown[:, 0]) | (shown[:, 3] <= shown[:, 1]), "the shown rectangle is empty (max <= min)"))
    for bad, message in checks:
        if bad.any():
            _fail(path, int(np.flatnonzero(bad)[0]), f"{message} ({int(bad.sum())} such rows)")
    xy = table[["x_position", "y_position"]].to_numpy(float)
    return ShownGazePoints(xy, duration, ppd, shown)


def reflacx_image_path(image_root, image: str) -> Path:
    """The image of a metadata ``image`` entry under ``image_root``: the path as given, else its
    part from ``files/`` on (REFLACX stores the whole PhysioNet path), DICOM or MIMIC-CXR-JPG."""
    tried = [image]
    if "files/p" in image:
        tried.append(image[image.rindex("files/p"):])
    for relative in tried:
        try:
            return resolve_image_path(image_root, relative)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(Path(image_root) / tried[-1])


def mapped_labels(meta, label_mapping) -> np.ndarray:
    """0/1/2 (Normal, CHF, Pneumonia) per reading by a rule of ``LABEL_MAPPINGS``; -1 where the
    rule places none (or ``label_mapping`` is None / "none": saliency only)."""
    rule = LABEL_MAPPINGS.get("none" if label_mapping is None else label_mapping, "?")
    if rule == "?":
        raise ValueError(f"label_mapping must be one of {tuple(LABEL_MAPPINGS)} or None, got {label_mapping!r}")
    import pandas as pd

    labels = np.full(len(meta), -1, dtype=np.int64)
    if rule is None:
        return labels
    findings = [c for c in meta.columns if c not in METADATA_COLUMNS + NOT_FINDINGS + ADDED_COLUMNS]
    certainty = meta[findings].apply(pd.to_numeric, errors="coerce").fillna(0)
    needed = [c for c in rule["chf"] + rule["pneumonia"] if c not in certainty.columns]
    if needed:
        raise ValueError(f"label_mapping {label_mapping!r} needs the certainty column(s) {needed}, not in the metadata")
    chf = (certainty[list(rule["chf"])] >= rule["sure"]).any(axis=1).to_numpy()
    pneumonia = (certainty[list(rule["pneumonia"])] >= rule["sure"]).any(axis=1).to_numpy()
    normal = (certainty < rule["normal_below"]).all(axis=1).to_numpy()
    labels[normal] = 0
    labels[chf & ~pneumonia] = 1
    labels[pneumonia & ~chf] = 2
    return labels


class REFLACXDataset(Dataset):
    """REFLACX readings: images, gaze maps (REFLACX convention), fixations, ids.

    ``ds[i]`` is a dict like ``EGDDataset``'s: ``image`` (1, H, W) float32 in [0, 1];
    ``gaze_map`` (1, H, W) float32 summing to 1; ``fixations`` (N, 2) output-pixel (x, y) of the
    fixations on the image; ``label`` (-1 unless ``label_mapping`` places the reading);
    ``dicom_id``; ``patient_id`` (MIMIC ``subject_id``); ``gaze_dropped``; ``native_shape``;
    ``reading_id`` (the REFLACX id) and ``reading_index`` (0, 1, ... among the kept readings of
    the image). One sample per reading, so an image read several times appears several times
    (:meth:`readings_by_image`); each reading counts as a different radiologist's (module notes).

    Parameters
    ----------
    reflacx_root : folder holding ``main_data/``.
    image_root : MIMIC-CXR (or -JPG) root holding ``files/p10/...`` (default: ``reflacx_root``).
    image_size, resize, voi_lut, cache_dir : as for ``EGDDataset``.
    phases : metadata phases to read.
    exclude_dicom_ids : images to leave out (e.g. the EGD-CXR training split); counted in
        ``excluded``.
    label_mapping : a name of ``LABEL_MAPPINGS`` or None (saliency only).
    off_image : fixations off the image: ``"drop"`` (dropped and counted in ``gaze_dropped``)
        or ``"cut"`` (the REFLACX authors' heatmaps: kept, their Gaussian cut to the shown
        rectangle); see ``cxrlib.data.gaze.OFF_IMAGE``.
    """

    def __init__(self, reflacx_root, image_root=None, *, image_size=(320, 256), resize="pad_resize",
                 phases=PHASES, exclude_dicom_ids=None, label_mapping=None, cache_dir=None, voi_lut=False,
                 off_image="drop"):
        self.reflacx_root = Path(reflacx_root)
        self.image_root = Path(image_root) if image_root is not None else self.reflacx_root
        self.image_size = check_image_size(image_size)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if off_image not in OFF_IMAGE:
            raise ValueError(f"off_image must be one of {OFF_IMAGE}, got {off_image!r}")
        self.resize, self.voi_lut, self.label_mapping, self.off_image = resize, voi_lut, label_mapping, off_image
        meta = read_metadata(self.reflacx_root, phases)
        meta["label"] = mapped_labels(meta, label_mapping)
        discarded = meta["eye_tracking_data_discarded"].to_numpy()
        self.discarded = int(discarded.sum())
        meta = meta[~discarded]
        exclude = set(str(i) for i in (exclude_dicom_ids or ()))
        dropped = meta["dicom_id"].isin(exclude).to_numpy()
        self.excluded = int(dropped.sum())  # readings
        self.excluded_images = int(meta.loc[dropped, "dicom_id"].nunique())
        meta = meta[~dropped].sort_values(["phase", "id"], kind="stable")
        meta["reading_index"] = meta.groupby("dicom_id", sort=False).cumcount()
        self.meta = meta.sort_index().reset_index(drop=True)  # metadata order; the index stays (phase, id) order
        if self.meta.empty:
            raise ValueError(f"{self.reflacx_root}: no reading left ({self.discarded} discarded by REFLACX, "
                             f"{self.excluded} excluded); check phases= and exclude_dicom_ids=")
        self.image_paths, self.fixations = [], []
        for row in self.meta.itertuples():
            try:
                self.image_paths.append(reflacx_image_path(self.image_root, row.image))
            except FileNotFoundError as missing:
                raise FileNotFoundError(
                    f"{row.source_file}, line {row.source_line} (reading {row.id}): image not found: {missing} "
                    f"(also looked for the MIMIC-CXR-JPG .jpg); image_root must hold files/p10/...") from None
            fixations = self.reflacx_root / "main_data" / row.id / "fixations.csv"
            if not fixations.is_file():
                raise FileNotFoundError(
                    f"{row.source_file}, line {row.source_line} (reading {row.id}): fixations file not found: "
                    f"{fixations}; a reading with eye_tracking_data_discarded False needs one")
            self.fixations.append(read_fixations(fixations))
        self.cache = SampleCache(cache_dir)
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def params(self) -> dict:
        # "reflacx_map" versions the map construction: bump it when gaze_map's REFLACX branch changes.
        return {"reflacx_map": 2, "image_size": self.image_size, "resize": self.resize, "voi_lut": self.voi_lut,
                "off_image": self.off_image}

    def readings_by_image(self) -> dict[str, list[int]]:
        """{dicom_id: sample indices of its readings}, in ``reading_index`` order."""
        order = self.meta.sort_values("reading_index", kind="stable")
        return {d: list(map(int, part.index)) for d, part in order.groupby("dicom_id", sort=False)}

    def _compute(self, index: int) -> dict:
        row = self.meta.iloc[index]
        native = read_image(self.image_paths[index], voi_lut=self.voi_lut)
        expected = (int(row["image_size_y"]), int(row["image_size_x"]))
        if native.shape != expected:
            raise ValueError(f"{row['source_file']}, line {row['source_line']} (reading {row['id']}): image_size_y/x say "
                             f"{expected} but {self.image_paths[index]} is {native.shape}; the fixations would "
                             f"land in the wrong place")
        geometry = Geometry.fit(native.shape, self.image_size, self.resize)
        points = self.fixations[index]
        gaze, dropped = gaze_map(points, geometry, None, dicom_id=f"{row['dicom_id']} (reading {row['id']})",
                                 convention="reflacx", off_image=self.off_image)
        inside, _ = points.inside(native.shape)
        return {"image": np.round(np.clip(geometry.apply_image(native), 0, 1) * 65535).astype(np.uint16),
                "gaze_map": gaze, "fixations": geometry.apply_points(inside.xy),
                "gaze_dropped": np.int64(dropped), "native_shape": np.asarray(native.shape, dtype=np.int64)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} readings")
        key = self._keys.get(index)
        if key is None:
            p = self.fixations[index]
            key = self._keys[index] = sample_key(self.image_paths[index], self.params, p.xy, p.weight,
                                                 p.pixels_per_degree, p.shown)
        arrays = self.cache.get(key)
        if arrays is None:
            arrays = self._compute(index)
            self.cache.put(key, arrays)
        row = self.meta.iloc[index]
        return {
            "image": torch.from_numpy(arrays["image"].astype(np.float32) / 65535.0)[None],
            "gaze_map": torch.from_numpy(arrays["gaze_map"].copy())[None],
            "fixations": torch.from_numpy(arrays["fixations"].copy()),
            "label": int(row["label"]),
            "dicom_id": row["dicom_id"],
            "patient_id": str(row["subject_id"]),
            "gaze_dropped": int(arrays["gaze_dropped"]),
            "native_shape": tuple(int(v) for v in arrays["native_shape"]),
            "reading_id": row["id"],
            "reading_index": int(row["reading_index"]),
        }

    def summary(self):
        """Counts: readings kept, images, images read several times, the most readings of one image,
        images read in more than one phase, discarded and excluded. No count of radiologists: the
        public files do not say who made a reading."""
        per_image = self.meta.groupby("dicom_id")
        readings = per_image.size()
        return {"readings": len(self), "images": int(readings.size),
                "images_with_several_readings": int((readings >= 2).sum()),
                "most_readings_of_an_image": int(readings.max()),
                "images_in_several_phases": int((per_image["phase"].nunique() >= 2).sum()),
                "discarded_readings": self.discarded, "excluded_readings": self.excluded,
                "excluded_images": self.excluded_images}
