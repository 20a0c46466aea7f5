"""The memory estimate a stage checks before training (cxrlib.training.memory)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cxrlib.model import build_model
from cxrlib.training import memory


def tiny_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))


def test_saved_bytes_count_the_activations_autograd_keeps():
    # conv1 saves its input (1 channel) and ReLU its output (4 channels) which conv2 reuses: 5 float32 maps
    h, w = 32, 32
    assert memory.saved_activation_bytes(tiny_net(), (h, w)) == 5 * h * w * 4


def test_saved_bytes_scale_with_pixels_and_batch():
    model = build_model("resse_unet", base_width=8)
    small = memory.saved_activation_bytes(model, (64, 64))
    assert memory.saved_activation_bytes(model, (128, 128)) == pytest.approx(4 * small, rel=0.05)
    assert memory.saved_activation_bytes(model, (64, 64), batch=2) == pytest.approx(2 * small, rel=0.05)


def test_frozen_parts_save_nothing_for_the_backward_pass():
    model = tiny_net()
    trained = memory.saved_activation_bytes(model)
    for p in model.parameters():
        p.requires_grad_(False)
    assert memory.saved_activation_bytes(model) < trained


def config(size, batch=2):
    return SimpleNamespace(image_size=size, batch_size=batch)


def test_a_cpu_run_that_cannot_fit_is_refused_with_the_figure(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)  # 1 GiB free
    with pytest.raises(memory.NotEnoughMemory, match=r"image_size \(8192, 8192\).*GiB.*1\.0 GiB free"):
        memory.check_fits(tiny_net(), config((8192, 8192)), "cpu", stage="stage2")
    assert memory.check_fits(tiny_net(), config((64, 64)), "cpu", stage="stage2") > 0


def test_the_check_can_be_skipped_on_purpose(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    monkeypatch.setenv(memory.SKIP_VARIABLE, "1")
    assert memory.check_fits(tiny_net(), config((8192, 8192)), "cpu", stage="stage2") is None


def test_the_host_memory_is_read_on_linux():
    free = memory.available_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_the_probe_changes_no_buffer_and_keeps_each_part_mode():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
    model.train()
    model[1].eval()  # a frozen part, as set_modes leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    memory.saved_activation_bytes(model, (32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model] == [True, False, True, True]


def test_run_stage_refuses_before_training_when_the_estimate_cannot_fit(tmp_path, monkeypatch):
    from cxrlib.config import make_config
    from cxrlib.training import stages

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    monkeypatch.setattr(stages, "initialise", lambda model, config: "skipped")
    config = make_config("stage1b", "smoke", run_dir=str(tmp_path), init_from="none", image_size=(2048, 2048),
                         device="cpu")
    data = type("Data", (), {"train": [], "val": []})()
    with pytest.raises(memory.NotEnoughMemory, match=r"stage1b at image_size \(2048, 2048\)"):
        stages.run_stage(config, data, progress=False)
    assert not (tmp_path / "stage1b" / "best.pt").exists()
