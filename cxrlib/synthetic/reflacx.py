"""A synthetic REFLACX look-alike: several radiologists reading the same synthetic radiographs.

``make_reflacx_like(out_dir)`` writes a folder in the REFLACX on-disk layout (see
``cxrlib.data.reflacx``): ``main_data/metadata_phase_{1,2,3}.csv`` and ``main_data/<id>/
fixations.csv`` per reading, with the MIMIC-CXR-style DICOMs under ``files/pXX/...`` in the same
folder, so the folder is both ``reflacx_root`` and ``image_root``. The images come from the
anatomy generator of the synthetic EGD set and each reading from its reading simulator
(``cxrlib.synthetic.reading.simulate_reading``), called once per radiologist with that radiologist's
habits (reading time, how often they zoom).

What REFLACX has and this set imitates:

* **Several readers per image.** Phase 1 images are read by every radiologist, phase 2 images
  by two or three, phase 3 images by one.
* **Zoom and pan.** A reader sometimes zooms on the region they are looking at: for those
  fixations the shown rectangle is that region, and the image pixels per degree of visual
  angle shrink by the zoom factor (a fixed display of ``SCREEN_PPD`` screen pixels per degree).
* **Discarded readings.** A fraction is flagged ``eye_tracking_data_discarded`` and has no
  ``fixations.csv``, as a loader must skip them without reading anything.
* **Certainties.** Each reading scores a few abnormalities 0-5 according to the image's class,
  so a label mapping can be tried.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrlib.synthetic import anatomy
from cxrlib.synthetic.egd import hex_id, dicom_uid, write_dicom
from cxrlib.synthetic.reading import display_fit, simulate_reading

SCREEN_PPD = 40.0  # screen pixels per degree: a 1920-px-wide display about 65 cm from the eyes
FINDINGS = ("Enlarged cardiac silhouette", "Pulmonary edema", "Consolidation", "Atelectasis",
            "Pleural abnormality", "Support devices", "Quality issue")
SIGNS = {1: {"Enlarged cardiac silhouette": (4, 5), "Pulmonary edema": (3, 5), "Pleural abnormality": (0, 4)},
         2: {"Consolidation": (4, 5), "Atelectasis": (0, 3)}}
FIXATION_COLUMNS = ("timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
                    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree",
                    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
                    "ymax_shown_from_image", "window_level", "window_width")


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
    out["Support devices"] = int(5 if rng.random() < 0.2 else 0)
    return out


def _reading_plan(rng: np.random.Generator, n_images: int, n_readers: int):
    """(phase, reader numbers) per image: a quarter read by all, a quarter by 2-3, the rest by one."""
    n1 = max(2, n_images // 4)
    n2 = max(1, n_images // 4)
    plan = []
    for k in range(n_images):
        if k < n1:
            plan.append((1, list(range(n_readers))))
        elif k < n1 + n2:
            plan.append((2, sorted(rng.choice(n_readers, min(n_readers, int(rng.integers(2, 4))), replace=False))))
        else:
            plan.append((3, [int(rng.integers(n_readers))]))
    return plan


def make_reflacx_like(out_dir, *, n_images: int = 40, seed: int = 0, n_readers: int = 5,
                      native_size=(320, 448), discard_frac: float = 0.08, overwrite: bool = False,
                      progress: bool = True, difficulty: float = 0.0) -> pathlib.Path:
    """Write a synthetic REFLACX-format data set into ``out_dir`` and return it.

    Same ``seed``: the same files. ``native_size`` is the range of image heights in pixels.
    ``difficulty`` (0 to 1): how faint and overlapping the class signatures are, as in
    `cxrlib.synthetic.egd.make_egd_like`.
    """
    out = pathlib.Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose an empty folder or pass overwrite=True")
    if n_images < 4 or n_readers < 2:  # every phase gets an image
        raise ValueError(f"need at least 4 images and 2 readers, got {n_images} and {n_readers}")
    difficulty = anatomy.check_difficulty(difficulty)
    (out / "main_data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10])
    readers = _readers(rng, n_readers)
    labels = rng.permutation(np.arange(n_images) % 3)
    plan = _reading_plan(rng, n_images, n_readers)
    rows = {1: [], 2: [], 3: []}
    numbers = iter(rng.choice(900_000, size=n_images * n_readers, replace=False) + 100_000)
    for k in tqdm(range(n_images), disable=not progress, desc="synthetic REFLACX"):
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
        phase, who = plan[k]
        for reader in who:
            style, rr = readers[reader], np.random.default_rng([seed, 12, k, reader])
            reading_id = f"P{phase}{reader + 1:02d}R{next(numbers)}"
            discarded = bool(rr.random() < discard_frac)
            rows[phase].append(dict(
                id=reading_id, split="test", eye_tracking_data_discarded=discarded,
                image=f"physionet.org/files/mimic-cxr/2.0.0/{rel}", dicom_id=dicom_id, subject_id=subject,
                image_size_x=acq["w"], image_size_y=acq["h"], **_certainties(rr, int(labels[k]))))
            if discarded:
                continue
            fix, _ = simulate_reading(rr, p, acq, reading_seconds=style["seconds"], offscreen_frac=style["offscreen"])
            xy = np.stack([fix["x"], fix["y"]], 1)
            shown, ppd = _views(rr, xy, acq["h"], acq["w"], style["zoom"])
            folder = out / "main_data" / reading_id
            folder.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(dict(zip(FIXATION_COLUMNS, (
                fix["s"].round(4), (fix["s"] + fix["d"]).round(4), xy[:, 0].round(2), xy[:, 1].round(2),
                ppd.round(3), ppd.round(3), *shown.T.round(1), 2048, 4096)))).to_csv(folder / "fixations.csv", index=False)
    for phase, table in rows.items():
        columns = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
                   "image_size_x", "image_size_y", *FINDINGS]
        pd.DataFrame(table, columns=columns).to_csv(out / "main_data" / f"metadata_phase_{phase}.csv", index=False)
    return out
