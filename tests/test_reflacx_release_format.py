"""REFLACX as released, written out by hand here (not by cxrlib.synthetic): the loader, reading
pairing, discarded readings, a missing image and the inter-reader ceiling.

The layout follows the data set's public builder (ricbl/eyetracking,
post_processing_and_dataset_generation/create_main_table.py): reading ids
``P{phase}{trial:02}R{random:06}`` in phases 1-2 (the two digits are the image's trial, shared
by its readings, not a radiologist) and ``P300R{random:06}`` in phase 3; CRLF line ends; no
column naming the radiologist; a discarded reading keeps its metadata row and a folder with only
chest_bounding_box.csv and anomaly_location_ellipses.csv. Images are MIMIC-CXR-JPG files while
the metadata names the PhysioNet .dcm path, as when REFLACX is used with MIMIC-CXR-JPG.
"""

import shutil

import numpy as np
import pytest
from PIL import Image

from cxrlib.data.reflacx import REFLACXDataset
from cxrlib.evaluation import external

LABELS = ["Atelectasis", "Consolidation", "Enlarged cardiac silhouette", "Pleural effusion", "Pulmonary edema",
          "Quality issue", "Support devices"]
META_HEADER = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x",
               "image_size_y", *LABELS]
FIXATION_HEADER = ["timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
                   "pupil_area_normalized", "angular_resolution_x_pixels_per_degree",
                   "angular_resolution_y_pixels_per_degree", "window_width", "window_level", "xmin_shown_from_image",
                   "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image",
                   "xmin_in_screen_coordinates", "ymin_in_screen_coordinates", "xmax_in_screen_coordinates",
                   "ymax_in_screen_coordinates"]
H, W = 96, 80  # native image size: image_size_y, image_size_x
# image -> (subject, study); dicom ids in MIMIC's form
IMAGES = {"a": ("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"),
          "b": ("10000764", "57375967", "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4"),
          "c": ("10000898", "50771383", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"),
          "d": ("10000935", "51178377", "0c4eb1e1-b801903c-bcebe8a4-3da9cd3c-3b94a27c")}
# phase -> rows (reading id, image, discarded, fixations as (x, y, duration) or None), in the
# order the builder sorts them (by id in phases 1-2)
READINGS = {
    1: [("P105R000123", "a", False, [(30, 40, 0.4), (50, 60, 0.3), (40, 20, 0.2)]),
        ("P105R481516", "a", False, [(35, 45, 0.5), (20, 70, 0.3), (85, 50, 0.2)]),  # one fixation off the image
        ("P105R902211", "a", True, None),
        ("P106R333333", "b", False, [(20, 20, 0.3), (60, 30, 0.3)]),
        ("P106R444444", "b", False, [(60, 70, 0.4), (25, 80, 0.3), (40, 50, 0.2)])],
    2: [("P201R010101", "d", False, [(40, 48, 0.6), (30, 30, 0.2)]),
        ("P201R020202", "d", False, [(42, 50, 0.5), (55, 70, 0.4)])],
    3: [("P300R777777", "c", False, [(40, 40, 0.5), (45, 60, 0.5)])],
}


def write_crlf(path, header, rows):
    text = "".join(",".join(str(v) for v in row) + "\r\n" for row in [header, *rows])
    path.write_bytes(text.encode())


def fixation_rows(fixations):
    rows, t = [], 0.0
    for x, y, duration in fixations:
        rows.append([round(t, 3), round(t + duration, 3), x, y, 1.012, 12, 12, 4096.0, 2048.0,
                     0, 0, W, H, 672, 0, 1248, 1080])
        t += duration + 0.05
    return rows


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "reflacx"
    main = root / "main_data"
    main.mkdir(parents=True)
    for key, (subject, study, dicom_id) in IMAGES.items():
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True)
        gradient = np.add.outer(np.linspace(0, 150, H), np.linspace(0, 90, W)) + 10 * "abcd".index(key)
        Image.fromarray(gradient.astype(np.uint8)).save(folder / f"{dicom_id}.jpg")
    for phase, readings in READINGS.items():
        rows = []
        for reading_id, key, discarded, fixations in readings:
            subject, study, dicom_id = IMAGES[key]
            image = f"physionet.org/files/mimic-cxr/2.0.0/files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.dcm"
            rows.append([reading_id, "train", discarded, image, dicom_id, subject, W, H, 0, 4, 0, 0, 3, False, True])
            folder = main / reading_id
            folder.mkdir()
            write_crlf(folder / "chest_bounding_box.csv", ["xmin", "ymin", "xmax", "ymax"], [[5, 4, 75, 90]])
            write_crlf(folder / "anomaly_location_ellipses.csv", ["xmin", "ymin", "xmax", "ymax", "certainty", *LABELS[:5]],
                       [[10, 20, 40, 60, 4, False, True, False, False, False]])
            if fixations is not None:
                write_crlf(folder / "fixations.csv", FIXATION_HEADER, fixation_rows(fixations))
        write_crlf(main / f"metadata_phase_{phase}.csv", META_HEADER, rows)
    return root


def dataset(root, **kw):
    return REFLACXDataset(root, root, image_size=(64, 64), **kw)


def test_readings_are_paired_per_image_and_discarded_ones_skipped(release):
    ds = dataset(release)
    assert len(ds) == 7 and ds.discarded == 1 and "P105R902211" not in set(ds.meta["id"])
    by_image = {ds.meta.loc[idx[0], "dicom_id"]: [ds.meta.loc[i, "id"] for i in idx]
                for idx in ds.readings_by_image().values()}
    assert by_image == {IMAGES["a"][2]: ["P105R000123", "P105R481516"], IMAGES["b"][2]: ["P106R333333", "P106R444444"],
                        IMAGES["d"][2]: ["P201R010101", "P201R020202"], IMAGES["c"][2]: ["P300R777777"]}
    sample = ds[1]
    assert (sample["reading_id"], sample["reading_index"], sample["dicom_id"]) == ("P105R481516", 1, IMAGES["a"][2])
    assert sample["gaze_dropped"] == 1  # the fixation at x = 85 lies off the 80-px-wide image
    assert ds.summary() == {"readings": 7, "images": 4, "images_with_several_readings": 3,
                            "most_readings_of_an_image": 2, "images_in_several_phases": 0,
                            "discarded_readings": 1, "excluded_readings": 0, "excluded_images": 0}


def test_the_off_image_fixation_is_kept_under_the_authors_convention(release):
    drop, cut = dataset(release)[1], dataset(release, off_image="cut")[1]
    assert cut["gaze_dropped"] == 0 and not np.allclose(drop["gaze_map"], cut["gaze_map"])
    assert len(cut["fixations"]) == len(drop["fixations"]) == 2  # NSS and AUC-Judd use the on-image fixations


def test_the_ceiling_is_computed_on_images_read_more_than_once(release):
    ds = dataset(release)
    table = external.ceiling_table(ds)
    assert sorted(table["reading_id"]) == ["P105R000123", "P105R481516", "P106R333333", "P106R444444",
                                           "P201R010101", "P201R020202"]
    assert (table["n_readings"] == 2).all()
    # With two readings each is the other's prediction: CC is the maps' correlation, both ways.
    for dicom_id, part in table.groupby("dicom_id"):
        first, second = (ds[i]["gaze_map"].numpy().ravel() for i in ds.readings_by_image()[dicom_id])
        np.testing.assert_allclose(part["cc"], np.corrcoef(first, second)[0, 1], atol=1e-5)
    summary = external.summary_table(table, n_boot=50)
    assert set(summary["n_images"]) == {3}


def test_a_missing_image_names_file_line_and_reading(release):
    subject, study, dicom_id = IMAGES["b"]
    (release / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata_phase_1\.csv, line 5 \(reading P106R333333\): image not found"):
        dataset(release)


def test_a_kept_reading_without_fixations_names_file_line_and_reading(release):
    (release / "main_data" / "P201R020202" / "fixations.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"metadata_phase_2\.csv, line 3 \(reading P201R020202\): fixations file"):
        dataset(release)


@pytest.mark.parametrize("phase, bad_id", [(1, "P1R000123"), (1, "P300R000123"), (3, "P301R777777")])
def test_an_id_outside_the_release_scheme_names_the_line(release, phase, bad_id):
    path = release / "main_data" / f"metadata_phase_{phase}.csv"
    good = READINGS[phase][0][0]
    path.write_bytes(path.read_bytes().replace(good.encode(), bad_id.encode()))
    shutil.move(release / "main_data" / good, release / "main_data" / bad_id)
    with pytest.raises(ValueError, match=rf"metadata_phase_{phase}\.csv, line 2: reading id '{bad_id}' is not a "
                                         rf"phase-{phase} REFLACX id"):
        dataset(release)
