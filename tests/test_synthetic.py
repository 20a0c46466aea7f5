"""The synthetic EGD-CXR look-alike: format, determinism, and that it is worth learning from."""

import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from torch import tensor
from torch.nn.functional import adaptive_avg_pool2d

from cxrlib.synthetic.egd import GAZE_COLUMNS, LABEL_COLUMNS, make_egd_like

MASTER_COLUMNS = ["dicom_id", "path", "patient_id", "study_id", *LABEL_COLUMNS, "image_top_pad",
                  "image_bottom_pad", "image_left_pad", "image_right_pad"]


def _read(path):
    """Minimal reader for the checks (the project's loader is tested elsewhere)."""
    ds = pydicom.dcmread(path)
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = x.max() - x
    return ds, (x - x.min()) / (x.max() - x.min())


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    root = make_egd_like(tmp_path_factory.mktemp("egd"), n_images=30, seed=3, progress=False)
    return root, pd.read_csv(root / "master_sheet.csv"), pd.read_csv(root / "eye_gaze.csv"), \
        pd.read_csv(root / "fixations.csv")


def test_columns_ids_labels(egd):
    root, m, gaze, fix = egd
    assert set(MASTER_COLUMNS) <= set(m.columns) and len(m) == 30
    assert list(gaze.columns) == list(GAZE_COLUMNS) == list(fix.columns)
    assert m.dicom_id.is_unique and m.study_id.is_unique
    assert all(re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", d) for d in m.dicom_id)
    assert m.patient_id.between(10_000_000, 19_999_999).all()
    assert m.study_id.between(50_000_000, 59_999_999).all()
    labels = m[list(LABEL_COLUMNS)]
    assert (labels.sum(axis=1) == 1).all() and (labels.sum() == 10).all()
    repeated = m.groupby("patient_id").filter(lambda g: len(g) > 1)
    assert len(repeated) >= 2
    assert (repeated.groupby("patient_id")[list(LABEL_COLUMNS)].nunique() == 1).all().all()


def test_dicoms_readable_and_varied(egd):
    root, m, _, _ = egd
    seen = {"pi": set(), "rescale": 0, "bits": set()}
    for row in m.itertuples():
        assert re.fullmatch(rf"files/p{str(row.patient_id)[:2]}/p{row.patient_id}/s{row.study_id}/"
                            rf"{row.dicom_id}\.dcm", row.path)
        ds = pydicom.dcmread(root / row.path)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.dtype == np.uint16
        assert 0.78 <= ds.Columns / ds.Rows <= 0.95 and 320 <= ds.Rows <= 448
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PatientName.family_name == "SYNTHETIC" and ds.PatientID == str(row.patient_id)
        # The display padding is consistent with fitting the image on a 1920x1080 screen.
        k = 1080 / ds.Rows
        assert row.image_left_pad + row.image_right_pad == 1920 - round(ds.Columns * k)
        seen["pi"].add(ds.PhotometricInterpretation)
        seen["rescale"] += (ds.RescaleSlope, ds.RescaleIntercept) != (1, 0)
        seen["bits"].add(ds.BitsStored)
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["rescale"] >= 5 and len(seen["bits"]) >= 2


def test_encodings_show_the_same_anatomy(egd):
    """MONOCHROME1 and rescaled files, once decoded, look like the rest: dark lungs, bright base."""
    root, m, _, _ = egd
    for path in m.path[:12]:
        _, x = _read(root / path)
        h, w = x.shape
        lungs = x[int(0.3 * h):int(0.5 * h), int(0.1 * w):int(0.3 * w)].mean()
        assert lungs < x[int(0.9 * h):, int(0.3 * w):int(0.7 * w)].mean() - 0.2


def test_gaze(egd):
    root, m, gaze, fix = egd
    assert set(gaze.DICOM_ID) == set(fix.DICOM_ID) == set(m.dicom_id)
    assert (fix.FPOGD > 0).all() and fix.groupby("DICOM_ID").size().between(25, 50).all()
    assert (fix.groupby("DICOM_ID").FPOGID.diff().dropna() == 1).all()
    for g in (gaze, fix):  # rows grouped by image, in reading order
        assert (g.groupby("DICOM_ID")["Time (in secs)"].diff().dropna() > 0).all()
        assert g.DICOM_ID.ne(g.DICOM_ID.shift()).sum() == len(m)
    dims = {r.dicom_id: pydicom.dcmread(root / r.path, stop_before_pixels=True)
            for r in m.itertuples()}
    h = gaze.DICOM_ID.map(lambda d: dims[d].Rows)
    w = gaze.DICOM_ID.map(lambda d: dims[d].Columns)
    x, y = gaze.X_ORIGINAL, gaze.Y_ORIGINAL
    off = (x < 0) | (x >= w) | (y < 0) | (y >= h)
    assert 0.003 < off.mean() < 0.15
    # FPOGX is the same point on the screen.
    pads = m.set_index("dicom_id").image_left_pad
    x_screen = pads[gaze.DICOM_ID].values + gaze.X_ORIGINAL * 1080 / h
    assert np.allclose(gaze.FPOGX * 1920, x_screen, atol=2.0)


def test_reader_dwells_on_the_finding(egd):
    root, m, _, fix = egd
    dwell = {}
    for row in m[m.pneumonia == 1].itertuples():
        f = fix[fix.DICOM_ID == row.dicom_id]
        h = pydicom.dcmread(root / row.path, stop_before_pixels=True).Rows
        dist = np.hypot(f.X_ORIGINAL - row.synthetic_focus_x, f.Y_ORIGINAL - row.synthetic_focus_y)
        dwell[row.dicom_id] = f.FPOGD[dist < 0.1 * h].sum() / f.FPOGD.sum()
    # A disc of about 3% of the image around the consolidation gets over a quarter of the time.
    assert np.median(list(dwell.values())) > 0.25


def test_deterministic(tmp_path):
    a = make_egd_like(tmp_path / "a", n_images=6, seed=5, progress=False)
    b = make_egd_like(tmp_path / "b", n_images=6, seed=5, progress=False)
    c = make_egd_like(tmp_path / "c", n_images=6, seed=6, progress=False)
    for name in ("master_sheet.csv", "eye_gaze.csv", "fixations.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()
    for path in pd.read_csv(a / "master_sheet.csv").path:
        pixels = [pydicom.dcmread(root / path).pixel_array for root in (a, b)]
        assert np.array_equal(*pixels)


def test_refuses_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        make_egd_like(tmp_path, n_images=3, progress=False)
    make_egd_like(tmp_path, n_images=3, progress=False, overwrite=True)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "master_sheet.csv").exists()


def test_classes_differ_in_space_not_in_global_statistics(tmp_path):
    """Mean and std of the image say nothing about the class; a coarse 8x6 layout does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    root = make_egd_like(tmp_path, n_images=90, seed=11, progress=False)
    m = pd.read_csv(root / "master_sheet.csv")
    y = m[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    glob, grid = [], []
    for path in m.path:
        _, x = _read(root / path)
        glob.append([x.mean(), x.std()])
        grid.append(adaptive_avg_pool2d(tensor(x)[None], (8, 6)).ravel().numpy())

    def accuracy(features):
        f = np.asarray(features, dtype=np.float64)
        f = (f - f.mean(0)) / f.std(0)
        return cross_val_score(LogisticRegression(max_iter=2000), f, y, cv=5).mean()

    assert accuracy(glob) < 0.5  # chance is 1/3
    assert accuracy(grid) > 0.6
