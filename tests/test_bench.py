"""cxrlib.bench.network on tiny settings: every row field present and positive."""

import pytest
import torch

from cxrlib.bench import network as bench


def test_benchmark_rows_are_positive_numbers(capsys):
    rows = bench.benchmark_models(("dual", "mtunet", "densenet"), image_size=(64, 64), batch_size=2,
                                  device="cpu", steps=1, warmup=0, base_width=8)
    assert [r["model"] for r in rows] == ["dual", "mtunet", "densenet"]
    for row in rows:
        for key in ("params", "train_img_s", "infer_img_s", "batch_size", "first_train_step_s", "first_infer_step_s"):
            assert row[key] > 0, (row["model"], key, row[key])
        assert row["peak_mem_mib"] > 0  # freed heap is trimmed between models, so each one shows
        assert row["amp"] == "none" and row["image_size"] == "64x64" and row["device"]
        assert "RSS" in row["memory_measure"] or "rss" in row["memory_measure"]
    assert rows[0]["params"] > rows[1]["params"]  # the dual net carries a DenseNet201
    table = bench.format_benchmark(rows)
    assert "64x64" in table and "peak MiB (" in table and len(table.splitlines()) == 5
    assert all(r["options"] == "-" for r in rows)  # channels_last is CUDA-only by default


def test_main_prints_table(capsys):
    assert bench.main(["--models", "mtunet", "--image-size", "32", "64", "--steps", "1", "--warmup", "0",
                       "--base-width", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mtunet" in out and "32x64" in out


def test_compile_option_compiles_the_blocks_and_reports_the_first_step(capsys, monkeypatch):
    """``--compile`` alone compiles the repeated blocks (as the trainer's ``compile=True``), and the
    table shows the first step's seconds, which hold the compilation (stubbed: inductor takes minutes)."""
    compiled = []
    monkeypatch.setattr(bench.precision, "compile_blocks", lambda model, **k: compiled.append(type(model).__name__))
    assert bench.main(["--models", "mtunet", "--image-size", "32", "32", "--steps", "1", "--warmup", "0",
                       "--base-width", "4", "--device", "cpu", "--compile"]) == 0
    out = capsys.readouterr().out
    assert compiled == ["MTUNet"] and "compile blocks" in out and "first step s (train/infer)" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiples of 32"):
        bench.benchmark_models(("mtunet",), image_size=(50, 64), device="cpu")
    with pytest.raises(ValueError, match="valid names"):
        bench.benchmark_models(("resnet",), image_size=(64, 64), device="cpu")


def test_amp_only_on_cuda():
    assert not bench._autocast(torch.device("cpu"), None).enabled
    assert not bench._autocast(torch.device("cpu"), "bf16").enabled
    assert bench._autocast(torch.device("cuda"), "fp16").dtype is torch.float16
    assert not bench._autocast(torch.device("cuda"), "none").enabled
