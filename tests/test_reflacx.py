"""REFLACX: the loader on the synthetic REFLACX-format set, bad input, the map convention, the
inter-reader ceiling and the exclusion of EGD training images. (A hand-built folder in the
release's format, independent of the synthetic writer: test_reflacx_release_format.py.)"""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlib import cli
from cxrlib.evaluation import external
from cxrlib.data import Geometry
from cxrlib.data.gaze import GazePoints, ShownGazePoints, gaze_map
from cxrlib.data.reflacx import READING_ID, REFLACXDataset, mapped_labels, read_metadata
from cxrlib.synthetic.reflacx import make_reflacx_like

SIZE = (64, 64)


@pytest.fixture(scope="session")
def reflacx_root(tmp_path_factory):
    return make_reflacx_like(tmp_path_factory.mktemp("reflacx") / "data", n_images=8, seed=1, progress=False)


@pytest.fixture
def reflacx(reflacx_root, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(reflacx_root, tmp_path / "reflacx")


def dataset(root, **kw):
    kw.setdefault("image_size", SIZE)
    return REFLACXDataset(root, root, **kw)


def metadata(root, phase=1):
    return root / "main_data" / f"metadata_phase_{phase}.csv"


def multi_reader_image(ds):
    return next(d for d, idx in ds.readings_by_image().items() if len(idx) >= 3)


# -- the loader ----------------------------------------------------------------------------
def test_samples_have_the_egd_form_plus_reading_id_and_index(reflacx_root):
    ds = dataset(reflacx_root)
    meta = read_metadata(reflacx_root)
    assert len(ds) == int((~meta["eye_tracking_data_discarded"]).sum())
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (1, *SIZE) and 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["gaze_map"].shape == (1, *SIZE) and (s["gaze_map"] >= 0).all()
        assert s["gaze_map"].sum().item() == pytest.approx(1.0, abs=1e-4)
        assert s["label"] == -1 and len(s["dicom_id"]) == 44 and s["patient_id"].isdigit()
        phase = meta.set_index("id").loc[s["reading_id"], "phase"]
        assert READING_ID.match(s["reading_id"]).group(1) == str(phase)
        assert ds.readings_by_image()[s["dicom_id"]][s["reading_index"]] == i
        fx = s["fixations"]
        assert fx.ndim == 2 and len(fx) > 0 and (fx >= -0.5).all() and (fx <= SIZE[1] - 0.5).all()
    summary = ds.summary()
    assert summary["images_with_several_readings"] >= 2 and "readers" not in summary
    assert summary["most_readings_of_an_image"] == 5 and summary["images_in_several_phases"] == 0


def test_discarded_readings_are_skipped_and_counted(reflacx_root):
    meta = read_metadata(reflacx_root)
    ds = dataset(reflacx_root)
    n_discarded = int(meta["eye_tracking_data_discarded"].sum())
    assert n_discarded > 0 and ds.discarded == n_discarded
    assert not set(meta.loc[meta["eye_tracking_data_discarded"], "id"]) & set(ds.meta["id"])
    # A discarded reading's folder holds only the two box files, as in the release.
    for i in meta.loc[meta["eye_tracking_data_discarded"], "id"]:
        assert sorted(f.name for f in (reflacx_root / "main_data" / i).iterdir()) == \
            ["anomaly_location_ellipses.csv", "chest_bounding_box.csv"]


def test_cache_serves_the_same_sample(reflacx_root, tmp_path):
    ds = dataset(reflacx_root, cache_dir=tmp_path / "cache")
    first, again = ds[1], ds[1]
    assert len(list((tmp_path / "cache").glob("*/*.bin"))) == 1
    assert torch.equal(first["gaze_map"], again["gaze_map"]) and first["reading_id"] == again["reading_id"]


def test_jpg_images_are_accepted(reflacx):
    from PIL import Image

    from cxrlib.data import read_dicom

    for dcm in reflacx.glob("files/**/*.dcm"):
        Image.fromarray((read_dicom(dcm) * 255).astype(np.uint8)).save(dcm.with_suffix(".jpg"))
        dcm.unlink()
    assert dataset(reflacx)[0]["image"].shape == (1, *SIZE)


def test_the_writer_uses_the_release_id_scheme_and_line_ends(reflacx_root):
    meta = read_metadata(reflacx_root)
    parts = meta["id"].str.extract(READING_ID)
    assert (parts[0].astype(int) == meta["phase"]).all()
    assert (parts.loc[meta["phase"] == 3, 1] == "00").all()
    early = meta[meta["phase"] < 3]
    per_trial = early.groupby(["phase", "trial"])["dicom_id"]
    assert (per_trial.nunique() == 1).all() and (per_trial.size() == 5).all()  # one image, five readings per trial
    assert (meta[meta["phase"] == 3].groupby("dicom_id").size() == 1).all()
    for phase in (1, 2, 3):
        raw = metadata(reflacx_root, phase).read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n") == len(meta[meta["phase"] == phase]) + 1


# -- bad input -----------------------------------------------------------------------------
def test_missing_metadata_column_is_named(reflacx):
    table = pd.read_csv(metadata(reflacx))
    table.drop(columns="image_size_x").to_csv(metadata(reflacx), index=False)
    with pytest.raises(ValueError, match=r"metadata_phase_1\.csv: missing required column\(s\) \['image_size_x'\]"):
        dataset(reflacx)


def test_bad_discarded_flag_names_the_line(reflacx):
    table = pd.read_csv(metadata(reflacx))
    table["eye_tracking_data_discarded"] = table["eye_tracking_data_discarded"].astype(object)
    table.loc[2, "eye_tracking_data_discarded"] = "maybe"
    table.to_csv(metadata(reflacx), index=False)
    with pytest.raises(ValueError, match=r"metadata_phase_1\.csv, line 4: eye_tracking_data_discarded .*'maybe'"):
        dataset(reflacx)


def kept_reading(root):
    meta = read_metadata(root)
    return meta.loc[~meta["eye_tracking_data_discarded"], "id"].iloc[0]


def test_bad_fixation_row_names_file_and_line(reflacx):
    path = reflacx / "main_data" / kept_reading(reflacx) / "fixations.csv"
    table = pd.read_csv(path)
    table["x_position"] = table["x_position"].astype(object)
    table.loc[3, "x_position"] = "n/a"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"{path.parent.name}/fixations\.csv, line 5: column x_position is not a number"):
        dataset(reflacx)


@pytest.mark.parametrize("column, value, message", [
    ("timestamp_end_fixation", -1.0, "the fixation ends before it starts"),
    ("angular_resolution_y_pixels_per_degree", 0.0, "pixels per degree must be positive"),
    ("xmax_shown_from_image", -5.0, "the shown rectangle is empty"),
])
def test_impossible_fixation_values(reflacx, column, value, message):
    path = reflacx / "main_data" / kept_reading(reflacx) / "fixations.csv"
    table = pd.read_csv(path)
    table.loc[0, column] = value
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"fixations\.csv, line 2: {message}"):
        dataset(reflacx)


def test_missing_fixation_column_and_file(reflacx):
    path = reflacx / "main_data" / kept_reading(reflacx) / "fixations.csv"
    pd.read_csv(path).drop(columns="ymin_shown_from_image").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['ymin_shown_from_image'\]"):
        dataset(reflacx)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="fixations file not found"):
        dataset(reflacx)


def test_missing_image_and_wrong_size_name_the_reading(reflacx):
    table = pd.read_csv(metadata(reflacx))
    table.loc[0, "image_size_x"] += 7
    table.to_csv(metadata(reflacx), index=False)
    with pytest.raises(ValueError, match=rf"line 2 \(reading {table.loc[0, 'id']}\): image_size_y/x say"):
        dataset(reflacx)[0]
    next(reflacx.glob("files/**/*.dcm")).unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata_phase_\d\.csv, line \d+ \(reading P\d+R\d+\): image not found"):
        dataset(reflacx)


def test_missing_phase_file(reflacx):
    metadata(reflacx, 2).unlink()
    with pytest.raises(FileNotFoundError, match="metadata_phase_2.csv.*phases="):
        dataset(reflacx)
    assert len(dataset(reflacx, phases=(1, 3))) > 0


# -- the map convention --------------------------------------------------------------------
def shown_points(xy, weight, ppd, shown):
    n = len(xy)
    return ShownGazePoints(np.asarray(xy, float), np.asarray(weight, float), np.tile(ppd, (n, 1)).astype(float),
                           np.tile(shown, (n, 1)).astype(float))


@pytest.mark.parametrize("resize", ["pad_resize", "stride"])
def test_reflacx_convention_equals_fixed_sigma_when_it_must(resize):
    """One sigma for every point, the whole image shown: the REFLACX map is the fixed-sigma map
    with the same weights (equal durations: the count map)."""
    rng = np.random.default_rng(0)
    native = (300, 240)
    geometry = Geometry.fit(native, (64, 64), resize)
    xy = rng.uniform([5, 5], [235, 295], (12, 2))
    whole = (0, 0, native[1] - 1, native[0] - 1)
    for weight in (np.full(12, 0.3), rng.uniform(0.1, 0.6, 12)):
        reflacx, _ = gaze_map(shown_points(xy, weight, (9.0, 9.0), whole), geometry, None, convention="reflacx")
        fixed, _ = gaze_map(GazePoints(xy, weight), geometry, 9.0)
        np.testing.assert_allclose(reflacx, fixed, atol=1e-7)
    count, _ = gaze_map(GazePoints(xy, np.ones(12)), geometry, 9.0)
    np.testing.assert_allclose(gaze_map(shown_points(xy, np.full(12, 0.3), (9.0, 9.0), whole), geometry, None,
                                        convention="reflacx")[0], count, atol=1e-7)


def test_reflacx_convention_clips_to_the_shown_rectangle_and_uses_both_axes():
    native = (200, 200)
    geometry = Geometry.fit(native, (64, 64))
    xy = [[90.0, 100.0]]
    left_half, _ = gaze_map(shown_points(xy, [1.0], (20.0, 20.0), (0, 0, 99, 199)), geometry, None, convention="reflacx")
    columns = (np.arange(64) + 0.5) / geometry.scale - 0.5  # native column of each output pixel
    assert left_half[:, columns > 99.5].sum() == 0 and left_half[:, columns < 99].sum() == pytest.approx(1, abs=1e-5)
    wide, _ = gaze_map(shown_points(xy, [1.0], (30.0, 5.0), (0, 0, 199, 199)), geometry, None, convention="reflacx")
    spread = [(wide.sum(axis=a) > wide.sum(axis=a).max() / 2).sum() for a in (0, 1)]  # along x, along y
    assert spread[0] > 3 * spread[1]


def test_each_fixation_weighs_its_duration_whatever_its_sigma():
    """A zoomed-in fixation (fewer pixels per degree) is sharper, not lighter: far from the
    borders, two fixations of equal duration carry equal mass."""
    native = (400, 400)
    geometry = Geometry.fit(native, (128, 128))
    points = ShownGazePoints(np.array([[100.0, 200.0], [300.0, 200.0]]), np.array([0.4, 0.4]),
                             np.array([[8.0, 8.0], [20.0, 20.0]]), np.tile([0.0, 0.0, 399.0, 399.0], (2, 1)))
    heat, _ = gaze_map(points, geometry, None, convention="reflacx")
    assert heat[:, :64].sum() == pytest.approx(0.5, abs=1e-3) and heat[:, :64].max() > 3 * heat[:, 64:].max()


@pytest.mark.parametrize("convention", ["reflacx", "fixed_sigma"])
def test_off_image_fixations_dropped_or_cut(convention):
    """"drop" loses a fixation just past the border; "cut" (the REFLACX authors' heatmaps) keeps
    its Gaussian, cut to the image, so mass appears along that border."""
    native = (200, 200)
    geometry = Geometry.fit(native, (64, 64))
    xy = [[100.0, 100.0], [205.0, 50.0]]  # the second is 5 px right of the image
    points = (shown_points(xy, [1.0, 1.0], (10.0, 10.0), (0, 0, 199, 199)) if convention == "reflacx"
              else GazePoints(np.asarray(xy), np.ones(2)))
    sigma = None if convention == "reflacx" else 10.0
    dropped, n_dropped = gaze_map(points, geometry, sigma, convention=convention)
    cut, n_cut = gaze_map(points, geometry, sigma, convention=convention, off_image="cut")
    alone, _ = gaze_map(type(points)(*(np.asarray(getattr(points, f))[:1] for f in points.__dataclass_fields__)),
                        geometry, sigma, convention=convention)
    assert (n_dropped, n_cut) == (1, 0)
    np.testing.assert_allclose(dropped, alone, atol=1e-7)
    edge = cut[8:24, -4:].sum()  # rows around y = 50, the right-most columns
    assert edge > 0.1 and dropped[8:24, -4:].sum() < 1e-3
    assert cut.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="off_image must be one of"):
        gaze_map(points, geometry, sigma, convention=convention, off_image="clip")


def test_off_image_cut_matches_the_authors_construction():
    """Built the way the REFLACX authors' generate_heatmaps.py describes it (each fixation a
    normal density evaluated on the native pixels of its shown rectangle, times its duration,
    summed, normalised) and then resampled like the image: the same map as ``off_image="cut"``."""
    native = (128, 128)
    geometry = Geometry.fit(native, (64, 64), "stride")  # output pixel j is native pixel 2 j
    assert geometry.stride == 2
    xy = np.array([[30.0, 40.0], [131.0, 70.0], [60.0, -4.0]])  # two off the image
    duration = np.array([0.3, 0.5, 0.2])
    ppd = np.array([[9.0, 7.0], [6.0, 6.0], [8.0, 8.0]])
    shown = np.array([[0, 0, 127, 127], [50, 30, 127, 127], [0, 0, 127, 127]], float)
    rows, cols = np.mgrid[0:128, 0:128].astype(float)
    reference = np.zeros(native)
    for (x, y), d, (sx, sy), (x0, y0, x1, y1) in zip(xy, duration, ppd, shown):
        density = np.exp(-0.5 * (((cols - x) / sx) ** 2 + ((rows - y) / sy) ** 2)) / (2 * np.pi * sx * sy)
        density[(cols < x0) | (cols > x1) | (rows < y0) | (rows > y1)] = 0
        reference += d * density
    reference = reference[::2, ::2] / reference[::2, ::2].sum()
    heat, dropped = gaze_map(ShownGazePoints(xy, duration, ppd, shown), geometry, None, convention="reflacx",
                             off_image="cut")
    assert dropped == 0
    np.testing.assert_allclose(heat, reference, atol=1e-6)


def test_reflacx_convention_needs_its_points():
    geometry = Geometry.fit((100, 100), (64, 64))
    with pytest.raises(TypeError, match="ShownGazePoints"):
        gaze_map(GazePoints(np.array([[50.0, 50.0]]), np.ones(1)), geometry, None, convention="reflacx")
    with pytest.raises(ValueError, match="convention must be one of"):
        gaze_map(GazePoints(np.array([[50.0, 50.0]]), np.ones(1)), geometry, 5.0, convention="egd")


# -- the ceiling, exclusion, label mapping ------------------------------------------------
def test_identical_readers_reach_the_top_of_the_ceiling(reflacx):
    ds = dataset(reflacx)
    dicom_id = multi_reader_image(ds)
    readings = ds.meta.loc[ds.readings_by_image()[dicom_id], "id"].tolist()
    source = reflacx / "main_data" / readings[0] / "fixations.csv"
    for reading in readings[1:]:
        shutil.copyfile(source, reflacx / "main_data" / reading / "fixations.csv")
    table = external.ceiling_table(dataset(reflacx))
    same = table[table["dicom_id"] == dicom_id]
    assert len(same) == len(readings) and (same["n_readings"] == len(readings)).all()
    np.testing.assert_allclose(same["cc"], 1.0, atol=1e-5)
    np.testing.assert_allclose(same["sim"], 1.0, atol=1e-4)
    assert (same["kld"].abs() < 1e-4).all()
    others = table[table["dicom_id"] != dicom_id]
    assert len(others) and (others["cc"] < 0.99).all()
    summary = external.summary_table(table, n_boot=50)
    row = summary[(summary["metric"] == "cc")].iloc[0]
    assert row["n_images"] == table["dicom_id"].nunique() and row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_ceiling_needs_images_with_several_readings(reflacx_root):
    with pytest.raises(ValueError, match="no image has 6 or more readings"):
        external.ceiling_table(dataset(reflacx_root), min_readers=6)


def test_egd_training_images_are_excluded_and_counted(reflacx_root):
    ds = dataset(reflacx_root)
    dicom_id = multi_reader_image(ds)
    n = len(ds.readings_by_image()[dicom_id])
    kept = dataset(reflacx_root, exclude_dicom_ids=[dicom_id, "not-in-reflacx"])
    assert dicom_id not in set(kept.meta["dicom_id"]) and len(kept) == len(ds) - n
    assert (kept.excluded, kept.excluded_images) == (n, 1)
    assert kept.summary()["excluded_readings"] == n


def test_label_mapping_is_explicit():
    meta = pd.DataFrame({"Enlarged cardiac silhouette": [5, 0, 0, 0, 5, 3], "Pulmonary edema": [0, 0, 0, 0, 0, 0],
                         "Consolidation": [0, 4, 0, 0, 5, 0], "Support devices": [0, 0, 5, 0, 0, 0],
                         "Atelectasis": [0, 0, 0, 3, 0, 0]})
    assert mapped_labels(meta, "certainty").tolist() == [1, 2, 0, -1, -1, -1]
    assert mapped_labels(meta, None).tolist() == [-1] * 6
    with pytest.raises(ValueError, match="label_mapping must be one of"):
        mapped_labels(meta, "guess")


def test_cli_writes_the_reflacx_format(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path / "r"), "--format", "reflacx", "--n-images", "4"]) == 0
    assert "REFLACX-format" in capsys.readouterr().out
    assert len(dataset(tmp_path / "r")) >= 4


def test_gap_to_ceiling_pairs_readings():
    rng = np.random.default_rng(0)
    ceiling = pd.DataFrame({"dicom_id": np.repeat(["a", "b", "c"], 2), "reading_index": [0, 1] * 3,
                            "reading_id": [f"r{i}" for i in range(6)], "n_readings": 2, "map": external.CEILING,
                            **{k: rng.uniform(0.2, 0.8, 6) for k in external.SALIENCY_KEYS}})
    model = ceiling.assign(map=external.MODEL, cc=ceiling["cc"] + 0.1).sample(frac=1, random_state=0)  # other order
    gap = external.gap_to_ceiling(pd.concat([model, ceiling]), n_boot=50).set_index("metric")
    assert gap.loc["cc", "model - ceiling"] == pytest.approx(0.1)
    assert gap.loc["kld", "model - ceiling"] == pytest.approx(0.0) and gap.loc["kld", "ci_high"] == pytest.approx(0.0)
    assert (gap["n_images"] == 3).all()


def test_classification_only_on_mapped_readings():
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    labels = [0, 1, 2, -1, -1, 2]
    scores = external.classification({"probs": probs}, labels, n_boot=20)
    assert scores["n_readings"] == 4 and scores["accuracy"] == 1.0
    assert external.classification({"probs": probs}, [-1] * 6) is None


def test_a_real_reflacx_folder_is_read_and_never_drawn_to_figures(reflacx_root, tmp_path, capsys):
    from cxrlib.config import make_config

    config = make_config("external", "demo", run_dir=str(tmp_path), reflacx_root=str(reflacx_root),
                         reflacx_image_root=str(reflacx_root), image_size=(64, 64))
    data = external.reflacx_data(config, exclude_dicom_ids=[])
    assert data.reflacx_root == reflacx_root and len(data) > 0
    assert external.save_figure(object(), "reflacx_readers.png", config) is None
    assert "must not enter the repository" in capsys.readouterr().out
    with pytest.raises(ValueError, match="reflacx_image_root"):
        external.ensure_reflacx(make_config("external", "demo", run_dir=str(tmp_path), reflacx_root=str(reflacx_root)))
    with pytest.raises(FileNotFoundError, match="no main_data"):
        external.ensure_reflacx(make_config("external", "demo", run_dir=str(tmp_path), reflacx_root=str(tmp_path)))
    with pytest.raises(ValueError, match="label_mapping"):
        make_config("external", "demo", label_mapping="guess")
