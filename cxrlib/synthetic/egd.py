"""A synthetic EGD-CXR look-alike: DICOM chest radiographs, labels and simulated radiologist gaze.

The real EGD-CXR (PhysioNet, credentialed) can never ship with the project, so `make_egd_like`
writes a folder in exactly its on-disk format (docs/method.md, section 5): ``master_sheet.csv``,
``eye_gaze.csv``, ``fixations.csv`` and MIMIC-CXR-style DICOMs under ``files/pXX/pXXXXXXXX/
sXXXXXXXX/<dicom_id>.dcm``. The folder is both the EGD root and the image root. The real loader
reads it unchanged, so the whole pipeline can be run and tested without credentials.

What the three classes look like (drawn procedurally in `cxrlib.synthetic.anatomy`):

* **Normal**: two dark lung fields crossed by curved rib shadows, vessels fanning out of the
  hila, a bright mediastinum and a heart a third right / two thirds left of the midline, sharp
  costophrenic angles. Cardiothoracic ratio (CTR, heart width / thoracic width) 0.42-0.50.
* **CHF** (congestive heart failure): an enlarged heart (CTR 0.55-0.68), a bilateral, roughly
  symmetric perihilar haze (the "butterfly" of alveolar oedema), more prominent vessels and, in
  about half the patients, a small fluid meniscus that blunts one or both costophrenic angles.
* **Pneumonia**: a normal heart and one irregular, patchy consolidation (radius 18-28% of the
  lung's width) in the upper, middle or lower zone of one lung.

A patient with two studies keeps the body and the disease (slightly changed) across them.

Size, position, small rotation, exposure (tone curve) and noise vary per image. The grey levels
of every image are rank-transformed onto the same family of histograms, so no global statistic
(mean, std, percentiles) separates the classes: a model has to look at *where* things are.

The gaze is a simulated reading of each image (`cxrlib.synthetic.reading`). ``X_ORIGINAL``/
``Y_ORIGINAL`` are native pixels (column, row); ``FPOGX``/``FPOGY`` the same points on a 1920x1080
screen where the image is fitted keeping its aspect ratio and centred (padding in the
``image_*_pad`` columns).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, generate_uid
from cxrlib.progress import progress_bar

from cxrlib.diskspace import disk_full_error
from cxrlib.synthetic import anatomy
from cxrlib.runfolder import process_alive
from cxrlib.synthetic.reading import SCREEN, display_fit, simulate_reading

LABEL_COLUMNS = ("Normal", "CHF", "pneumonia")
GAZE_COLUMNS = ("DICOM_ID", "Time (in secs)", "FPOGX", "FPOGY", "FPOGS", "FPOGD", "FPOGID",
                "FPOGV", "X_ORIGINAL", "Y_ORIGINAL")
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
RESCALE = ((1.0, 0.0), (1.0, -1024.0), (2.0, 0.0))  # (slope, intercept); the first is plain
INDICATIONS = ("___F with shortness of breath", "___M with cough and fever, eval for pneumonia",
               "___M with dyspnea, r/o pneumonia", "___F with chest pain",
               "___M with hypoxia", "___F with leg swelling and dyspnea", "Preop chest x-ray")
DATASET_ENTRIES = ("master_sheet.csv", "eye_gaze.csv", "fixations.csv", "files")  # what a set consists of
MANIFEST = ".cxrlib-synthetic.json"  # the files a synthetic writer made: all that --overwrite may remove
# How the pixel data are stored. MIMIC-CXR's DICOMs are mostly JPEG 2000; every option is lossless,
# so the loader sees the same pixels whatever the choice.
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}


def _gaze_frame(dicom_id: str, g: dict, ids: np.ndarray, fit: dict) -> pd.DataFrame:
    return pd.DataFrame({
        "DICOM_ID": dicom_id, "Time (in secs)": g["t"].round(4),
        "FPOGX": ((fit["left"] + g["x"] * fit["sx"]) / SCREEN[0]).round(5),
        "FPOGY": ((fit["top"] + g["y"] * fit["sy"]) / SCREEN[1]).round(5),
        "FPOGS": g["s"].round(4), "FPOGD": g["d"].round(4), "FPOGID": ids, "FPOGV": 1,
        "X_ORIGINAL": g["x"].round(2), "Y_ORIGINAL": g["y"].round(2)}, columns=list(GAZE_COLUMNS))


def write_dicom(path: pathlib.Path, img: np.ndarray, info: dict) -> None:
    """Store a [0, 1] image (bright = dense) as a 16-bit DICOM with MIMIC-like quirks.

    ``info`` gives bits_stored, (slope, intercept), photometric, modality, view, the ids and
    optionally ``transfer_syntax`` (a key of ``TRANSFER_SYNTAXES``; default uncompressed). The
    stored values are chosen so that a reader which applies the rescale, then inverts MONOCHROME1,
    sees the same anatomy whatever the encoding.
    """
    bits, (slope, icpt) = info["bits"], info["rescale"]
    top = (slope * (2**bits - 1) + icpt) * info["range_frac"]  # largest rescaled value used
    real = img * top if info["photometric"] == "MONOCHROME2" else top * (1 - img)
    stored = np.round((real - icpt) / slope).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[info["modality"]]
    meta.MediaStorageSOPInstanceUID = info["sop_uid"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, info["sop_uid"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = info["study_uid"], info["series_uid"]
    ds.PatientName = f"SYNTHETIC^{info['patient_number']}"
    ds.PatientID, ds.PatientSex = str(info["patient_id"]), info["sex"]
    ds.StudyID, ds.StudyDate = str(info["study_id"])[:16], info["date"]  # MIMIC shifts dates ~2150
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = info["modality"], info["view"], "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber, ds.SeriesNumber = 1, 1
    ds.PixelSpacing = [round(430.0 / img.shape[0], 4)] * 2  # a 43 cm detector, like a real CXR
    ds.set_pixel_data(stored, info["photometric"], bits, generate_instance_uid=False)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, icpt, "US"
    ds.WindowCenter, ds.WindowWidth = round(top / 2, 1), round(top, 1)
    syntax = TRANSFER_SYNTAXES[info.get("transfer_syntax", "explicit")]
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def hex_id(rng: np.random.Generator) -> str:
    return "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def dicom_uid(seed: int, dicom_id: str, kind: str) -> str:
    """A valid UID that depends only on the seed and the image, so reruns are identical."""
    return generate_uid(entropy_srcs=["cxrlib-synthetic", str(seed), dicom_id, kind])


def _plan(rng: np.random.Generator, n_images: int, repeat_frac: float):
    """Balanced labels; the two images of a repeated patient share a label. -> (labels, patient)."""
    labels = rng.permutation(np.arange(n_images) % 3)
    n_rep = n_images - round(n_images / (1 + repeat_frac))  # patients with a second image
    order = rng.permutation(3)
    patient, n_pat = np.empty(n_images, int), 0
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        n_pairs = min(n_rep // 3 + int(order[c] < n_rep % 3), len(idx) // 2)
        groups = [idx[2 * i:2 * i + 2] for i in range(n_pairs)] + [[i] for i in idx[2 * n_pairs:]]
        for g in groups:
            patient[g], n_pat = n_pat, n_pat + 1
    return labels, rng.permutation(n_pat)[patient]  # patient numbers must not encode the class


def make_egd_like(out_dir, *, n_images: int = 300, seed: int = 0, native_size=(320, 448),
                  native_shape=None, transfer_syntax: str = "explicit",
                  repeat_patient_frac: float = 0.06, monochrome1_frac: float = 0.3,
                  reading_seconds=(8.0, 14.0), gaze_hz: float = 60.0, offscreen_frac: float = 0.03,
                  overwrite: bool = False, progress: bool = True,
                  difficulty: float = anatomy.DEFAULT_DIFFICULTY) -> pathlib.Path:
    """Write a synthetic EGD-CXR-format data set into ``out_dir`` and return it.

    ``native_size`` is the range of image heights in pixels; widths are 0.78-0.95 of the height.
    ``native_shape`` (H, W), if given, makes every image exactly that size instead (MIMIC-CXR's
    are about 3000x2500). ``transfer_syntax``: ``explicit`` (uncompressed), ``jpeg2000`` or
    ``jpegls`` (lossless; encoding needs pylibjpeg-openjpeg or pyjpegls).
    Same ``seed``: byte-identical CSVs and identical pixel arrays. The set is written into a
    temporary folder beside ``out_dir`` and renamed into place at the end, so no reader ever
    sees a half-written set. With ``overwrite=True`` a set this writer made before is replaced:
    only the files its manifest (``.cxrlib-synthetic.json``) lists are removed, every other file in
    the folder is kept, and a folder holding a data set it did not write (EGD-CXR, MIMIC-CXR) is
    refused (:func:`replaceable_files`). A full disk is reported as such, with the space needed.
    ``difficulty`` (0 to 1): how weak and overlapping the class signatures are
    (`cxrlib.synthetic.anatomy`).
    """
    difficulty = anatomy.check_difficulty(difficulty)
    out = pathlib.Path(out_dir)
    _check_arguments(n_images=n_images, native_size=native_size, native_shape=native_shape,
                     transfer_syntax=transfer_syntax, repeat_patient_frac=repeat_patient_frac,
                     monochrome1_frac=monochrome1_frac, reading_seconds=reading_seconds, gaze_hz=gaze_hz,
                     offscreen_frac=offscreen_frac)
    ours = replaceable_files(out, overwrite)
    final, out = out, temporary_folder(out)
    with disk_full_reported(final, _bytes_needed(n_images, native_size, native_shape, reading_seconds, gaze_hz)):
        _write_set(out, final, ours, n_images=n_images, seed=seed, native_size=native_size,
                   native_shape=native_shape, transfer_syntax=transfer_syntax,
                   repeat_patient_frac=repeat_patient_frac, monochrome1_frac=monochrome1_frac,
                   reading_seconds=reading_seconds, gaze_hz=gaze_hz, offscreen_frac=offscreen_frac,
                   progress=progress, difficulty=difficulty)
    return final


def _write_set(out, final, ours, *, n_images, seed, native_size, native_shape, transfer_syntax,
               repeat_patient_frac, monochrome1_frac, reading_seconds, gaze_hz, offscreen_frac, progress,
               difficulty) -> None:
    """The body of `make_egd_like`: write the set into ``out``, then move it onto ``final``."""
    rng = np.random.default_rng([seed, 0])
    labels, patient = _plan(rng, n_images, repeat_patient_frac)
    n_pat = int(patient.max()) + 1
    patient_ids = rng.choice(10_000_000, n_pat, replace=False) + 10_000_000
    study_ids = rng.choice(10_000_000, n_images, replace=False) + 50_000_000
    dicom_ids = []
    while len(dicom_ids) < n_images:
        d = hex_id(rng)
        dicom_ids += [] if d in dicom_ids else [d]
    mono1 = rng.permutation(n_images) < round(monochrome1_frac * n_images)
    rescale = rng.permutation(np.arange(n_images) % 4) % 3  # a quarter of each non-trivial kind
    sex, age = rng.choice(["F", "M"], n_pat), rng.integers(20, 91, n_pat)
    patients: dict[int, dict] = {}
    rows, gaze, fixations, fix_id = [], [], [], 0

    for k in progress_bar(rng.permutation(n_images), total=n_images, desc="synthetic EGD-CXR", enabled=progress):
        r = np.random.default_rng([seed, 1, int(k)])  # one stream per image: order-independent
        pid = int(patient[k])
        if pid in patients:
            p = anatomy.restudy(r, patients[pid])
        else:
            body_rng = np.random.default_rng([seed, 2, pid])
            p = patients[pid] = anatomy.draw_patient(body_rng, int(labels[k]), difficulty)
        h = int(r.integers(native_size[0], native_size[1] + 1))
        w = round(h * r.uniform(0.78, 0.95))  # drawn in any case: native_shape leaves the streams as they are
        h, w = (h, w) if native_shape is None else (int(native_shape[0]), int(native_shape[1]))
        acq = anatomy.draw_acquisition(r, h, w)
        img = anatomy.render(p, acq, r)
        fix, samples = simulate_reading(r, p, acq, reading_seconds=reading_seconds,
                                        gaze_hz=gaze_hz, offscreen_frac=offscreen_frac)
        dicom_id, pat_id, study_id = dicom_ids[k], int(patient_ids[pid]), int(study_ids[k])
        rel = f"files/p{str(pat_id)[:2]}/p{pat_id}/s{study_id}/{dicom_id}.dcm"
        view, fit = ("PA" if r.random() < 0.7 else "AP"), display_fit(acq["h"], acq["w"])
        write_dicom(out / rel, img, dict(
            bits=int(r.choice([12, 14, 16])), rescale=RESCALE[rescale[k]],
            range_frac=r.uniform(0.7, 1.0), modality=str(r.choice(["CR", "DX"])),
            photometric="MONOCHROME1" if mono1[k] else "MONOCHROME2", transfer_syntax=transfer_syntax,
            view=view, sop_uid=dicom_uid(seed, dicom_id, "sop"),
            series_uid=dicom_uid(seed, dicom_id, "series"), study_uid=dicom_uid(seed, dicom_id, "study"),
            patient_number=pid, patient_id=pat_id, study_id=study_id, sex=str(sex[pid]),
            date=f"21{r.integers(10, 90)}{r.integers(1, 13):02d}{r.integers(1, 29):02d}"))
        gaze.append(_gaze_frame(dicom_id, samples, fix_id + samples["i"] + 1, fit))
        fixations.append(_gaze_frame(dicom_id, fix, fix_id + np.arange(len(fix["t"])) + 1, fit))
        fix_id += len(fix["t"])
        focus = {1: "heart", 2: "lesion"}.get(p["label"])  # where the finding is, for teaching
        fx, fy = anatomy.to_pixels(acq, *anatomy.landmarks(p)[focus]) if focus else (np.nan,) * 2
        rows.append(dict(
            dicom_id=dicom_id, path=rel, study_id=study_id, patient_id=pat_id, gender=str(sex[pid]),
            anchor_age=int(age[pid]), view_position=view,
            cxr_exam_indication=INDICATIONS[r.integers(len(INDICATIONS))],
            image_top_pad=fit["top"], image_bottom_pad=fit["bottom"],
            image_left_pad=fit["left"], image_right_pad=fit["right"],
            **{c: int(labels[k] == i) for i, c in enumerate(LABEL_COLUMNS)},
            enlarged_cardiac_silhouette=int(p["label"] == 1), consolidation=int(p["label"] == 2),
            pleural_effusion=int(any(p.get("effusion", ()))), synthetic_ctr=round(p["ctr"], 4),
            synthetic_focus_x=round(float(fx), 2), synthetic_focus_y=round(float(fy), 2)))

    pd.DataFrame(rows).to_csv(out / "master_sheet.csv", index=False)
    pd.concat(gaze, ignore_index=True).to_csv(out / "eye_gaze.csv", index=False)
    pd.concat(fixations, ignore_index=True).to_csv(out / "fixations.csv", index=False)
    write_manifest(out, "cxrlib.synthetic.egd")
    move_into_place(out, final, ours)


def temporary_folder(final: pathlib.Path) -> pathlib.Path:
    """A new folder beside ``final`` to write into; folders that killed writers left are removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        pid = stale.name[len(final.name) + 2:].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    return tmp


def move_into_place(tmp: pathlib.Path, final: pathlib.Path, ours: frozenset = frozenset()) -> None:
    """Rename the finished set onto ``final``. Every file of the old folder that the writer did
    not make (not in ``ours``, the old manifest's list) first moves into the new set at the same
    place; the old folder, which then holds only the writer's own files, is renamed aside and
    deleted. A file of the user's where the new set writes one is refused before anything moves."""
    old = None
    if final.exists():
        keep = [f for f in _files(final) if f not in ours]
        clash = [f for f in keep if (tmp / f).exists() or (tmp / f).is_symlink()]
        if clash:
            raise FileExistsError(
                f"{final / clash[0]} is not a file this writer made, and the new set writes a file of that "
                f"name ({len(clash)} such file(s)); move it elsewhere and run again (nothing was changed)")
        for f in keep:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(final / f, tmp / f)
        old = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _files(folder: pathlib.Path) -> list[str]:
    """Every file (or link) under ``folder``, as POSIX paths relative to it."""
    out = []
    for root, dirs, names in os.walk(folder):
        base = pathlib.Path(root)
        names += [d for d in dirs if (base / d).is_symlink()]  # a linked folder is one entry, not walked
        out += [(base / n).relative_to(folder).as_posix() for n in names]
    return sorted(out)


def write_manifest(folder: pathlib.Path, writer: str) -> None:
    """Record every file under ``folder`` (a finished synthetic set) as written by ``writer``."""
    files = _files(folder)
    (folder / MANIFEST).write_text(json.dumps({"writer": writer, "files": files}, indent=0) + "\n")


def replaceable_files(folder, overwrite: bool) -> frozenset:
    """The files of ``folder`` that a new synthetic set may remove (those an earlier one wrote).

    An empty or missing folder: none. A non-empty one without ``overwrite``: FileExistsError. A
    folder that holds a data set (a master sheet, gaze files, ``files/`` or ``main_data/``) with no
    manifest of this writer is refused: it may be EGD-CXR or MIMIC-CXR. A set written by a
    cxrlib from before the manifest is recognised by its ``synthetic_ctr`` column; its files are
    the three CSVs and the images the master sheet lists.
    """
    folder = pathlib.Path(folder)
    if not folder.exists() or not any(folder.iterdir()):
        return frozenset()
    if not overwrite:
        raise FileExistsError(f"{folder} is not empty; choose an empty folder or pass overwrite=True "
                              f"(--overwrite), which replaces only a set this writer made")
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            return frozenset(json.loads(manifest.read_text())["files"]) | {MANIFEST}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{manifest}: unreadable manifest ({err}); delete the synthetic set by hand, "
                             f"or choose another folder") from None
    legacy = _legacy_synthetic_files(folder)
    if legacy is None:
        legacy = _legacy_synthetic_reflacx(folder)
    if legacy is not None:
        return legacy
    found = [name + "/" * (folder / name).is_dir() for name in (*DATASET_ENTRIES, "main_data") if (folder / name).exists()]
    if found:
        raise FileExistsError(
            f"{folder} holds {' and '.join(found)}, which cxrlib did not write (no {MANIFEST}): it looks like "
            f"a real data set (EGD-CXR, MIMIC-CXR or REFLACX), and --overwrite never deletes what it did "
            f"not create; choose another folder")
    return frozenset()


def _legacy_synthetic_files(folder: pathlib.Path):
    sheet = folder / "master_sheet.csv"
    try:
        table = pd.read_csv(sheet) if sheet.is_file() else None
    except Exception:  # noqa: BLE001 - unreadable: not recognisably ours
        return None
    if table is None or "synthetic_ctr" not in table.columns or "path" not in table.columns:
        return None
    return frozenset(["master_sheet.csv", "eye_gaze.csv", "fixations.csv", *table["path"].astype(str)])


def _legacy_synthetic_reflacx(folder: pathlib.Path):
    """A REFLACX-format set of a cxrlib from before the manifest: ``main_data/`` and ``files/``
    only, every DICOM named ``SYNTHETIC^<n>`` (as `write_dicom` names the patients). Its files
    are those under ``main_data/`` and ``files/``."""
    if not (folder / "main_data").is_dir() or (folder / "master_sheet.csv").exists():
        return None
    import pydicom

    files = [f for f in _files(folder) if f.startswith(("main_data/", "files/"))]
    for f in files:
        if f.startswith("files/"):
            try:
                name = str(pydicom.dcmread(folder / f, stop_before_pixels=True, specific_tags=["PatientName"])
                           .get("PatientName", ""))
            except Exception:  # noqa: BLE001 - not a DICOM this writer made
                return None
            if not name.startswith("SYNTHETIC^"):
                return None
    return frozenset(files)


def _bytes_needed(n_images, native_size, native_shape, reading_seconds, gaze_hz) -> int:
    """About what a set takes on disk: 16-bit pixels (compression only makes it smaller) and
    about 70 bytes per gaze sample."""
    h = np.mean(native_size) if native_shape is None else native_shape[0]
    w = 0.865 * h if native_shape is None else native_shape[1]
    return int(n_images * (2 * h * w + 4096 + 70 * gaze_hz * np.mean(reading_seconds)))


@contextlib.contextmanager
def disk_full_reported(folder, needed: int):
    """Turn a write failure of a full disk (pydicom's or pandas's OSError) into one line."""
    try:
        yield
    except OSError as err:
        full = disk_full_error(err, folder, needed, what="the synthetic data set into")
        if full is None:
            raise
        raise full from None


def _check_arguments(*, n_images, native_size, native_shape, transfer_syntax, repeat_patient_frac,
                     monochrome1_frac, reading_seconds, gaze_hz, offscreen_frac) -> None:
    """Every argument's range, with its name, before anything is written."""
    def fail(name, value, wanted):
        raise ValueError(f"make_egd_like: parameter {name!r} must be {wanted}, got {value!r}")

    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        fail("n_images", n_images, "a whole number of at least 1")
    if len(native_size) != 2 or not 64 <= native_size[0] <= native_size[1]:
        fail("native_size", native_size, "a range of heights (low, high) with 64 <= low <= high")
    if native_shape is not None and (len(native_shape) != 2 or min(native_shape) < 64):
        fail("native_shape", native_shape, "(height, width), each at least 64 pixels")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        fail("transfer_syntax", transfer_syntax, f"one of {sorted(TRANSFER_SYNTAXES)}")
    if transfer_syntax != "explicit":
        from pydicom.pixels import get_encoder

        encoder = get_encoder(TRANSFER_SYNTAXES[transfer_syntax])
        if not encoder.is_available:
            raise RuntimeError(f"make_egd_like: transfer_syntax {transfer_syntax!r} cannot be written here: "
                               f"pydicom has no encoder for it installed ({'; '.join(encoder.missing_dependencies)})."
                               f" Install one, or choose another transfer syntax")
    for name, value in (("repeat_patient_frac", repeat_patient_frac), ("monochrome1_frac", monochrome1_frac),
                        ("offscreen_frac", offscreen_frac)):
        if not 0 <= value < 1 and not (name == "monochrome1_frac" and value == 1):
            fail(name, value, "a fraction in [0, 1)")
    if len(reading_seconds) != 2 or not 2.0 <= reading_seconds[0] <= reading_seconds[1]:
        fail("reading_seconds", reading_seconds, "a range (low, high) of seconds with 2 <= low <= high")
    if not gaze_hz > 0:
        fail("gaze_hz", gaze_hz, "a positive sampling rate in Hz")
