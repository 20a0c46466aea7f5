"""``cxrlib bench --suite`` on the CPU at tiny sizes: every part runs, the files are written, and
the dtypes the CPU cannot run are skipped with the reason."""

import json

import pytest

from cxrlib.bench import suite


def test_suite_runs_every_part_and_writes_json_and_markdown(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(suite.precision, "compile_blocks", lambda model, **k: compiled.append(model) or 0)
    result = suite.run_suite(profile="smoke", device="cpu", stages=("stage2",), image_size=(64, 64), batch_size=2,
                             base_width=4, steps=1, warmup=0, synthetic_images=30, out_dir=tmp_path, log=lambda m: None)
    assert [r["options"] for r in result["network"]] == ["channels_last", "channels_last,compile blocks"]
    assert len(compiled) == 1  # the compiled row compiled the blocks (stubbed: inductor takes minutes here)
    assert [(r["stage"], r["amp"]) for r in result["stages"]] == [("stage2", "fp32")]
    assert any("bf16: autocast runs on CUDA only" in s for s in result["skipped"])
    assert any("fp16: autocast runs on CUDA only" in s for s in result["skipped"])
    ev = result["evaluation"]
    assert ev["numpy_s_per_image"] > 0 and ev["torch_s_per_image"] > 0 and 0 < ev["share_torch"] < 1
    tr = result["trainer"]
    assert tr["train_images_per_s"] > 0 and tr["ratio"] == pytest.approx(tr["train_images_per_s"] / tr["bench_train_img_s"])
    assert json.loads((tmp_path / "suite.json").read_text())["device"] == result["device"]
    md = (tmp_path / "suite.md").read_text()
    assert result["device"] in md and "| stage2 | fp32 |" in md and "Trainer, one epoch of stage2" in md


def test_suite_stops_at_its_time_limit(tmp_path):
    result = suite.run_suite(profile="smoke", device="cpu", stages=("stage3",), image_size=(64, 64), batch_size=2,
                             base_width=4, steps=1, warmup=0, time_limit_s=0.0, log=lambda m: None)
    assert not result["network"] and not result["stages"] and result["trainer"] is None
    assert any("time limit" in s for s in result["skipped"])
