"""Encoder A: a torchvision DenseNet with offline-safe ImageNet weights (docs/method.md section 2)."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import threading
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


_DENSENET_ARCHS = ("densenet121", "densenet169", "densenet201")
_DOWNLOAD_TIMEOUT_S = 10.0
# Old torchvision checkpoints (also the ImageNet files) name layers "norm.1"; modules now say "norm1".
_LEGACY_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
_ANCHOR = "features.conv0.weight"


def _load_file(path) -> dict:
    # weights_only: a weight file must never be able to run code. cxrlib checkpoints hold only
    # tensors and plain types, so they load this way too.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: not loadable with torch.load(weights_only=True); save a plain state dict "
            f"(torch.save(model.state_dict(), path)) and pass that file"
        ) from err


def _densenet_features_state(obj) -> dict:
    """The ``features.*`` tensors of a torchvision DenseNet, a cxrlib checkpoint or a model state dict."""
    for key in ("model", "state_dict"):  # cxrlib / Lightning-style checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    anchor = next((k for k in obj if k.endswith(_ANCHOR)), None)
    if anchor is None:
        raise ValueError(f"no DenseNet weights found (no key ending in {_ANCHOR!r})")
    prefix = anchor[: -len(_ANCHOR)]  # e.g. "", "densenet.", "module.model."
    keep = [k for k in obj if k.startswith(prefix + "features.")]
    return {_LEGACY_KEY.sub(r"\1\2.", k[len(prefix):]): obj[k] for k in keep}


def _download(url: str, dst: Path, arch: str, timeout: float) -> None:
    """Fetch ``url`` to ``dst`` or raise RuntimeError saying what to do, within about timeout + 2 s."""
    box: dict = {}

    def connect():
        try:
            box["response"] = urllib.request.urlopen(url, timeout=timeout)
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            box["error"] = err

    # urlopen's timeout does not cover DNS resolution, which can hang for minutes on a machine
    # without network; connect in a daemon thread and stop waiting for it.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 2)
    tmp = None
    try:
        if "response" not in box:
            raise box.get("error") or TimeoutError(f"no answer within {timeout:.0f} s")
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with box["response"] as response, tempfile.NamedTemporaryFile(dir=dst.parent, delete=False) as f:
            tmp = f.name
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
        expected = re.search(r"-([0-9a-f]{6,})\.", dst.name)  # torch hub's hash-prefix convention
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise OSError("SHA-256 of the download does not match the file name")
        os.replace(tmp, dst)
        tmp = None
    except Exception as err:
        raise RuntimeError(
            f"Could not download the ImageNet weights for {arch} ({type(err).__name__}: {err}). "
            f"Either download {url} by hand and save it as {dst}, "
            f"or pass pretrained='/path/to/{dst.name}' (a torchvision DenseNet state dict), "
            "or pass pretrained=False to start from random weights (not the paper's setting)."
        ) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _imagenet_state(arch: str) -> dict:
    """torchvision's ImageNet weights from the torch hub cache, downloading them if absent."""
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    dst = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        _download(url, dst, arch, _DOWNLOAD_TIMEOUT_S)
    return _load_file(dst)


class DenseNetEncoder(nn.Module):
    """Encoder A (docs/method.md section 2): a torchvision DenseNet with two taps at stride 32.

    ``stem="repeat"`` repeats the grey channel to RGB (authors' code, no ImageNet normalisation);
    ``stem="sum"`` replaces conv0 by a 1-channel conv whose weight is the sum of the RGB filters,
    which gives the same output at a third of the stem cost. ``pretrained``: False, True
    (ImageNet, offline-safe, see ``_download``) or a path to a torchvision / cxrlib state dict.
    """

    def __init__(self, *, arch: str = "densenet201", pretrained=False, stem: str = "repeat",
                 memory_efficient: bool = False):
        super().__init__()
        if arch not in _DENSENET_ARCHS:
            raise ValueError(f"arch must be one of {_DENSENET_ARCHS}, got {arch!r}")
        if stem not in ("repeat", "sum"):
            raise ValueError(f"stem must be 'repeat' or 'sum', got {stem!r}")
        net = getattr(torchvision.models, arch)(weights=None, memory_efficient=memory_efficient)
        self.features = net.features
        self.arch, self.stem = arch, stem
        self.out_channels = net.classifier.in_features
        if pretrained not in (False, None):
            raw = _imagenet_state(arch) if pretrained is True else _load_file(pretrained)
            state = _densenet_features_state(raw)
            if state[_ANCHOR].shape[1] == 1:  # saved from a stem="sum" encoder
                if stem != "sum":
                    raise ValueError("these weights have a 1-channel stem; use stem='sum'")
                self._sum_rgb_stem()
            self.load_state_dict(state, strict=True)
        if stem == "sum" and self.features.conv0.in_channels == 3:
            self._sum_rgb_stem()  # after loading, so the summed filters are the loaded ones

    def _sum_rgb_stem(self) -> None:
        old = self.features.conv0
        new = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
        self.features.conv0 = new  # same key, same position in the Sequential

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.stem == "repeat":
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        for name, layer in self.features.named_children():
            if name == "norm5":
                break
            x = layer(x)
        bottleneck = x  # (B, 1920, H/32, W/32): denseblock4 output, before norm5
        # torchvision's classifier path, but ReLU not in place so `bottleneck` stays intact
        pooled = F.adaptive_avg_pool2d(F.relu(self.features.norm5(bottleneck)), 1).flatten(1)  # (B, 1920)
        return {"bottleneck": bottleneck, "pooled": pooled}


