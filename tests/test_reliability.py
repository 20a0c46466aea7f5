"""Issue 16, part 1: bad input and faults end in a clear error or a detected repair.

Configs, the master sheet, splits, DICOM and cache errors, init_from, the checkpoint checksum
and the one-writer locks. Training cases (resume provenance, empty loops, orphan files,
repeatable runs) are in ``test_reliability_run.py``.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pandas as pd
import pydicom
import pytest
import torch
from torch import nn

from cxrlib import cli, runfolder
from cxrlib.training.checkpoints import CheckpointError, atomic_save, load_checkpoint, load_init, resolve_init
from cxrlib.config import make_config
from cxrlib.data import EGDDataset
from cxrlib.data.dicom import read_dicom
from cxrlib.data.egd import read_master_sheet
from cxrlib.data.splits import load_or_make_splits
from cxrlib.run import run_pipeline
from cxrlib.synthetic.egd import make_egd_like
from cxrlib.config.validation import ParameterError

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    return make_egd_like(tmp_path_factory.mktemp("egd") / "data", n_images=6, seed=4, progress=False)


def hold_lock(lock_path):
    """A live process holding ``lock_path`` until killed."""
    code = textwrap.dedent(f"""
        import time
        from cxrlib import runfolder
        runfolder.acquire({str(lock_path)!r}, what="test")
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


# -- 1. one writer per run folder ------------------------------------------------------------
def test_second_writer_refused_naming_holder_then_stale_lock_taken_over(tmp_path):
    lock = tmp_path / "stage2" / ".lock"
    holder = hold_lock(lock)
    try:
        with pytest.raises(runfolder.RunFolderBusy) as err:
            with runfolder.stage_lock(tmp_path / "stage2"):
                pass
        text = str(err.value)
        assert f"pid {holder.pid}" in text and os.uname().nodename in text and str(lock) in text
        assert "delete" in text and "started" in text
    finally:
        holder.send_signal(signal.SIGKILL)  # as a killed kernel would leave it
        holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left behind
    with pytest.warns(UserWarning, match=f"stale lock .*pid {holder.pid}"):
        with runfolder.stage_lock(tmp_path / "stage2"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_cxrlib_run_refused_while_the_folder_is_in_use(tmp_path):
    holder = hold_lock(tmp_path / "run" / ".lock")
    try:
        with pytest.raises(runfolder.RunFolderBusy, match=f"pid {holder.pid}"):
            run_pipeline("smoke", run_dir=str(tmp_path / "run"), only=["01"], progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "run" / "notebooks").exists()  # no kernel started


def test_concurrent_split_creation_and_unique_temporary_names(tmp_path):
    sheet = read_master_sheet(make_egd_like(tmp_path / "egd", n_images=20, seed=1, progress=False) / "master_sheet.csv")
    sheet.to_pickle(tmp_path / "sheet.pkl")
    code = textwrap.dedent(f"""
        import pandas as pd
        from cxrlib.data.splits import load_or_make_splits
        sheet = pd.read_pickle({str(tmp_path / 'sheet.pkl')!r})
        for i in range(5):
            out = load_or_make_splits({str(tmp_path / 'run')!r} + f"/{{i}}/splits.csv", sheet, seed=0)
        print(out["split"].tolist())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-500:] for r in results]
    assert len({r[0] for r in results}) == 1
    assert not list((tmp_path / "run").rglob("*.tmp")) and not list((tmp_path / "run").rglob("*.lock"))
    assert runfolder.unique_tmp(tmp_path / "x") != runfolder.unique_tmp(tmp_path / "x")


# -- 2. empty split ------------------------------------------------------------------------
def test_empty_split_is_an_error_naming_the_split(tmp_path):
    sheet = pd.DataFrame({"dicom_id": ["a", "b"], "patient_id": [1, 2], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"splits.csv: the val and test split\(s\) would hold no image"):
        load_or_make_splits(tmp_path / "splits.csv", sheet)
    assert not (tmp_path / "splits.csv").exists()


# -- 4 and 10. checkpoints: checksum, truncated, garbage, wrong shapes ------------------------
class Tiny(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.body = nn.Linear(width, width)

    def parts(self):
        return {"body": self.body}


def _saved(tmp_path, width=64):
    path = tmp_path / "stage2" / "best.pt"
    atomic_save({"model": Tiny(width).state_dict(), "config": {"stage": "stage2", "base_width": width}}, path)
    return path


def test_checksum_catches_flipped_bytes(tmp_path):
    path = _saved(tmp_path)
    assert set(load_checkpoint(path)) == {"model", "config"}  # verified, the record removed
    blob = bytearray(path.read_bytes())
    start = blob.index(b"data/0") + 200  # inside the first tensor's bytes
    blob[start:start + 4096] = bytes(b ^ 0xFF for b in blob[start:start + 4096])
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "checksum mismatch" in str(err.value)
    assert "rerun the stage" in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint_names_the_file_and_what_to_do(tmp_path, damage):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(3000), "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "truncated" in text and "rerun the stage" in text
    assert "weights_only" not in text


def test_checkpoint_of_another_width_names_the_file(tmp_path):
    path = _saved(tmp_path, width=8)
    with pytest.raises(CheckpointError, match=rf"{path}: body.weight has shape \(8, 8\).*base_width=8"):
        load_init(Tiny(16), path)


# -- 5. duplicate ids that differ by whitespace ----------------------------------------------
def test_duplicate_dicom_id_with_trailing_space(tmp_path):
    rows = "dicom_id,path,patient_id,Normal,CHF,pneumonia\nabc,x.dcm,1,1,0,0\ndef,y.dcm,2,0,1,0\nabc ,x.dcm,1,0,1,0\n"
    (tmp_path / "master_sheet.csv").write_text(rows)
    with pytest.raises(ValueError, match=r"master_sheet.csv, lines 2, 4: dicom_id 'abc' appears 2 times"):
        read_master_sheet(tmp_path / "master_sheet.csv")


# -- 6 and 9. every numeric parameter in range -----------------------------------------------
@pytest.mark.parametrize("stage, name, value", [
    ("stage2", "max_steps_per_epoch", 0), ("stage2", "max_steps_per_epoch", -3), ("stage2", "sigma_frac", -0.5),
    ("stage2", "sigma_frac", 0.0), ("stage2", "sigma", 0.0), ("stage2", "early_stopping", -1),
    ("stage2", "plateau_patience", -1), ("stage2", "lr", 0.0), ("stage2", "lr", float("nan")),
    ("stage2", "base_width", 0), ("stage2", "seed", -1), ("stage2", "data_seed", -2), ("stage2", "num_workers", -1),
    ("stage2", "epochs", 0), ("stage2", "n_boot", 0), ("stage1a", "temperature", 0.0), ("stage1a", "margin", -1.0),
    ("stage3", "finetune_epochs", -1), ("explain", "max_images", 0), ("results", "seeds", (0, -1)),
])
def test_out_of_range_parameter_is_named(stage, name, value):
    with pytest.raises(ParameterError, match=f"parameter '{name}' must be"):
        make_config(stage, "smoke", **{name: value})


def test_sigma_in_pixels_is_explicit():
    assert make_config("stage2", "demo").sigma_frac == 0.025  # the profile's relative sigma
    pixels = make_config("stage2", "demo", sigma=40.0)  # a sigma you set replaces it
    assert (pixels.sigma, pixels.sigma_frac) == (40.0, None)
    assert make_config("stage2", "demo", sigma=40.0, sigma_frac=0.05).sigma_frac == 0.05


# -- 7. a split that does not match data_seed ------------------------------------------------
def test_split_of_another_data_seed_is_refused(tmp_path, egd):
    make_config("data", "smoke", run_dir=str(tmp_path), egd_root=str(egd))
    sheet = read_master_sheet(egd / "master_sheet.csv")
    sheet = pd.concat([sheet.assign(dicom_id=sheet.dicom_id + f"_{k}", patient_id=sheet.patient_id.astype(str) + f"{k}")
                       for k in range(5)], ignore_index=True)  # 30 images: every split non-empty
    load_or_make_splits(tmp_path / "splits.csv", sheet, seed=0)
    with pytest.raises(ValueError, match=r"splits.csv does not hold the split of data_seed=3.*new run folder"):
        load_or_make_splits(tmp_path / "splits.csv", sheet, seed=3)


# -- 8. init_from that does not resolve ------------------------------------------------------
def test_explicit_init_from_must_resolve(tmp_path):
    def cfg(**kw):
        return make_config("stage2", "smoke", run_dir=str(tmp_path), **kw)

    with pytest.raises(FileNotFoundError, match=f"init_from='{tmp_path}/typo.pt': no checkpoint at"):
        resolve_init(cfg(init_from=str(tmp_path / "typo.pt")))
    with pytest.raises(ValueError, match="init_from='stage7' is neither a stage"):
        resolve_init(cfg(init_from="stage7"))
    with pytest.raises(FileNotFoundError, match=r"init_from='stage1a' names .*stage1a/best.pt, which does not exist"):
        resolve_init(cfg(init_from="stage1a"))  # explicit, not the default upstream stage
    with pytest.warns(UserWarning, match="smoke profile: continuing from random weights"):
        assert not resolve_init(cfg()).is_file()  # the default upstream stage, absent in smoke: tolerated
    assert resolve_init(cfg(init_from="none")) is None
    path = _saved(tmp_path)
    assert resolve_init(cfg(init_from=str(path))) == path and resolve_init(cfg(init_from="stage2")) == path


# -- 10. misleading data errors --------------------------------------------------------------
def test_truncated_dicom_and_corrupt_jpeg2000(tmp_path):
    source = pydicom.data.get_testdata_file("RG1_UNCR.dcm")
    short = tmp_path / "short.dcm"
    short.write_bytes(open(source, "rb").read()[:300])
    with pytest.raises(ValueError, match=r"short.dcm: the file ends before its pixel data \(300 bytes\).*truncated"):
        read_dicom(short)
    blob = bytearray(open(pydicom.data.get_testdata_file("RG1_J2KR.dcm"), "rb").read())
    start = blob.index(bytes.fromhex("FF4FFF51"))  # the JPEG 2000 codestream's first marker
    blob[start + 4:start + 40] = bytes(36)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(bytes(blob))
    with pytest.raises(ValueError) as err:
        read_dicom(broken)
    assert "broken.dcm" in str(err.value) and "JPEG 2000" in str(err.value) and "corrupt" in str(err.value)
    assert "pip install" not in str(err.value)  # the decoders are installed: not a missing handler


def test_damaged_cache_entry_is_named_and_rebuilt(egd, tmp_path):
    ds = EGDDataset(egd, egd, image_size=(64, 64), sigma_frac=0.025, cache_dir=tmp_path / "cache")
    good = ds[1]
    key = ds._keys[1]
    arrays = dict(ds.cache.get(key))
    arrays["gaze_map"] = arrays["gaze_map"] * 3  # a map that no longer sums to 1
    ds.cache.put(key, arrays)
    with pytest.warns(UserWarning, match=f"cached sample of dicom_id {good['dicom_id']} is damaged"):
        again = ds[1]
    assert torch.equal(again["gaze_map"], good["gaze_map"]) and torch.equal(again["image"], good["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # the rebuilt entry is served silently


# -- 12 and 13. the cxrlib command -----------------------------------------------------------
def test_cli_checks_before_starting_and_exits_with_a_message(tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / "x"
    assert cli.main(["run", "--profile", "smoke", "--egd-root", str(tmp_path / "nope"), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "parameter 'egd_root'" in err and "master_sheet.csv" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no stray run folder
    assert cli.main(["run", "--profile", "smoke", "-p", "lr", "0", "--run-dir", str(run)]) == 2
    assert "parameter 'lr' must be" in capsys.readouterr().err
    assert cli.main(["train", "--stage", "stage2", "--profile", "smoke", "-p", "early_stopping", "-1"]) == 2
    with pytest.raises(ParameterError):
        cli.main(["--debug", "train", "--stage", "stage2", "--profile", "smoke", "-p", "lr", "0"])
    monkeypatch.setenv("CXRLIB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["run", "--profile", "smoke", "--egd-root", str(tmp_path / "nope")])
    assert not (tmp_path / "runs").exists()


def test_cli_data_error_exit_code_in_a_fresh_process(tmp_path):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cxrlib", "run", "--profile", "smoke", "--egd-root",
                           str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env={**ENV, "CXRLIB_DEBUG": ""}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "egd_root" in proc.stderr
    assert time.perf_counter() - started < 60 and not (tmp_path / "r").exists()
