"""The memory estimate a stage checks before training (cxrlib.training.memory)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cxrlib.model import build_model
from cxrlib.training import memory


def tiny_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))


def test_the_estimate_grows_with_pixels_and_counts_only_what_trains():
    model = build_model("resse_unet", base_width=8)
    small = memory.estimate_need(model, config((64, 64), 2), "cpu")
    large = memory.estimate_need(model, config((256, 256), 2), "cpu")
    fixed = sum(p.numel() * 4 * 4 for p in model.parameters())  # weights, gradients, Adam's two moments
    assert large - fixed == pytest.approx(16 * (small - fixed), rel=0.01)  # activations: 16x the pixels
    for p in model.parameters():
        p.requires_grad_(False)
    assert memory.estimate_need(model, config((256, 256), 2), "cpu") < large


def test_checkpointed_levels_follow_the_setting():
    levels = ["res_se.0", "decoder.4"]
    assert memory.checkpointed_levels(SimpleNamespace(activation_checkpointing=False), levels) == []
    assert memory.checkpointed_levels(SimpleNamespace(activation_checkpointing="auto"), levels) == levels
    assert memory.checkpointed_levels(SimpleNamespace(activation_checkpointing="decoder.4"), levels) == ["decoder.4"]


def config(size, batch=2):
    return SimpleNamespace(image_size=size, batch_size=batch, activation_checkpointing=False, amp=None)


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


def test_the_estimate_leaves_the_random_state_as_seeded():
    """It runs between the seeding and the training: a draw from torch's generator would change the run."""
    model = build_model("resse_unet", base_width=8)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    memory.estimate_need(model, config((64, 64)), "cpu")
    assert torch.equal(torch.rand(4), expected)
