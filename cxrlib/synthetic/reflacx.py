"""A synthetic REFLACX look-alike: several radiologists reading the same synthetic radiographs.

``make_reflacx_like(out_dir)`` writes a folder in the REFLACX on-disk layout (see
``cxrlib.data.reflacx``): ``main_data/metadata_phase_{1,2,3}.csv`` and a ``main_data/<id>/``
folder per reading, with the MIMIC-CXR-style DICOMs under ``files/pXX/...`` in the same folder,
so the folder is both ``reflacx_root`` and ``image_root``. The images come from the anatomy
generator of the synthetic EGD set and each reading from its reading simulator
(``cxrlib.synthetic.reading.simulate_reading``), called with the habits (reading time, how often
they zoom) of the radiologist who reads.

What the release has and this set writes the same way (from the data set's public builder,
``post_processing_and_dataset_generation/create_main_table.py`` in ricbl/eyetracking):

* **Reading ids.** ``P{phase}{trial:02}R{random:06}`` in phases 1 and 2, where the trial is the
  image's place in the reading list (phase 1 from trial 2, phase 2 from trial 1, at most 59 and
  50 images); ``P300R{random:06}`` in phase 3. No file says which radiologist read: the
  radiologists exist only inside this writer.
* **Five readings per phase-1/2 image.** Every radiologist reads the phase-1 and phase-2 lists;
  each phase-3 image is read once (by a radiologist drawn at random). A quarter of the images
  go to phase 1, a quarter to phase 2, the rest to phase 3.
* **Discarded readings** (phases 1 and 2 only, a fraction ``discard_frac``): the metadata row
  says ``eye_tracking_data_discarded`` True and the folder holds only ``chest_bounding_box.csv``
  and ``anomaly_location_ellipses.csv``, no ``fixations.csv``.
* **The files.** CRLF line ends; metadata columns ``id, split, eye_tracking_data_discarded, image,
  dicom_id, subject_id, image_size_x, image_size_y`` and the labels in alphabetical order
  (certainties 0-5, ``Support devices`` and ``Quality issue`` True/False); rows sorted by id in
  phases 1-2, by image in phase 3; fixation columns in the release's order, positions, pixels
  per degree and rectangles rounded to whole pixels.
* **Zoom and pan.** A reader sometimes zooms on the region they are looking at: for those
  fixations the shown rectangle is that region, and the image pixels per degree of visual
  angle shrink by the zoom factor (a fixed display of ``SCREEN_PPD`` screen pixels per degree).

Not imitated: the transcriptions, the raw ``gaze_data/`` samples, and where the boxes are. The
chest box is a fixed fraction of the image and each scored abnormality gets one ellipse over it,
so the two files have the release's columns but no anatomy.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
from cxrlib.progress import progress_bar

from cxrlib.synthetic import anatomy
from cxrlib.synthetic.egd import (dicom_uid, disk_full_reported, hex_id, move_into_place, replaceable_files,
                                  temporary_folder, write_dicom, write_manifest)
from cxrlib.synthetic.reading import SCREEN, display_fit, simulate_reading

SCREEN_PPD = 40.0  # screen pixels per degree: a 1920-px-wide display about 65 cm from the eyes
FINDINGS = ("Atelectasis", "Consolidation", "Enlarged cardiac silhouette", "Pleural abnormality",
            "Pulmonary edema", "Quality issue", "Support devices")  # alphabetical, as in the release
SIGNS = {1: {"Enlarged cardiac silhouette": (4, 5), "Pulmonary edema": (3, 5), "Pleural abnormality": (0, 4)},
         2: {"Consolidation": (4, 5), "Atelectasis": (0, 3)}}
METADATA_COLUMNS = ("id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
                    "image_size_x", "image_size_y", *FINDINGS)
FIXATION_COLUMNS = ("timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
                    "pupil_area_normalized", "angular_resolution_x_pixels_per_degree",
                    "angular_resolution_y_pixels_per_degree", "window_width", "window_level",
                    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
                    "ymax_shown_from_image", "xmin_in_screen_coordinates", "ymin_in_screen_coordinates",
                    "xmax_in_screen_coordinates", "ymax_in_screen_coordinates")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
FIRST_TRIAL = {1: 2, 2: 1}  # the builder's trial lists: phase 1 trials 2-60, phase 2 trials 1-50
MOST_IMAGES = {1: 59, 2: 50}
CRLF = "\r\n"  # the release's line ends


def _readers(rng: np.random.Generator, n: int) -> list[dict]:
    """Each radiologist's habits: reading time, zoom propensity, gaze off the image."""
    return [dict(seconds=tuple(np.sort(rng.uniform(6.0, 16.0, 2))), zoom=rng.uniform(0.1, 0.7),
                 offscreen=rng.uniform(0.0, 0.05)) for _ in range(n)]


def _views(rng: np.random.Generator, xy: np.ndarray, h: int, w: int, zoom_prob: float):
    """Shown rectangle (N, 4) and image pixels per degree (N,) of each fixation.

    The whole image by default; with probability ``zoom_prob`` one run of 3-8 fixations is read
    zoomed in on the bounding box of those fixations (at least 40 % of each side, and on screen).
    """
    n = len(xy)
    shown = np.tile([0.0, 0.0, w - 1.0, h - 1.0], (n, 1))
    ppd = np.full(n, SCREEN_PPD / display_fit(h, w)["sx"])
    if rng.random() < zoom_prob and n > 10:
        i0 = int(rng.integers(1, n - 8))
        i1 = i0 + int(rng.integers(3, 9))
        pts = xy[i0:i1]
        pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)]
        if len(pts):
            lo, hi = pts.min(0), pts.max(0)
            size = np.maximum(hi - lo + 0.1 * np.array([w, h]), 0.4 * np.array([w, h]))
            centre = (lo + hi) / 2
            x0, y0 = np.clip(centre - size / 2, 0, None)
            x1, y1 = min(x0 + size[0], w - 1.0), min(y0 + size[1], h - 1.0)
            shown[i0:i1] = [x0, y0, x1, y1]
            ppd[i0:i1] = SCREEN_PPD / display_fit(int(y1 - y0) + 1, int(x1 - x0) + 1)["sx"]
    return shown, ppd


def _certainties(rng: np.random.Generator, label: int) -> dict:
    out = {name: 0 for name in FINDINGS}
    for name, (low, high) in SIGNS.get(label, {}).items():
        out[name] = int(rng.integers(low, high + 1))
    out["Support devices"] = bool(rng.random() < 0.2)
    out["Quality issue"] = False
    return out


def _reading_plan(rng: np.random.Generator, n_images: int, n_readers: int):
    """(phase, trial, radiologists) per image: a quarter in phase 1 and a quarter in phase 2, read
    by every radiologist on a shared trial list; the rest in phase 3, read once (trial 0)."""
    n1 = min(MOST_IMAGES[1], max(2, n_images // 4))
    n2 = min(MOST_IMAGES[2], max(1, n_images // 4))
    plan = []
    for k in range(n_images):
        if k < n1:
            plan.append((1, FIRST_TRIAL[1] + k, list(range(n_readers))))
        elif k < n1 + n2:
            plan.append((2, FIRST_TRIAL[2] + k - n1, list(range(n_readers))))
        else:
            plan.append((3, 0, [int(rng.integers(n_readers))]))
    return plan


def _write_csv(table: pd.DataFrame, path: pathlib.Path):
    table.to_csv(path, index=False, lineterminator=CRLF)


def _boxes(folder: pathlib.Path, h: int, w: int, certainties: dict):
    """The two files every reading folder has, discarded or not: the chest box (a fixed fraction
    of the image here) and one ellipse per scored abnormality (over the chest box here)."""
    box = dict(xmin=round(0.08 * w), ymin=round(0.06 * h), xmax=round(0.92 * w), ymax=round(0.88 * h))
    _write_csv(pd.DataFrame([box], columns=BOX_COLUMNS), folder / "chest_bounding_box.csv")
    labels = [name for name in FINDINGS if name not in ("Support devices", "Quality issue")]
    rows = [dict(box, certainty=value, **{name: name == finding for name in labels})
            for finding, value in certainties.items() if finding in labels and value > 0]
    _write_csv(pd.DataFrame(rows, columns=[*BOX_COLUMNS, "certainty", *labels]), folder / "anomaly_location_ellipses.csv")


def _fixation_table(rr: np.random.Generator, fix: dict, xy: np.ndarray, shown: np.ndarray, ppd: np.ndarray) -> pd.DataFrame:
    screen = np.array([_on_screen(*rect) for rect in shown])  # where each shown rectangle is drawn
    columns = (fix["s"].round(3), (fix["s"] + fix["d"]).round(3), *np.rint(xy).T,
               rr.uniform(0.8, 1.2, len(xy)).round(3), np.rint(ppd), np.rint(ppd), 4096.0, 2048.0,
               *np.rint(shown).T, *screen.T)
    return pd.DataFrame(dict(zip(FIXATION_COLUMNS, columns)))


def _on_screen(x0, y0, x1, y1):
    fit = display_fit(int(y1 - y0) + 1, int(x1 - x0) + 1)
    return fit["left"], fit["top"], SCREEN[0] - fit["right"], SCREEN[1] - fit["bottom"]


def make_reflacx_like(out_dir, *, n_images: int = 40, seed: int = 0, n_readers: int = 5,
                      native_size=(320, 448), discard_frac: float = 0.08, overwrite: bool = False,
                      progress: bool = True, difficulty: float = 0.0) -> pathlib.Path:
    """Write a synthetic REFLACX-format data set into ``out_dir`` and return it.

    Same ``seed``: the same files. ``native_size`` is the range of image heights in pixels.
    ``n_readers``: the radiologists who read the phase-1 and phase-2 lists (five in REFLACX).
    ``difficulty`` (0 to 1): how faint and overlapping the class signatures are, as in
    `cxrlib.synthetic.egd.make_egd_like`.
    """
    out = pathlib.Path(out_dir)
    if n_images < 4 or n_readers < 2:  # every phase gets an image
        raise ValueError(f"need at least 4 images and 2 readers, got {n_images} and {n_readers}")
    difficulty = anatomy.check_difficulty(difficulty)
    ours = replaceable_files(out, overwrite)  # as make_egd_like: only a set it wrote is replaced
    final, out = out, temporary_folder(out)
    with disk_full_reported(final, n_images * int(2 * 0.865 * np.mean(native_size) ** 2 + 64_000)):
        _write_set(out, n_images=n_images, seed=seed, n_readers=n_readers, native_size=native_size,
                   discard_frac=discard_frac, progress=progress, difficulty=difficulty)
        write_manifest(out, "cxrlib.synthetic.reflacx")
        move_into_place(out, final, ours)
    return final


def _write_set(out, *, n_images, seed, n_readers, native_size, discard_frac, progress, difficulty) -> None:
    """The body of `make_reflacx_like`: write the set into the folder ``out``."""
    (out / "main_data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10])
    readers = _readers(rng, n_readers)
    labels = rng.permutation(np.arange(n_images) % 3)
    plan = _reading_plan(rng, n_images, n_readers)
    rows = {1: [], 2: [], 3: []}
    numbers = iter(rng.choice(1_000_000, size=sum(len(who) for _, _, who in plan), replace=False))
    for k in progress_bar(range(n_images), total=n_images, desc="synthetic REFLACX", enabled=progress):
        r = np.random.default_rng([seed, 11, k])
        p = anatomy.draw_patient(r, int(labels[k]), difficulty)
        h = int(r.integers(native_size[0], native_size[1] + 1))
        acq = anatomy.draw_acquisition(r, h, round(h * r.uniform(0.78, 0.95)))
        img = anatomy.render(p, acq, r)
        dicom_id, subject, study = hex_id(r), int(r.integers(10_000_000, 20_000_000)), int(r.integers(50_000_000, 60_000_000))
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.dcm"
        write_dicom(out / rel, img, dict(
            bits=12, rescale=(1.0, 0.0), range_frac=1.0, modality="CR", photometric="MONOCHROME2", view="PA",
            sop_uid=dicom_uid(seed, dicom_id, "sop"), series_uid=dicom_uid(seed, dicom_id, "series"),
            study_uid=dicom_uid(seed, dicom_id, "study"), patient_number=k, patient_id=subject, study_id=study,
            sex=str(r.choice(["F", "M"])), date="21500101"))
        phase, trial, who = plan[k]
        for reader in who:
            style, rr = readers[reader], np.random.default_rng([seed, 12, k, reader])
            reading_id = f"P{phase}{trial:02d}R{next(numbers):06d}"
            discarded = bool(phase < 3 and rr.random() < discard_frac)  # the release discarded none in phase 3
            certainties = _certainties(rr, int(labels[k]))
            rows[phase].append(dict(
                id=reading_id, split="test", eye_tracking_data_discarded=discarded,
                image=f"physionet.org/files/mimic-cxr/2.0.0/{rel}", dicom_id=dicom_id, subject_id=subject,
                image_size_x=acq["w"], image_size_y=acq["h"], **certainties))
            folder = out / "main_data" / reading_id
            folder.mkdir(parents=True, exist_ok=True)
            _boxes(folder, acq["h"], acq["w"], certainties)
            if discarded:
                continue
            fix, _ = simulate_reading(rr, p, acq, reading_seconds=style["seconds"], offscreen_frac=style["offscreen"])
            xy = np.stack([fix["x"], fix["y"]], 1)
            shown, ppd = _views(rr, xy, acq["h"], acq["w"], style["zoom"])
            _write_csv(_fixation_table(rr, fix, xy, shown, ppd), folder / "fixations.csv")
    for phase, table in rows.items():
        table = pd.DataFrame(table, columns=METADATA_COLUMNS).sort_values("id" if phase < 3 else "image", kind="stable")
        _write_csv(table, out / "main_data" / f"metadata_phase_{phase}.csv")
