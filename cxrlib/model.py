"""Networks: building blocks, the dual-encoder multi-task UNet (method.md section 2) and baselines.

Every model takes a grey image ``(B, 1, H, W)`` with H and W multiples of 32 and follows timm's
contract: ``forward_features`` -> dict of feature maps, ``forward_head(features, pre_logits=...)``,
``forward`` = both, ``parts()`` names the trainable stages (method.md section 4) and
``cam_target_layers`` names the Grad-CAM layer (method.md section 7).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import threading
import urllib.request
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = [
    "ConvBNReLU", "DoubleConv", "ResidualBlock", "SEBlock", "ResSEBlock", "Up", "UNetEncoder",
    "UNetDecoder", "SaliencyHead", "FusionClassifier", "DenseNetEncoder", "DualEncoderMTUNet",
    "MTUNet", "ResSEUNet", "DenseNetClassifier", "MODEL_NAMES", "build_model", "parameter_table",
    "format_parameter_table",
]

# ----------------------------------------------------------------------------- building blocks


class ConvBNReLU(nn.Sequential):
    """Conv(k x k, same padding) - BatchNorm - ReLU.

    The convolution keeps its bias, as in the authors' code: redundant under BN, but it keeps the
    parameter counts equal to the reference implementation.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The UNet block, 2 x (Conv3x3-BN-ReLU) (method.md section 2, "block"; Ronneberger 2015)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class ResidualBlock(nn.Module):
    """Conv3x3-BN-ReLU-Conv3x3-BN plus a Conv3x3 shortcut (bias, no BN, as in the code); add; ReLU.

    method.md section 2, encoder B (He et al. 2016, with a learned shortcut at every level).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, out_ch)
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): GAP, Linear C->C/r, ReLU, Linear C/r->C, sigmoid.

    The hidden width is at least 1 so that tiny test widths (C < r) still build.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))  # (B, C)
        return x * weights[:, :, None, None]


class ResSEBlock(nn.Sequential):
    """One Res-SE encoder level: ResidualBlock then SEBlock (method.md section 2, encoder B)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ResidualBlock(in_ch, out_ch), SEBlock(out_ch))


class Up(nn.Sequential):
    """Nearest x2 upsampling then Conv3x3-BN-ReLU (method.md section 2, "up")."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(in_ch, out_ch))


Block = Callable[[int, int], nn.Module]


class UNetEncoder(nn.Module):
    """UNet contracting path: level 1 at full resolution, MaxPool(2) before each next level."""

    def __init__(self, in_ch: int, widths, block: Block):
        super().__init__()
        chans = [in_ch, *widths]
        self.levels = nn.ModuleList(block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.MaxPool2d(2)
        self.out_channels = list(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the skips, shallow first: level i has ``widths[i]`` channels at stride 2**i."""
        skips = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """UNet expanding path; level i: Up(prev -> widths[i]), concat skip i, block(w + skip -> w).

    ``skip_chs`` and the ``skips`` passed to ``forward`` are ordered deepest first.
    """

    def __init__(self, bottleneck_ch: int, skip_chs, widths, block: Block):
        super().__init__()
        if len(skip_chs) != len(widths):
            raise ValueError(f"need one skip per level, got {len(skip_chs)} skips, {len(widths)} widths")
        prev = [bottleneck_ch, *widths[:-1]]
        self.ups = nn.ModuleList(Up(p, w) for p, w in zip(prev, widths))
        self.blocks = nn.ModuleList(block(w + s, w) for w, s in zip(widths, skip_chs))
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor, skips) -> torch.Tensor:
        for up, block, skip in zip(self.ups, self.blocks, skips):
            # skip first in the concatenation, as in the authors' code
            x = block(torch.cat([skip, up(x)], dim=1))  # (B, w, 2h, 2w)
        return x


class SaliencyHead(nn.Module):
    """Conv3x3-BN-ReLU, Conv1x1 -> 1, log-softmax over all H*W pixels (method.md section 2).

    Returns log-probabilities so that the KL loss (method.md section 3) needs no extra log.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, in_ch)
        self.out = nn.Conv2d(in_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.out(self.conv(x))  # (B, 1, H, W)
        return F.log_softmax(z.flatten(1), dim=1).view_as(z)  # logsumexp over H*W == 0


class FusionClassifier(nn.Sequential):
    """Linear -> Dropout -> ReLU -> Linear, in this order as in method.md section 2."""

    def __init__(self, in_features: int, hidden: int = 64, dropout: float = 0.25, num_classes: int = 3):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


# ----------------------------------------------------------------------------- DenseNet encoder

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
    """Encoder A (method.md section 2): a torchvision DenseNet with two taps at stride 32.

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


# ----------------------------------------------------------------------------- models


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-2] % 32 or x.shape[-1] % 32:
        raise ValueError(f"expected input (B, 1, H, W) with H and W multiples of 32, got {tuple(x.shape)}")


class _Net(nn.Module):
    """timm-style contract shared by all models: forward = forward_head(forward_features(x))."""

    _part_names: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def parts(self) -> OrderedDict[str, nn.Module]:
        """The model's stages by name, in order (what a training stage freezes or trains)."""
        return OrderedDict((name, getattr(self, name)) for name in self._part_names)


class _MultiTaskNet(_Net):
    """Heads shared by the multi-task UNets (method.md section 2, fusion classifier + saliency)."""

    def forward_head(self, features: dict, *, pre_logits: bool = False):
        decoder = features["decoder"]  # (B, 64, H, W)
        fused = torch.cat([features["pooled"], decoder.mean(dim=(2, 3))], dim=1)  # (B, 1920 + 64)
        if pre_logits:
            return fused
        return {"logits": self.classifier(fused), "saliency_log": self.saliency_head(decoder)}


class DualEncoderMTUNet(_MultiTaskNet):
    """The paper's network (method.md section 2): DenseNet + Res-SE encoders, one UNet decoder.

    The encoders meet only at the bottleneck: the decoder starts from denseblock4 at /32 and takes
    its skips e5..e1 from the Res-SE encoder.
    """

    _part_names = ("densenet", "res_se", "decoder", "saliency_head", "classifier")

    def __init__(self, *, pretrained=False, num_classes: int = 3, base_width: int = 64,
                 densenet_arch: str = "densenet201", stem: str = "repeat", dropout: float = 0.25,
                 memory_efficient: bool = False):
        super().__init__()
        w = base_width
        self.densenet = DenseNetEncoder(arch=densenet_arch, pretrained=pretrained, stem=stem,
                                        memory_efficient=memory_efficient)
        self.res_se = UNetEncoder(1, [w, 2 * w, 4 * w, 8 * w, 16 * w], ResSEBlock)
        self.decoder = UNetDecoder(self.densenet.out_channels, self.res_se.out_channels[::-1],
                                   [8 * w, 4 * w, 2 * w, w, w], DoubleConv)
        self.saliency_head = SaliencyHead(self.decoder.out_channels)
        self.classifier = FusionClassifier(self.densenet.out_channels + self.decoder.out_channels,
                                           dropout=dropout, num_classes=num_classes)

    def forward_features(self, x: torch.Tensor, *, dense: dict | None = None) -> dict[str, torch.Tensor]:
        """``dense``: cached DenseNet outputs (``bottleneck``, ``pooled``) to skip encoder A."""
        _check_input(x)
        if dense is None:
            dense = self.densenet(x)  # bottleneck (B, 1920, H/32, W/32), pooled (B, 1920)
        skips = self.res_se(x)  # e1 (B, 64, H, W) ... e5 (B, 1024, H/16, W/16)
        d1 = self.decoder(dense["bottleneck"], skips[::-1])  # (B, 64, H, W)
        return {"bottleneck": dense["bottleneck"], "pooled": dense["pooled"], "decoder": d1}

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        return [self.densenet.features.denseblock4]


class MTUNet(_MultiTaskNet):
    """MT-UNet baseline (Zhu et al. 2022; method.md section 2, baselines): one plain UNet.

    4 max-pools, widths base_width * (1, 2, 4, 8, 16); classifier on concat[GAP(e5), GAP(d_last)].
    ``encoder_block`` swaps the encoder's DoubleConv (ResSEUNet); the decoder stays DoubleConv.
    """

    _part_names = ("encoder", "decoder", "saliency_head", "classifier")

    def __init__(self, *, num_classes: int = 3, base_width: int = 64, dropout: float = 0.25,
                 encoder_block: Block = DoubleConv):
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.encoder = UNetEncoder(1, widths, encoder_block)
        self.decoder = UNetDecoder(widths[-1], widths[-2::-1], widths[-2::-1], DoubleConv)
        self.saliency_head = SaliencyHead(self.decoder.out_channels)
        self.classifier = FusionClassifier(widths[-1] + self.decoder.out_channels,
                                           dropout=dropout, num_classes=num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x)
        skips = self.encoder(x)  # e1 (B, 64, H, W) ... e5 (B, 1024, H/16, W/16)
        e5 = skips[-1]
        d = self.decoder(e5, skips[-2::-1])  # (B, 64, H, W)
        return {"bottleneck": e5, "pooled": e5.mean(dim=(2, 3)), "decoder": d}  # pooled (B, 1024)

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        return [self.encoder.levels[-1]]


class ResSEUNet(MTUNet):
    """"Res-SE UNet" baseline: MT-UNet whose encoder levels are ResSEBlocks, no DenseNet."""

    def __init__(self, *, num_classes: int = 3, base_width: int = 64, dropout: float = 0.25):
        super().__init__(num_classes=num_classes, base_width=base_width, dropout=dropout,
                         encoder_block=ResSEBlock)


class DenseNetClassifier(_Net):
    """DenseNet alone with Linear(1920 -> classes): stages 1a/1b (method.md sections 3-4).

    The encoder is named ``densenet`` as in DualEncoderMTUNet, so ``densenet.*`` keys carry over.
    ``embedding`` = GAP(denseblock4), the feature of the contrastive stage (method.md section 3).
    """

    _part_names = ("densenet", "classifier")

    def __init__(self, *, pretrained=False, num_classes: int = 3, densenet_arch: str = "densenet201",
                 stem: str = "repeat", memory_efficient: bool = False):
        super().__init__()
        self.densenet = DenseNetEncoder(arch=densenet_arch, pretrained=pretrained, stem=stem,
                                        memory_efficient=memory_efficient)
        self.classifier = nn.Linear(self.densenet.out_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x)
        return self.densenet(x)

    def forward_head(self, features: dict, *, pre_logits: bool = False):
        if pre_logits:
            return features["pooled"]  # (B, 1920)
        return {
            "logits": self.classifier(features["pooled"]),  # (B, num_classes)
            "embedding": features["bottleneck"].mean(dim=(2, 3)),  # (B, 1920)
        }

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        return [self.densenet.features.denseblock4]


_REGISTRY = {"dual": DualEncoderMTUNet, "mtunet": MTUNet, "resse_unet": ResSEUNet,
             "densenet": DenseNetClassifier}
MODEL_NAMES = tuple(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name (one of ``MODEL_NAMES``) with keyword arguments."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name](**kwargs)


def parameter_table(model: nn.Module) -> list[dict]:
    """Rows {part, params, trainable} for each of ``model.parts()``, then a ``total`` row."""
    def row(name, module):
        params = list(module.parameters())
        return {"part": name, "params": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad)}

    return [row(name, part) for name, part in model.parts().items()] + [row("total", model)]


def format_parameter_table(rows: list[dict]) -> str:
    """Aligned text table of ``parameter_table`` rows."""
    cells = [("part", "params", "trainable")]
    cells += [(r["part"], f"{r['params']:,}", f"{r['trainable']:,}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
