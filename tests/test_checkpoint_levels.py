"""Activation checkpointing per UNet level and the "auto" choice from a memory budget."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cxrlib.model import DualEncoderMTUNet, ResSEUNet, set_activation_checkpointing
from cxrlib.model.blocks import unet_levels
from cxrlib.model.memory import GIB, choose_checkpoint_levels, estimate_peak_bytes, level_activation_bytes

LEVELS = [f"res_se.{i}" for i in range(5)] + [f"decoder.{i}" for i in range(5)]
UNET_LEVELS = [f"encoder.{i}" for i in range(5)] + [f"decoder.{i}" for i in range(4)]  # ResSEUNet: same blocks, no DenseNet


@pytest.fixture(scope="module")
def plain_and_result():
    torch.manual_seed(0)
    net = ResSEUNet(base_width=4).train()
    gen = torch.Generator().manual_seed(1)
    x, target = torch.rand(2, 1, 64, 64, generator=gen), torch.rand(2, 1, 64, 64, generator=gen)
    batch = (x, torch.tensor([0, 2]), target / target.sum(dim=(2, 3), keepdim=True))
    plain = copy.deepcopy(net)
    return net, batch, _run(plain, batch)


def _run(net, batch):
    x, y, target = batch
    torch.manual_seed(2)
    out = net(x)
    loss = F.cross_entropy(out["logits"], y) + F.kl_div(out["saliency_log"].flatten(1), target.flatten(1),
                                                         reduction="batchmean")
    loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    return loss.detach(), grads, buffers


@pytest.mark.parametrize("levels", [[name] for name in UNET_LEVELS] + [UNET_LEVELS[::3], UNET_LEVELS])
def test_any_choice_of_levels_gives_the_plain_loss_gradients_and_buffers(plain_and_result, levels):
    net, batch, (loss, grads, buffers) = plain_and_result
    ckpt = copy.deepcopy(net)
    set_activation_checkpointing(ckpt, ",".join(levels))
    got_loss, got_grads, got_buffers = _run(ckpt, batch)
    assert torch.equal(loss, got_loss)
    for name, g in grads.items():
        assert torch.allclose(g, got_grads[name], rtol=1e-5, atol=1e-7), name
    assert all(torch.equal(buffers[k], got_buffers[k]) for k in buffers)


def test_only_the_named_levels_are_checkpointed(plain_and_result, monkeypatch):
    from cxrlib.model import blocks

    net = copy.deepcopy(plain_and_result[0])
    set_activation_checkpointing(net, ["encoder.3", "decoder.0"])
    calls = []
    original = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda fn, *a, **k: calls.append(1) or original(fn, *a, **k))
    _run(net, plain_and_result[1])
    assert len(calls) == 2
    assert set(unet_levels(net)) == set(UNET_LEVELS)
    with pytest.raises(ValueError, match=r"unknown level\(s\) \['decoder.9'\]"):
        set_activation_checkpointing(net, "decoder.9")


@pytest.fixture(scope="module")
def dual():
    return DualEncoderMTUNet(base_width=4, densenet_arch="densenet121")


def test_auto_checkpoints_the_fewest_largest_levels_under_the_budget(dual):
    net = dual
    sizes = level_activation_bytes(net, (640, 512), 16)
    assert set(sizes) == set(LEVELS) | {"rest"} and all(v > 0 for v in sizes.values())
    assert sizes["res_se.0"] > sizes["res_se.4"]  # full resolution keeps more than 1/16
    everything = estimate_peak_bytes(net, sizes, LEVELS, half=True)
    nothing = estimate_peak_bytes(net, sizes, [], half=True)
    assert everything < nothing
    budget = (everything + nothing) / 2 / GIB
    chosen, peak = choose_checkpoint_levels(net, image_size=(640, 512), batch_size=16, budget_gib=budget, half=True,
                                            sizes=sizes)
    assert peak <= budget * GIB and 0 < len(chosen) < len(LEVELS)
    ranked = sorted(LEVELS, key=lambda k: -sizes[k])
    assert chosen == ranked[:len(chosen)]  # largest first
    assert estimate_peak_bytes(net, sizes, chosen[:-1], half=True) > budget * GIB  # one fewer does not fit
    assert choose_checkpoint_levels(net, image_size=(640, 512), batch_size=16, budget_gib=nothing / GIB + 1,
                                    half=True, sizes=sizes)[0] == []
    with pytest.warns(UserWarning, match="even with every UNet level checkpointed"):
        assert choose_checkpoint_levels(net, image_size=(640, 512), batch_size=16, budget_gib=0.001, half=True,
                                        sizes=sizes)[0] == ranked


def test_activation_sizes_scale_with_pixels_and_batch(plain_and_result):
    net = plain_and_result[0]  # (the probe itself always runs at 64x64 x 2)
    small, large = level_activation_bytes(net, (64, 64), 2), level_activation_bytes(net, (128, 128), 4)
    assert large["decoder.3"] == pytest.approx(8 * small["decoder.3"], rel=1e-6)


def test_trainer_resolves_auto_from_the_config(tmp_path, dual):
    from cxrlib.config import ParameterError, make_config
    from cxrlib.training import precision

    net = dual
    cfg = make_config("stage2", "smoke", run_dir=str(tmp_path), activation_checkpointing="auto",
                      checkpoint_budget_gib=1e-4)
    with pytest.warns(UserWarning, match="over checkpoint_budget_gib=0.0001"):
        chosen = precision.apply_activation_checkpointing(net, cfg, precision.autocast_settings(torch.device("cpu")))
    assert sorted(chosen) == sorted(LEVELS) and net.decoder.checkpointing == frozenset(range(5))
    cfg = make_config("stage2", "smoke", run_dir=str(tmp_path), activation_checkpointing="auto",
                      checkpoint_budget_gib=1000.0)
    assert precision.apply_activation_checkpointing(net, cfg, precision.autocast_settings(torch.device("cpu"))) == []
    with pytest.raises(ValueError, match="stage2: activation_checkpointing: unknown level"):
        precision.apply_activation_checkpointing(
            net, make_config("stage2", "smoke", run_dir=str(tmp_path), activation_checkpointing="true"),
            precision.autocast_settings(torch.device("cpu")))
    with pytest.raises(ParameterError, match="checkpoint_budget_gib"):
        make_config("stage2", "smoke", run_dir=str(tmp_path), checkpoint_budget_gib=0.0)
