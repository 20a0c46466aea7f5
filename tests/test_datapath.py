"""The data path at real scale: compressed full-size synthetic DICOMs, the checksummed sample
cache, the parallel resumable prepare, the trainer's loaders and half-precision frozen features."""

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from cxrlib.training import stages
from cxrlib.cli import main as cli
from cxrlib.config import make_config
from cxrlib.data import EGDDataset
from cxrlib.data.cache import SampleCache
from cxrlib.data.prepare import prepare_cache
from cxrlib.synthetic.egd import make_egd_like
from cxrlib.training.frozen_features import precompute
from cxrlib.training.trainer import Trainer

SIZE = (64, 64)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_egd_like(tmp_path_factory.mktemp("egd") / "data", n_images=9, seed=4, progress=False)


def dataset(root, cache, **kw):
    return EGDDataset(root, root, image_size=SIZE, sigma_frac=0.025, cache_dir=cache, **kw)


# -- the synthetic writer --------------------------------------------------------------------
def test_full_size_jpeg2000_files_are_lossless_16_bit(tmp_path):
    j2k = make_egd_like(tmp_path / "j2k", n_images=3, seed=2, native_shape=(512, 448),
                        transfer_syntax="jpeg2000", progress=False)
    plain = make_egd_like(tmp_path / "plain", n_images=3, seed=2, native_shape=(512, 448), progress=False)
    files = sorted(j2k.rglob("*.dcm"))
    assert len(files) == 3
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 448, 16)
        twin = pydicom.dcmread(plain / path.relative_to(j2k))
        assert twin.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, twin.pixel_array)  # lossless
        assert path.stat().st_size < 0.8 * (plain / path.relative_to(j2k)).stat().st_size
    a, b = dataset(j2k, None), dataset(plain, None)
    assert torch.equal(a[0]["image"], b[0]["image"]) and torch.equal(a[0]["gaze_map"], b[0]["gaze_map"])


@pytest.mark.parametrize("kwargs, name", [({"n_images": 0}, "n_images"), ({"n_images": -3}, "n_images"),
                                          ({"native_shape": (20, 448)}, "native_shape"),
                                          ({"native_size": (400, 300)}, "native_size"),
                                          ({"transfer_syntax": "jpeg9"}, "transfer_syntax"),
                                          ({"offscreen_frac": 1.5}, "offscreen_frac")])
def test_bad_synth_arguments_are_named(tmp_path, kwargs, name):
    kwargs.setdefault("n_images", 3)
    with pytest.raises(ValueError, match=name):
        make_egd_like(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_synth_rejects_zero_images_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["synth", str(tmp_path / "out"), "--n-images", "0"])
    assert exit_info.value.code == 2
    assert "--n-images: must be at least 1, got 0" in capsys.readouterr().err
    assert cli(["synth", str(tmp_path / "out"), "--n-images", "2", "--native-size", "30", "448"]) == 2
    assert "native_shape" in capsys.readouterr().err


def test_cli_synth_difficulty_reaches_the_generator(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["synth", str(tmp_path / "bad"), "--n-images", "3", "--difficulty", "1.5"])
    assert exit_info.value.code == 2 and "--difficulty: must be a number from 0 to 1" in capsys.readouterr().err
    pixels = {}
    for difficulty in ("0", "1"):
        out = tmp_path / f"d{difficulty}"
        assert cli(["synth", str(out), "--n-images", "6", "--difficulty", difficulty]) == 0
        pixels[difficulty] = [pydicom.dcmread(f).pixel_array for f in sorted(out.rglob("*.dcm"))]
    assert len(pixels["0"]) == len(pixels["1"]) == 6
    # the same bodies and acquisitions, other disease draws: some image differs, the shapes agree
    assert [a.shape for a in pixels["0"]] == [b.shape for b in pixels["1"]]
    assert any(not np.array_equal(a, b) for a, b in zip(pixels["0"], pixels["1"]))


def test_a_set_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    from cxrlib.synthetic import egd as synthetic

    out = make_egd_like(tmp_path / "set", n_images=3, seed=1, progress=False)
    (out / "notes.txt").write_text("mine")
    sheet = (out / "master_sheet.csv").read_text()
    calls = []

    def failing(path, img, info, original=synthetic.write_dicom):
        calls.append(path)
        if len(calls) == 2:  # the writer dies half-way through the new set
            raise OSError("disk full")
        original(path, img, info)

    monkeypatch.setattr(synthetic, "write_dicom", failing)
    with pytest.raises(OSError):
        make_egd_like(out, n_images=3, seed=2, overwrite=True, progress=False)
    assert calls and all(not str(p).startswith(str(out) + os.sep) for p in calls)  # never written in place
    assert (out / "master_sheet.csv").read_text() == sheet  # the old set is untouched
    stale = list(tmp_path.glob(".set.*.tmp"))
    assert len(stale) == 1  # what the dead writer left beside it (this process: not yet removable)
    new_name = stale[0].name.split(".")
    new_name[2] = "999999999"  # as if the writer's process had been killed
    stale[0].rename(tmp_path / ".".join(new_name))
    monkeypatch.undo()
    make_egd_like(out, n_images=3, seed=2, overwrite=True, progress=False)
    assert (out / "master_sheet.csv").read_text() != sheet and (out / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".set.*"))  # the stale folder and the old set are gone


# -- the sample cache --------------------------------------------------------------------------
def _entry(ds, index):
    return ds.cache.path(ds.key(index))


def test_flipped_bytes_and_a_damaged_header_are_rebuilt_with_a_counted_warning(root, tmp_path):
    ds = dataset(root, tmp_path / "cache")
    first = [ds[i] for i in range(3)]
    body = _entry(ds, 0)
    blob = bytearray(body.read_bytes())
    blob[-5000:-4990] = bytes(b ^ 0xFF for b in blob[-5000:-4990])  # inside the arrays
    body.write_bytes(bytes(blob))
    head = _entry(ds, 1)
    blob = head.read_bytes()
    assert b'"<u2"' in blob
    head.write_bytes(blob.replace(b'"<u2"', b'"<f8"', 1))  # the header's dtype, same length
    again = dataset(root, tmp_path / "cache")
    with pytest.warns(UserWarning, match=r"checksum mismatch.*1 damaged entry rebuilt"):
        s0 = again[0]
    with pytest.warns(UserWarning, match=r"checksum mismatch.*2 damaged entries rebuilt"):
        s1 = again[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact entry is read without a word
        s2 = again[2]
    for old, new in zip(first, (s0, s1, s2)):
        assert torch.equal(old["image"], new["image"]) and torch.equal(old["gaze_map"], new["gaze_map"])
    assert again.cache.repaired == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt entries are good again
        dataset(root, tmp_path / "cache")[0]


def test_a_file_changed_in_place_with_the_same_size_and_mtime_is_not_served_stale(root, tmp_path):
    egd = shutil.copytree(root, tmp_path / "egd")
    ds = dataset(egd, tmp_path / "cache")
    before = ds[0]["image"]
    path = ds.image_paths[0]
    stat = path.stat()
    blob = bytearray(path.read_bytes())
    blob[-20000:] = bytes(255 - b for b in blob[-20000:])  # the last rows of pixel data, inverted
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = dataset(egd, tmp_path / "cache")[0]["image"]
    assert not torch.equal(before, after)
    assert torch.equal(after, dataset(egd, None)[0]["image"])


# -- building the cache in parallel ------------------------------------------------------------
def test_an_interrupted_prepare_resumes_keeping_what_was_written(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = dataset(root, cache)
    calls = []

    def dies_on_the_fourth(self, index, original=EGDDataset._compute):
        calls.append(index)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the build is killed
        return original(self, index)

    monkeypatch.setattr(EGDDataset, "_compute", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache([ds], workers=0, progress=False)
    monkeypatch.undo()
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in SampleCache(cache).entries()}
    assert len(kept) == 3
    orphan = next(iter(kept)).with_name(".deadbeef.999999999.0000.tmp")  # a killed writer's leftover
    orphan.write_bytes(b"half")
    again = dataset(root, cache)
    result = prepare_cache([again, dataset(root, cache, ids=again.sheet["dicom_id"][:2])], workers=2, progress=False)
    assert (result["images"], result["cached_before"], result["built"]) == (9, 3, 6)
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == v for p, v in kept.items())  # not rewritten
    assert not orphan.exists() and len(SampleCache(cache).entries()) == 9
    plain = dataset(root, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(again)):
            assert torch.equal(again[i]["image"], plain[i]["image"])
            assert torch.equal(again[i]["gaze_map"], plain[i]["gaze_map"])
    assert prepare_cache([again], workers=2, progress=False)["built"] == 0


# -- the trainer's loaders -----------------------------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Dropout(0.5), torch.nn.Flatten(),
                                        torch.nn.LazyLinear(3))

    def parts(self):
        return {"body": self.body}

    def forward(self, x):
        return self.body(x)


def _loss(model, batch):
    logits = model(batch["image"])
    return {"loss": torch.nn.functional.cross_entropy(logits, batch["label"]), "logits": logits}


def _fit(root, tmp_path, workers, name):
    from cxrlib.data import collate

    torch.manual_seed(0)
    cfg = make_config("stage1b", "smoke", run_dir=str(tmp_path / name), epochs=3, batch_size=2,
                      max_steps_per_epoch=100, num_workers=workers, device="cpu")
    data = dataset(root, tmp_path / "cache")
    model = _Tiny()
    model(data[0]["image"][None])  # materialise the lazy layer
    seen = []
    trainer = Trainer(model, cfg, train_parts=("body",), loss_fn=lambda m, b: seen.append(b["dicom_id"]) or _loss(m, b),
                      collate_fn=collate, progress=False)
    history = trainer.fit(data, data)
    return model.state_dict(), history, seen


def test_worker_processes_give_the_batches_and_weights_of_none(root, tmp_path):
    w0, h0, seen0 = _fit(root, tmp_path, 0, "w0")
    w2, h2, seen2 = _fit(root, tmp_path, 2, "w2")
    assert seen0 == seen2 and len(seen0) == 3 * (4 + 2)  # 9 images: 4 training batches of 2, 2 validation of 8
    assert seen0[:4] != seen0[6:10]  # reshuffled each epoch
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert (h0["train_loss"] == h2["train_loss"]).all()
    assert (h2["train_images_per_s"] > 0).all()


def test_half_precision_features_change_nothing_under_autocast():
    """Stored in the autocast dtype, the frozen DenseNet features give the stage-2 step the same
    loss and gradients bit for bit (their first use casts them to that dtype anyway)."""
    from cxrlib.model import DualEncoderMTUNet

    torch.manual_seed(0)
    model = DualEncoderMTUNet(base_width=8).train()
    model.densenet.eval()
    x = torch.rand(2, 1, 64, 64)
    target = torch.rand(2, 1, 64, 64)
    target = target / target.sum(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        dense = model.densenet(x)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        batch = {"image": x, "gaze_map": target, "dense_bottleneck": dense["bottleneck"].to(dtype),
                 "dense_pooled": dense["pooled"].to(dtype)}
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stages.saliency_step(model, batch)
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad.clone() for p in model.res_se.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    data = [{"x": torch.rand(3)} for _ in range(4)]
    kept, upcast = (precompute(lambda b: {"half": (b["x"] * 1.1).bfloat16(), "full": b["x"] * 1.1}, data,
                               batch_size=2, device="cpu", collate_fn=lambda s: {"x": torch.stack([i["x"] for i in s])},
                               progress=False, keep_half=keep) for keep in (True, False))
    assert kept["half"].dtype == torch.bfloat16 and kept["half"].shape == (4, 3)
    assert kept["full"].dtype == upcast["half"].dtype == upcast["full"].dtype == torch.float32
    assert torch.equal(kept["half"].float(), upcast["half"]) and torch.equal(kept["full"], upcast["full"])


def test_cli_prepare_builds_then_keeps_the_cache(tmp_path, capsys):
    args = ["prepare", "--profile", "smoke", "-p", "run_dir", str(tmp_path), "-p", "synthetic_images", "30",
            "--workers", "2", "--no-progress"]
    assert cli(args) == 0
    assert "30 images, 0 already cached, 30 built" in capsys.readouterr().out
    assert cli(args) == 0
    assert "30 images, 30 already cached, 0 built" in capsys.readouterr().out


def test_bench_data_reports_cold_per_worker_count_and_a_warm_pass_ten_times_faster(capsys):
    from cxrlib.bench.pipeline import benchmark_loader

    result = benchmark_loader(n_images=4, image_size=(64, 64), native_shape=(256, 224), transfer_syntax="jpeg2000",
                              workers=(1, 2), rounds=1)
    assert set(result["cold_samples_per_s"]) == {1, 2} and result["native_shape"] == (256, 224)
    assert result["speed_up"] >= 10  # with the checksum verified on every read
    out = capsys.readouterr().out
    assert "cold (decode, 1 worker)" in out and "cold (decode, 2 workers)" in out and "warm (cache, checksum" in out


def test_a_killed_prepare_leaves_valid_entries_and_no_workers(root, tmp_path):
    """kill -9 of a parallel build: its workers stop soon after, and the next build keeps every entry."""
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    script = tmp_path / "build.py"
    script.write_text(
        "import time\n"
        "from cxrlib.data import EGDDataset\n"
        "from cxrlib.data.prepare import prepare_cache\n"
        "original = EGDDataset._compute\n"
        "def slow(self, index):\n"
        "    time.sleep(0.4)  # a full-size decode, in miniature\n"
        "    return original(self, index)\n"
        "EGDDataset._compute = slow\n"
        f"ds = EGDDataset({str(root)!r}, image_size=(64, 64), sigma_frac=0.025, cache_dir={str(cache)!r})\n"
        "prepare_cache([ds], workers=2, progress=False)\n")
    import cxrlib

    here = str(Path(cxrlib.__file__).resolve().parents[1])  # this checkout's cxrlib in the child too
    build = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": here})
    deadline = time.monotonic() + 120
    while len(SampleCache(cache).entries()) < 2 and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.05)
    build.send_signal(signal.SIGKILL)
    build.wait()
    time.sleep(2.5)  # the workers notice within 0.5 s; a sample in flight takes 0.4 s more
    kept = len(SampleCache(cache).entries())
    time.sleep(1.5)
    assert len(SampleCache(cache).entries()) == kept  # nobody is writing any more
    assert 2 <= kept < 9
    result = prepare_cache([dataset(root, cache)], workers=2, progress=False)
    assert (result["cached_before"], result["built"]) == (kept, 9 - kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every entry the killed build wrote is whole
        ds = dataset(root, cache)
        assert all(torch.equal(ds[i]["image"], dataset(root, None)[i]["image"]) for i in range(len(ds)))
