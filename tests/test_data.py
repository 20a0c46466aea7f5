"""The EGD-CXR loader on synthetic folders, read_dicom on a real radiograph, and bad input."""

import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from cxrlib.data import EGDDataset, Geometry, collate, read_dicom
from cxrlib.data.egd import read_master_sheet
from cxrlib.data.gaze import GazePoints, gaze_map, gaze_map_native
from cxrlib.data.splits import load_or_make_splits, make_splits
from cxrlib.metrics import cc
from cxrlib.synthetic.egd import make_egd_like

SIZE = (64, 64)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return make_egd_like(tmp_path_factory.mktemp("egd") / "data", n_images=18, seed=3, progress=False)


@pytest.fixture
def egd(synthetic_root, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(synthetic_root, tmp_path / "egd")


def dataset(root, **kw):
    kw.setdefault("image_size", SIZE)
    kw.setdefault("sigma_frac", 0.025)
    return EGDDataset(root, root, **kw)


# -- the loader ----------------------------------------------------------------------------
def test_samples_have_the_documented_form(synthetic_root):
    ds = dataset(synthetic_root)
    assert len(ds) == 18
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (1, *SIZE) and s["image"].dtype == torch.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["gaze_map"].shape == (1, *SIZE) and (s["gaze_map"] >= 0).all()
        assert s["gaze_map"].sum().item() == pytest.approx(1.0, abs=1e-4)
        assert s["label"] in (0, 1, 2) and isinstance(s["dicom_id"], str) and len(s["dicom_id"]) == 44
        fx = s["fixations"]
        assert fx.ndim == 2 and fx.shape[1] == 2 and len(fx) > 0
        assert (fx[:, 0] >= -0.5).all() and (fx[:, 0] <= SIZE[1] - 0.5).all()
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, *SIZE) and batch["label"].dtype == torch.long
    assert isinstance(batch["fixations"], list)
    assert set(ds.labels) == {0, 1, 2}


def test_gaze_map_for_uses_the_data_sets_own_blur_unless_told(synthetic_root):
    """Without ``sigma``/``sigma_frac`` the map is the one the sample carries (the data set's
    ``sigma_frac``, not the paper's 75.5 native pixels); with one, another blur."""
    ds = dataset(synthetic_root, sigma_frac=0.05)
    own = ds.gaze_map_for(2)
    assert np.allclose(own, ds[2]["gaze_map"][0].numpy(), atol=1e-7)
    assert not np.allclose(ds.gaze_map_for(2, sigma_frac=0.01), own, atol=1e-7)
    assert np.allclose(ds.gaze_map_for(2, sigma_frac=0.05), own)


def test_off_image_gaze_is_dropped_and_counted(synthetic_root):
    summary = dataset(synthetic_root).gaze_summary()
    assert summary["dropped_off_image"].sum() > 0
    assert (summary["dropped_off_image"] < summary["gaze_points"]).all()


def test_cache_serves_the_same_sample_and_keys_on_parameters(synthetic_root, tmp_path):
    ds = dataset(synthetic_root, cache_dir=tmp_path / "cache")
    first = ds[0]
    assert len(list((tmp_path / "cache").glob("*/*.bin"))) == 1
    again = ds[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["gaze_map"], again["gaze_map"])
    other = dataset(synthetic_root, cache_dir=tmp_path / "cache", sigma_frac=0.05)[0]
    assert len(list((tmp_path / "cache").glob("*/*.bin"))) == 2
    assert not torch.equal(other["gaze_map"], first["gaze_map"])
    uncached = dataset(synthetic_root)[0]
    assert torch.allclose(uncached["image"], first["image"]) and torch.allclose(uncached["gaze_map"], first["gaze_map"])


def test_analytic_map_matches_native_blur(synthetic_root):
    for resize in ("pad_resize", "stride"):
        fast = dataset(synthetic_root, resize=resize)[2]["gaze_map"][0].numpy()
        slow = dataset(synthetic_root, resize=resize, map_method="native")[2]["gaze_map"][0].numpy()
        assert cc(fast, slow) > 0.98


def test_jpg_images_are_accepted(egd):
    sheet = pd.read_csv(egd / "master_sheet.csv")
    dcm = egd / sheet["path"][0]
    image = read_dicom(dcm)
    from PIL import Image

    Image.fromarray((image * 255).astype(np.uint8)).save(dcm.with_suffix(".jpg"))
    dcm.unlink()
    s = dataset(egd)[0]
    assert s["image"].shape == (1, *SIZE)


# -- geometry and alignment ----------------------------------------------------------------
@pytest.mark.parametrize("resize", ["pad_resize", "stride"])
@pytest.mark.parametrize("native", [(300, 240), (240, 300), (130, 97)])
def test_point_map_and_image_land_on_the_same_pixel(resize, native):
    h, w = native
    x0, y0 = 0.7 * w, 0.3 * h
    geometry = Geometry.fit(native, (64, 64), resize)
    expected = geometry.apply_points(np.array([[x0, y0]]))[0]
    sal, dropped = gaze_map(GazePoints(np.array([[x0, y0]]), np.ones(1)), geometry, sigma_px=0.02 * max(native))
    assert dropped == 0
    r, c = np.unravel_index(sal.argmax(), sal.shape)
    assert abs(c - expected[0]) <= 1 and abs(r - expected[1]) <= 1
    image = np.zeros(native, np.float32)
    image[int(y0) - 2:int(y0) + 3, int(x0) - 2:int(x0) + 3] = 1
    out = geometry.apply_image(image)
    r, c = np.unravel_index(out.argmax(), out.shape)
    assert abs(c - expected[0]) <= 1.5 and abs(r - expected[1]) <= 1.5
    native_map, _ = gaze_map_native(GazePoints(np.array([[x0, y0]]), np.ones(1)), geometry, 0.02 * max(native))
    r, c = np.unravel_index(native_map.argmax(), native_map.shape)
    assert abs(c - expected[0]) <= 1.5 and abs(r - expected[1]) <= 1.5


def test_gaze_point_in_a_dicom_peaks_at_its_transformed_position(egd):
    """End to end through the loader: a bright spot in the DICOM and one gaze sample on it."""
    sheet = pd.read_csv(egd / "master_sheet.csv")
    dicom_id, rel = sheet["dicom_id"][0], sheet["path"][0]
    ds_file = pydicom.dcmread(egd / rel)
    h, w = ds_file.Rows, ds_file.Columns
    x0, y0 = int(0.25 * w), int(0.6 * h)
    pixels = np.zeros((h, w), np.uint16)
    pixels[y0 - 3:y0 + 4, x0 - 3:x0 + 4] = 4000
    if ds_file.PhotometricInterpretation == "MONOCHROME1":
        pixels = (4000 - pixels).astype(np.uint16)
    ds_file.PixelData = pixels.tobytes()
    ds_file.save_as(egd / rel)
    gaze = pd.read_csv(egd / "eye_gaze.csv")
    first = gaze[gaze.DICOM_ID == dicom_id].index[0]
    gaze = gaze[gaze.DICOM_ID != dicom_id]
    row = pd.read_csv(egd / "eye_gaze.csv").loc[[first]].assign(X_ORIGINAL=float(x0), Y_ORIGINAL=float(y0))
    pd.concat([row, gaze]).to_csv(egd / "eye_gaze.csv", index=False)
    for resize in ("pad_resize", "stride"):
        s = dataset(egd, resize=resize, ids=[dicom_id])[0]
        expected = Geometry.fit((h, w), SIZE, resize).apply_points(np.array([[x0, y0]]))[0]
        for key in ("image", "gaze_map"):
            r, c = np.unravel_index(s[key][0].numpy().argmax(), SIZE)
            assert abs(c - expected[0]) <= 1.5 and abs(r - expected[1]) <= 1.5, (resize, key)


def test_image_size_must_be_multiples_of_32(synthetic_root):
    with pytest.raises(ValueError, match="multiples of 32"):
        dataset(synthetic_root, image_size=(100, 64))


# -- read_dicom on a real radiograph -------------------------------------------------------
def test_read_dicom_real_cr_monochrome1():
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm")
    assert pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME1"
    image = read_dicom(path)
    assert image.dtype == np.float32 and image.ndim == 2 and image.min() == 0 and image.max() == 1
    h, w = image.shape
    lungs = np.median([image[h // 3:h // 2, w // 6:w // 3], image[h // 3:h // 2, 2 * w // 3:5 * w // 6]])
    mediastinum = np.median(image[h // 3:h // 2, 9 * w // 20:11 * w // 20])
    assert lungs < mediastinum - 0.1  # inverted correctly: air dark, mediastinum bright


@pytest.mark.parametrize("variant, tol", [("RG1_J2KR.dcm", 1e-6), ("RG1_UNCI.dcm", 0.02), ("RG1_J2KI.dcm", 0.02)])
def test_compressed_variants_decode_to_the_same_image(variant, tol):
    reference = read_dicom(pydicom.data.get_testdata_file("RG1_UNCR.dcm"))
    other = read_dicom(pydicom.data.get_testdata_file(variant))
    assert other.shape == reference.shape
    assert np.abs(other - reference).mean() < tol


def test_missing_pixel_handler_names_file_and_package(monkeypatch):
    path = pydicom.data.get_testdata_file("RG1_J2KR.dcm")

    def no_handler(self):
        raise RuntimeError("Unable to decode the pixel data as none of the available plugins are installed")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_handler))
    with pytest.raises(RuntimeError, match="pylibjpeg") as err:
        read_dicom(path)
    assert "RG1_J2KR.dcm" in str(err.value) and "JPEG 2000" in str(err.value)


def test_voi_lut_option_changes_nothing_in_range():
    image = read_dicom(pydicom.data.get_testdata_file("RG1_UNCR.dcm"), voi_lut=True)
    assert 0 <= image.min() and image.max() <= 1


# -- bad input: every error names the file, line or count ----------------------------------
def test_missing_image_file(egd):
    sheet = pd.read_csv(egd / "master_sheet.csv")
    (egd / sheet["path"][4]).unlink()
    with pytest.raises(FileNotFoundError, match=sheet["dicom_id"][4]):
        dataset(egd)


def test_truncated_dicom(egd):
    sheet = pd.read_csv(egd / "master_sheet.csv")
    path = egd / sheet["path"][0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = dataset(egd)
    with pytest.raises(ValueError, match=str(path.name)):
        ds[0]


@pytest.mark.parametrize("labels", [(0, 0, 0), (1, 1, 0)])
def test_row_without_exactly_one_label(egd, labels):
    sheet = pd.read_csv(egd / "master_sheet.csv")
    sheet.loc[5, ["Normal", "CHF", "pneumonia"]] = labels
    sheet.to_csv(egd / "master_sheet.csv", index=False)
    with pytest.raises(ValueError, match=r"line 7 .*exactly one"):
        dataset(egd)


def test_missing_required_column(egd):
    sheet = pd.read_csv(egd / "master_sheet.csv").drop(columns=["patient_id"])
    sheet.to_csv(egd / "master_sheet.csv", index=False)
    with pytest.raises(ValueError, match="master_sheet.csv: missing required column.*patient_id"):
        dataset(egd)
    gaze = pd.read_csv(egd / "eye_gaze.csv").drop(columns=["X_ORIGINAL"])
    gaze.to_csv(egd / "eye_gaze.csv", index=False)
    with pytest.raises(ValueError, match="eye_gaze.csv: missing required column.*X_ORIGINAL"):
        from cxrlib.data.gaze import load_gaze_csv

        load_gaze_csv(egd / "eye_gaze.csv")


def test_gaze_rows_for_an_unknown_id(egd):
    gaze = pd.read_csv(egd / "eye_gaze.csv")
    gaze.loc[10, "DICOM_ID"] = "deadbeef-00000000-00000000-00000000-00000000"
    gaze.to_csv(egd / "eye_gaze.csv", index=False)
    with pytest.raises(ValueError, match=r"eye_gaze.csv, line 12: gaze for DICOM_ID 'deadbeef"):
        dataset(egd)


def test_image_with_no_usable_gaze(egd):
    sheet = pd.read_csv(egd / "master_sheet.csv")
    dicom_id = sheet["dicom_id"][2]
    gaze = pd.read_csv(egd / "eye_gaze.csv")
    mine = gaze.DICOM_ID == dicom_id
    gaze.loc[mine, "X_ORIGINAL"] = -50.0
    gaze.to_csv(egd / "eye_gaze.csv", index=False)
    ds = dataset(egd)
    with pytest.raises(ValueError, match=rf"{dicom_id}: no usable gaze \({int(mine.sum())} point\(s\) dropped"):
        ds[2]
    # and an image with no gaze rows at all is caught when the data set is built
    gaze[~mine].to_csv(egd / "eye_gaze.csv", index=False)
    with pytest.raises(ValueError, match=f"no gaze rows for 1 image.*{dicom_id}"):
        dataset(egd)


@pytest.mark.parametrize("name", ["master_sheet.csv", "eye_gaze.csv"])
@pytest.mark.parametrize("content", ["", "header_only"])
def test_empty_csv(egd, name, content):
    path = egd / name
    path.write_text("" if content == "" else path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=rf"{name}: the file (is empty|has a header but no)"):
        dataset(egd)


# -- splits --------------------------------------------------------------------------------
def test_splits_grouped_by_patient_stratified_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(160), 2)[:300]
    sheet = pd.DataFrame({"dicom_id": [f"id{i}" for i in range(300)], "patient_id": patients,
                          "label": rng.permutation(np.arange(300) % 3)})
    sheet["label"] = sheet.groupby("patient_id")["label"].transform("first")
    splits = make_splits(sheet, seed=0)
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    share = splits["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.03) and share["test"] == pytest.approx(0.2, abs=0.03)
    per_class = splits.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert (per_class["train"] - 0.7).abs().max() < 0.05
    assert splits.equals(make_splits(sheet, seed=0)) and not splits.equals(make_splits(sheet, seed=1))
    path = tmp_path / "splits.csv"
    written = load_or_make_splits(path, sheet, seed=0)
    assert load_or_make_splits(path, sheet, seed=0)["split"].tolist() == written["split"].tolist()
    with pytest.raises(ValueError, match=r"not hold the split of data_seed=5.*new run folder"):
        load_or_make_splits(path, sheet, seed=5)  # the file never silently wins over the config
    with pytest.raises(ValueError, match="made for another data set"):
        load_or_make_splits(path, sheet.iloc[:-1], seed=0)


def test_master_sheet_labels(synthetic_root):
    sheet = read_master_sheet(synthetic_root / "master_sheet.csv")
    onehot = sheet[["Normal", "CHF", "pneumonia"]].to_numpy()
    assert (onehot.argmax(1) == sheet["label"]).all()


def test_damaged_cache_entry_is_recomputed(synthetic_root, tmp_path):
    ds = dataset(synthetic_root, cache_dir=tmp_path / "cache")
    first = ds[1]
    (entry,) = list((tmp_path / "cache").glob("*/*.bin"))
    entry.write_bytes(entry.read_bytes()[:100])  # as if the writer was killed
    again = dataset(synthetic_root, cache_dir=tmp_path / "cache")[1]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["gaze_map"], again["gaze_map"])
    assert entry.stat().st_size > 100
