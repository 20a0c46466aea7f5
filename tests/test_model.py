"""Shapes, gradients, weight loading and pinned parameter counts of cxrlib.model (timm-style)."""

import re
import time

import pytest
import torch
import torchvision

from cxrlib import model as M

TINY = {
    "dual": dict(base_width=8, densenet_arch="densenet121"),
    "mtunet": dict(base_width=8),
    "resse_unet": dict(base_width=8),
    "densenet": dict(densenet_arch="densenet121"),
}


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return M.build_model(name, **{**TINY[name], **kwargs})


@pytest.mark.parametrize("name", M.MODEL_NAMES)
def test_shapes_no_nan_and_every_parameter_gets_a_gradient(name):
    net = tiny(name).train()
    x = torch.randn(2, 1, 64, 96)
    out = net(x)
    assert out["logits"].shape == (2, 3)
    loss = out["logits"].logsumexp(1).sum()
    if name == "densenet":
        assert out["embedding"].shape == (2, 1024)
        loss = loss + out["embedding"].square().mean()
    else:
        sal = out["saliency_log"]
        assert sal.shape == (2, 1, 64, 96)
        torch.testing.assert_close(sal.flatten(1).logsumexp(1), torch.zeros(2), atol=1e-5, rtol=0)
        loss = loss - sal.mean()  # a loss on both outputs
    assert all(torch.isfinite(v).all() for v in out.values())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name,fused", [("dual", 1024 + 8), ("mtunet", 128 + 8), ("resse_unet", 128 + 8),
                                        ("densenet", 1024)])
def test_forward_head_pre_logits_and_features(name, fused):
    net = tiny(name).eval()
    with torch.no_grad():
        feats = net.forward_features(torch.randn(1, 1, 64, 64))
        assert net.forward_head(feats, pre_logits=True).shape == (1, fused)
    if name != "densenet":
        assert feats["decoder"].shape == (1, 8, 64, 64)
    assert len(net.cam_target_layers) == 1


PARTS = {"dual": ["densenet", "res_se", "decoder", "saliency_head", "classifier"],
         "mtunet": ["encoder", "decoder", "saliency_head", "classifier"],
         "resse_unet": ["encoder", "decoder", "saliency_head", "classifier"],
         "densenet": ["densenet", "linear_head"]}


@pytest.mark.parametrize("name", M.MODEL_NAMES)
def test_parts_partition_the_parameters(name):
    """What a stage trains or freezes is a part: each is a child of the model, and together they
    hold every parameter exactly once (none outside a part, none in two)."""
    net = tiny(name)
    parts = net.parts()
    assert list(parts) == PARTS[name]
    children = dict(net.named_children())
    assert all(children[part] is module for part, module in parts.items())
    owned = [id(p) for module in parts.values() for p in module.parameters()]
    assert len(owned) == len(set(owned)), "a parameter in two parts"
    assert set(owned) == {id(p) for p in net.parameters()}, "a parameter outside every part"
    assert all(sum(p.numel() for p in module.parameters()) > 0 for module in parts.values())


def test_dual_feature_shapes_and_cached_densenet_equals_full_forward():
    net = tiny("dual", densenet_arch="densenet201").eval()
    x = torch.randn(2, 1, 64, 32)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats["bottleneck"].shape == (2, 1920, 2, 1)
        assert feats["pooled"].shape == (2, 1920)
        dense = net.densenet(x)
        cached = net.forward_head(net.forward_features(x, dense=dense))
        full = net(x)
    for key in full:
        torch.testing.assert_close(cached[key], full[key])
    assert net.cam_target_layers[0] is net.densenet.features.denseblock4


@pytest.mark.parametrize("shape", [(1, 1, 64, 48), (1, 1, 40, 64), (1, 3, 64, 64), (1, 64, 64)])
@pytest.mark.parametrize("name", ["dual", "mtunet", "densenet"])
def test_bad_input_shape_raises(name, shape):
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        tiny(name)(torch.randn(*shape))


def test_default_paper_network_parameter_counts():
    net = M.DualEncoderMTUNet()
    counts = {r["part"]: r["params"] for r in M.parameter_table(net)}
    assert counts == {
        "densenet": 18_092_928,  # torchvision densenet201 features (20,013,928 - 1,921,000 classifier)
        "res_se": 25_294_016,
        "decoder": 23_086_080,
        "saliency_head": 37_121,
        "classifier": 127_235,  # 1984*64+64 + 64*3+3
        "total": 66_637_380,
    }
    assert net.decoder.ups[0][1][0].in_channels == 1920
    assert net.decoder.blocks[0][0][0].in_channels == 1536
    assert net.decoder.blocks[-1][0][0].in_channels == 128
    for p in net.densenet.parameters():
        p.requires_grad_(False)
    table = M.format_parameter_table(M.parameter_table(net))
    assert "18,092,928" in table and table.splitlines()[-1].split()[-1] == "48,544,452"


def test_baseline_parameter_counts():
    assert M.parameter_table(M.MTUNet())[-1]["params"] == 34_632_836
    assert M.parameter_table(M.ResSEUNet())[-1]["params"] == 41_076_868
    assert M.parameter_table(M.DenseNetClassifier())[-1]["params"] == 18_098_691


def _legacy(state):
    """Rename keys the way old torchvision checkpoints (and the ImageNet files) spell them."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}


def _same_features(encoder, state):
    ours = encoder.state_dict()
    return all(torch.equal(ours[k], v) for k, v in state.items() if k.startswith("features."))


def test_pretrained_path_loads_torchvision_densenet201(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.densenet201(weights=None).state_dict()
    torch.save(state, tmp_path / "densenet201.pth")
    enc = M.DenseNetEncoder(pretrained=str(tmp_path / "densenet201.pth"))
    assert _same_features(enc, state)


def test_pretrained_path_loads_old_style_keys_and_cxrlib_checkpoints(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.densenet121(weights=None).state_dict()
    legacy = _legacy(state)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "old.pth")
    assert _same_features(M.DenseNetEncoder(arch="densenet121", pretrained=tmp_path / "old.pth"), state)
    cls = tiny("densenet")
    torch.save({"model": cls.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    enc = M.DenseNetEncoder(arch="densenet121", pretrained=tmp_path / "ckpt.pt")
    assert all(torch.equal(v, cls.densenet.state_dict()[k]) for k, v in enc.state_dict().items())


def test_densenet_classifier_keys_load_into_dual_strictly():
    cls, dual = tiny("densenet"), tiny("dual")
    part = {k[len("densenet."):]: v for k, v in cls.state_dict().items() if k.startswith("densenet.")}
    assert set(part) == set(dual.densenet.state_dict())
    dual.densenet.load_state_dict(part, strict=True)
    assert torch.equal(dual.densenet.features.conv0.weight, cls.densenet.features.conv0.weight)


def _before_the_rename(state: dict) -> dict:
    """A stage-1b state dict as written before its Linear head was renamed (``classifier.*``)."""
    return {re.sub(r"^linear_head\.", "classifier.", k): v for k, v in state.items()}


def test_a_densenet_checkpoint_with_the_old_head_keys_loads_and_gives_the_same_logits(tmp_path):
    from cxrlib.training.checkpoints import atomic_save, load_checkpoint, load_init, load_weights

    old = tiny("densenet").eval()
    state = _before_the_rename(old.state_dict())
    assert {"classifier.weight", "classifier.bias"} <= set(state) and not any("linear_head" in k for k in state)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = old(x)["logits"]
    atomic_save({"model": state}, tmp_path / "best.pt")
    loaders = {"load_state_dict": lambda m: m.load_state_dict(state),
               "load_weights": lambda m: load_weights(m, load_checkpoint(tmp_path / "best.pt"), "old"),
               "load_init": lambda m: load_init(m, tmp_path / "best.pt")}
    for name, load in loaders.items():
        torch.manual_seed(1)
        new = M.build_model("densenet", **TINY["densenet"]).eval()
        load(new)
        with torch.no_grad():
            assert torch.equal(new(x)["logits"], expected), name
    assert set(state) == set(_before_the_rename(old.state_dict()))  # the caller's dict is left as it was


def test_predicted_maps_are_the_exp_of_saliency_log_summing_to_one():
    net = tiny("dual").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64))
    for dtype in (torch.float32, torch.float64):
        maps = M.predicted_maps(out, dtype=dtype)
        assert maps.shape == (2, 64, 64) and maps.dtype == dtype
        torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2, dtype=dtype))
        torch.testing.assert_close(maps, out["saliency_log"][:, 0].to(dtype).exp(), rtol=1e-5, atol=0)


def test_sum_stem_equals_repeat_stem(tmp_path):
    torch.manual_seed(3)
    rep = M.DenseNetEncoder(arch="densenet121").eval()
    torch.save(rep.state_dict(), tmp_path / "w.pth")
    summed = M.DenseNetEncoder(arch="densenet121", stem="sum", pretrained=tmp_path / "w.pth").eval()
    assert summed.features.conv0.weight.shape[1] == 1
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = rep(x), summed(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
    # a stem="sum" state dict (1-channel conv0) loads back into a stem="sum" encoder
    torch.save(summed.state_dict(), tmp_path / "s.pth")
    again = M.DenseNetEncoder(arch="densenet121", stem="sum", pretrained=tmp_path / "s.pth")
    assert torch.equal(again.features.conv0.weight, summed.features.conv0.weight)


def _assert_helpful(err, hub):
    msg = str(err)
    url = torchvision.models.DenseNet201_Weights.IMAGENET1K_V1.url
    assert "ImageNet weights" in msg and url in msg
    assert str(hub / "checkpoints" / "densenet201-c1103571.pth") in msg
    assert "pretrained='/path/to/" in msg and "pretrained=False" in msg


def test_pretrained_true_offline_fails_fast_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache, never the user's
    # simulate a machine without network even where there is one (no 80 MB download in tests)
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        M.DualEncoderMTUNet(pretrained=True, base_width=8)
    assert time.monotonic() - start < 15
    _assert_helpful(info.value, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial download left behind


def test_pretrained_true_hanging_network_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(M.densenet, "_DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(M.densenet.urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        M.DenseNetEncoder(pretrained=True)
    assert time.monotonic() - start < 5
    _assert_helpful(info.value, tmp_path)


def test_pretrained_true_uses_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(M.densenet.urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    torch.manual_seed(4)
    state = torchvision.models.densenet121(weights=None).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(_legacy(state), tmp_path / "checkpoints" / "densenet121-a639ec97.pth")
    assert _same_features(M.DenseNetEncoder(arch="densenet121", pretrained=True), state)


def test_build_model_errors():
    with pytest.raises(ValueError, match="valid names: dual, mtunet, resse_unet, densenet"):
        M.build_model("unet3000")
    with pytest.raises(TypeError):
        M.build_model("mtunet", pretrained=True)  # baselines trained from scratch take no weights
    with pytest.raises(ValueError, match="stem"):
        M.DenseNetEncoder(stem="rgb")
    with pytest.raises(ValueError, match="arch"):
        M.DenseNetEncoder(arch="densenet161")
