"""Issue 26, the second reliability sweep: each case ends in a clear error naming the file, row
or parameter, or in a documented behaviour; nothing a command did not create is deleted.

Small CPU cases on synthetic data (a few 6-image sets). The stage-folder cases of that issue are
in ``test_reliability_run.py``.
"""

import errno
import json
import os

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from cxrlib import cli, diskspace
from cxrlib.config import make_config
from cxrlib.config.validation import ParameterError, check_image_size
from cxrlib.data import EGDDataset
from cxrlib.data.cache import DigestStore, content_fingerprint, sample_key
from cxrlib.data.dicom import read_dicom
from cxrlib.data.egd import read_master_sheet
from cxrlib.data.gaze import load_gaze_csv
from cxrlib.run import notebook_value, notebooks_dir, run_pipeline
from cxrlib.synthetic import egd as synthetic
from cxrlib.synthetic.egd import MANIFEST, make_egd_like
from cxrlib.training.checkpoints import CheckpointError, atomic_save, load_checkpoint


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    return make_egd_like(tmp_path_factory.mktemp("egd") / "data", n_images=6, seed=4, progress=False)


def copy_set(egd, tmp_path):
    import shutil

    return shutil.copytree(egd, tmp_path / "set")


def first_dicom(root):
    return root / pd.read_csv(root / "master_sheet.csv").path[0]


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[0]


# -- data loss: synth --overwrite ------------------------------------------------------------
def test_synth_overwrite_keeps_files_it_did_not_write_even_under_files(tmp_path, capsys):
    out = tmp_path / "set"
    assert cli.main(["synth", str(out), "--n-images", "3", "--seed", "1"]) == 0
    old_images = set(pd.read_csv(out / "master_sheet.csv").path)
    mine = out / "files" / "p99" / "my_notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    assert cli.main(["synth", str(out), "--n-images", "3", "--seed", "2", "--overwrite"]) == 0
    assert mine.read_text() == "mine"
    assert not any((out / p).exists() for p in old_images)  # the old set's images are gone
    new = json.loads((out / MANIFEST).read_text())["files"]
    assert "files/p99/my_notes.txt" not in new and all((out / p).is_file() for p in new)


def test_synth_overwrite_refuses_a_data_set_it_did_not_write(tmp_path, capsys):
    real = tmp_path / "egd-cxr"
    image = real / "files" / "p10" / "p10000001" / "s50000001" / "abc.dcm"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"not ours")
    (real / "master_sheet.csv").write_text("dicom_id,path\nabc,files/p10/p10000001/s50000001/abc.dcm\n")
    assert cli.main(["synth", str(real), "--n-images", "3", "--overwrite"]) == 2
    message = last_error(capsys)
    assert str(real) in message and "did not write" in message
    assert image.read_bytes() == b"not ours" and sorted(p.name for p in real.iterdir()) == ["files", "master_sheet.csv"]


def test_synth_overwrite_replaces_a_set_written_before_the_manifest(tmp_path):
    out = make_egd_like(tmp_path / "set", n_images=3, seed=1, progress=False)
    (out / MANIFEST).unlink()  # as an older cxrlib wrote it: recognised by its synthetic_ctr column
    make_egd_like(out, n_images=3, seed=2, progress=False, overwrite=True)
    assert (out / MANIFEST).is_file()


def test_synth_help_says_what_overwrite_replaces():
    parser = cli.build_parser()
    synth = parser._subparsers._group_actions[0].choices["synth"]
    text = " ".join(synth.format_help().split())
    assert "only the files listed in its .cxrlib-synthetic.json are removed" in text
    assert "refused" in text


# -- silent wrong results --------------------------------------------------------------------
def test_empty_patient_id_is_reported_by_file_and_line(egd, tmp_path):
    root = copy_set(egd, tmp_path)
    sheet = pd.read_csv(root / "master_sheet.csv", dtype=str)
    sheet.loc[[1, 3], "patient_id"] = ""
    sheet.to_csv(root / "master_sheet.csv", index=False)
    with pytest.raises(ValueError, match=r"master_sheet.csv, line 3: empty 'patient_id' \(2 row\(s\) in all, lines 3, 5\)"):
        read_master_sheet(root / "master_sheet.csv")


def test_decoder_warnings_name_the_file(egd, monkeypatch):
    path = first_dicom(egd)
    original = pydicom.dataset.Dataset.pixel_array

    def warning_decoder(self):
        import warnings

        warnings.warn("corrupt tile-part data")
        return original.fget(self)

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(warning_decoder))
    with pytest.warns(UserWarning, match=f"{path}: while decoding the pixel data: corrupt tile-part data"):
        read_dicom(path)


def test_jpeg2000_corruption_inside_the_coded_data_is_not_detected_as_the_readme_says(tmp_path):
    """The README states this limit; if a decoder ever starts to report it, this test says so."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder installed")
    root = make_egd_like(tmp_path / "j2k", n_images=1, seed=1, progress=False, transfer_syntax="jpeg2000")
    path = first_dicom(root)
    clean = read_dicom(path)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 20_000] = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    path.write_bytes(raw)
    damaged = read_dicom(path)  # no error
    assert (np.abs(damaged - clean) > 0.05).mean() > 0  # ... yet pixels changed


def test_cache_key_sees_a_change_outside_the_sampled_blocks_with_same_size_and_mtime(egd, tmp_path):
    path = first_dicom(copy_set(egd, tmp_path))
    store = DigestStore(tmp_path / "cache" / "sources")
    stat = path.stat()
    assert stat.st_size > 200 * 1024  # so that byte 70 KiB lies outside the first, middle and last 64 KiB
    before, fingerprint = sample_key(path, {}, digests=store), content_fingerprint(path)
    assert sample_key(path, {}, digests=DigestStore(tmp_path / "cache" / "sources")) == before
    raw = bytearray(path.read_bytes())
    raw[70 * 1024] ^= 0xFF
    path.write_bytes(raw)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert content_fingerprint(path) == fingerprint  # the old key's sample would have missed it
    fresh = DigestStore(tmp_path / "cache" / "sources")
    assert sample_key(path, {}, digests=fresh) != before and fresh.hashed == 1


def test_stored_digest_is_reused_while_the_file_is_unchanged(egd, tmp_path):
    store = DigestStore(tmp_path / "sources")
    sample_key(first_dicom(egd), {}, digests=store)
    again = DigestStore(tmp_path / "sources")
    sample_key(first_dicom(egd), {}, digests=again)
    assert (store.hashed, again.hashed) == (1, 0)


def test_blank_image_is_reported_naming_the_file(egd, tmp_path):
    path = first_dicom(copy_set(egd, tmp_path))
    ds = pydicom.dcmread(path)
    ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
    ds.save_as(path)
    with pytest.raises(ValueError, match=f"{path}: every pixel has the value 0: a blank image"):
        read_dicom(path)


def test_image_size_with_fractions_is_refused():
    with pytest.raises(ValueError, match="image_size must be two whole numbers of pixels, got \\(64.9, 64.2\\)"):
        check_image_size((64.9, 64.2))
    with pytest.raises(ParameterError, match="image_size"):
        make_config("stage1a", "smoke", image_size=(64.9, 64.2))


def test_profile_parameter_contradicting_profile_is_refused(capsys):
    assert cli.main(["run", "--profile", "smoke", "-p", "profile", "demo"]) == 2
    assert "parameter 'profile' is 'demo' but --profile" in last_error(capsys)
    assert cli.main(["train", "--stage", "stage1a", "--profile", "smoke", "-p", "profile", "paper"]) == 2
    with pytest.raises(ParameterError, match="profile"):
        run_pipeline("smoke", params={"profile": "demo"})


def test_bench_with_zero_steps_is_refused(capsys):
    assert cli.main(["bench", "--models", "densenet", "--steps", "0"]) == 2
    assert "--steps must be an integer >= 1, got 0" in last_error(capsys)


# -- one line per user error -----------------------------------------------------------------
def test_disk_full_during_synthetic_writing_is_one_line_with_the_space_needed(tmp_path, monkeypatch):
    def full(path, img, info):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(synthetic, "write_dicom", full)
    with pytest.raises(diskspace.DiskFullError) as err:
        make_egd_like(tmp_path / "set", n_images=3, progress=False)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"disk full while writing the synthetic data set into {tmp_path / 'set'}")
    assert "MB" in text and "free on that disk" in text


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_disk_full_during_a_checkpoint_write_is_named_as_disk_full(tmp_path, monkeypatch, failure):
    def save(obj, path):
        raise failure

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1000)
    target = tmp_path / "stage1a" / "best.pt"
    with pytest.raises(diskspace.DiskFullError, match=f"disk full while writing the checkpoint {target}: it needs "
                                                      f"about 0.4 MB, 0.0 MB free"):
        atomic_save({"model": {"w": torch.zeros(100_000)}}, target)
    assert not list(target.parent.glob(".*tmp"))


def test_tuple_parameter_reaches_the_notebook_as_the_config_expects():
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    notebook = load_notebook_node(str(sorted(notebooks_dir().glob("02_*.ipynb"))[0]))
    injected = parameterize_notebook(notebook, {"image_size": notebook_value((96, 96))})
    cell = next(c for c in injected.cells if "injected-parameters" in c.metadata.get("tags", []))
    namespace = {}
    exec(cell.source, namespace)  # noqa: S102 - papermill's generated assignments
    assert namespace["image_size"] == [96, 96]
    assert make_config("stage1a", "smoke", image_size=namespace["image_size"]).image_size == (96, 96)


@pytest.mark.parametrize("column", ["path", "dicom_id"])
def test_empty_path_or_dicom_id_cell_names_file_and_line(egd, tmp_path, column):
    root = copy_set(egd, tmp_path)
    sheet = pd.read_csv(root / "master_sheet.csv", dtype=str)
    sheet.loc[4, column] = ""
    sheet.to_csv(root / "master_sheet.csv", index=False)
    with pytest.raises(ValueError, match=f"master_sheet.csv, line 6: empty '{column}'"):
        read_master_sheet(root / "master_sheet.csv")


def test_empty_dicom_id_in_the_gaze_file_names_file_and_line(egd, tmp_path):
    root = copy_set(egd, tmp_path)
    gaze = pd.read_csv(root / "fixations.csv", dtype={"DICOM_ID": str})
    gaze.loc[2, "DICOM_ID"] = None
    gaze.to_csv(root / "fixations.csv", index=False)
    with pytest.raises(ValueError, match="fixations.csv, line 4: empty 'DICOM_ID'"):
        load_gaze_csv(root / "fixations.csv")


def test_semicolon_separated_sheet_is_named_as_such(egd, tmp_path):
    root = copy_set(egd, tmp_path)
    pd.read_csv(root / "master_sheet.csv").to_csv(root / "master_sheet.csv", index=False, sep=";")
    with pytest.raises(ValueError, match="master_sheet.csv: the columns are separated by ';', not commas"):
        read_master_sheet(root / "master_sheet.csv")


def test_latin1_byte_names_file_and_line(egd, tmp_path):
    root = copy_set(egd, tmp_path)
    lines = (root / "master_sheet.csv").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"with", "wïth".encode("latin-1"), 1)
    assert "ï".encode("latin-1") in lines[3]
    (root / "master_sheet.csv").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="master_sheet.csv, line 4: byte 0xef is not UTF-8"):
        read_master_sheet(root / "master_sheet.csv")


def test_invalid_transfer_syntax_names_the_file(egd, tmp_path):
    path = first_dicom(copy_set(egd, tmp_path))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(path)
    with pytest.raises(ValueError, match=f"{path}: the file meta's TransferSyntaxUID '1.2.3.4.5' is not a DICOM"):
        read_dicom(path)


def test_zero_padded_numeric_ids_stay_text_in_the_gaze_files(egd, tmp_path):
    root = copy_set(egd, tmp_path)
    sheet = pd.read_csv(root / "master_sheet.csv", dtype=str)
    renamed = {old: f"{i:07d}" for i, old in enumerate(sheet.dicom_id)}  # "0000000", "0000001", ...
    sheet["dicom_id"] = sheet.dicom_id.map(renamed)
    sheet.to_csv(root / "master_sheet.csv", index=False)
    for name in ("eye_gaze.csv", "fixations.csv"):
        gaze = pd.read_csv(root / name, dtype={"DICOM_ID": str})
        gaze["DICOM_ID"] = gaze.DICOM_ID.map(renamed)
        gaze.to_csv(root / name, index=False)
    ds = EGDDataset(root, image_size=(64, 64))
    assert sorted(ds.gaze) == sorted(renamed.values()) and ds[0]["dicom_id"] in ds.gaze


def test_unknown_device_names_the_parameter():
    with pytest.raises(ParameterError, match="parameter 'device' must be .* got 'banana'"):
        make_config("stage1a", "smoke", device="banana")


def test_pickled_payload_is_called_a_pickled_payload_not_truncation(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "best.pt"
    torch.save({"model": {}, "x": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "pickled payload" in text and "unsupported GLOBAL posix.system" in text
    assert "cannot read this checkpoint" not in text


def test_empty_image_root_is_caught_before_any_notebook_with_counts_over_all_splits(egd, tmp_path):
    empty = tmp_path / "images"
    empty.mkdir()
    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"6 of the 6 image files of .*master_sheet.csv \(all splits\) not found "
                                                f"under image_root {empty}"):
        run_pipeline("smoke", egd_root=str(egd), image_root=str(empty), run_dir=str(run_dir))
    assert not run_dir.exists()


def test_missing_explicit_init_from_is_reported_before_the_data_preparation(tmp_path, monkeypatch, capsys):
    from cxrlib.training import stages

    def prepare(*args, **kwargs):
        raise AssertionError("the data were prepared before init_from was checked")

    monkeypatch.setattr(stages, "prepare_data", prepare)
    missing = tmp_path / "nowhere" / "best.pt"
    assert cli.main(["train", "--stage", "stage2", "--profile", "smoke", "-p", "init_from", str(missing),
                     "-p", "run_dir", str(tmp_path / "run")]) == 1
    assert f"init_from={str(missing)!r}: no checkpoint at {missing}" in last_error(capsys)
    with pytest.raises(FileNotFoundError, match="parameter 'init_from'"):
        run_pipeline("smoke", run_dir=str(tmp_path / "run2"), params={"init_from": str(missing)})


def test_synth_reflacx_overwrite_replaces_a_set_written_before_the_manifest_but_not_real_data(tmp_path):
    from cxrlib.synthetic.reflacx import make_reflacx_like

    out = make_reflacx_like(tmp_path / "reflacx", n_images=4, seed=1, progress=False)
    (out / MANIFEST).unlink()  # an older cxrlib's set: recognised by its SYNTHETIC^ patient names
    (out / "synthetic.json").write_text("{}")  # what notebook 08 keeps beside it
    make_reflacx_like(out, n_images=4, seed=2, progress=False, overwrite=True)
    assert (out / "synthetic.json").read_text() == "{}" and (out / MANIFEST).is_file()
    (out / MANIFEST).unlink()
    dicom = next((out / "files").rglob("*.dcm"))
    ds = pydicom.dcmread(dicom)
    ds.PatientName = "DOE^JANE"  # one image that is not ours: the folder is refused
    ds.save_as(dicom)
    with pytest.raises(FileExistsError, match="did not write"):
        make_reflacx_like(out, n_images=4, seed=3, progress=False, overwrite=True)
    assert dicom.is_file()
