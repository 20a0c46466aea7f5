"""Networks: the dual-encoder multi-task UNet (docs/method.md section 2) and baselines.

Every model takes a grey image ``(B, 1, H, W)`` with H and W multiples of 32 and follows timm's
contract: ``forward_features`` -> dict of feature maps, ``forward_head(features, pre_logits=...)``,
``forward`` = both, ``parts()`` names the trainable stages (docs/method.md section 4) and
``cam_target_layers`` names the Grad-CAM layer (docs/method.md section 7).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cxrlib.model.blocks import (Block, DoubleConv, FusionClassifier, ResSEBlock, SaliencyHead, UNetDecoder,
                                 UNetEncoder)
from cxrlib.config.choices import MODEL_NAMES
from cxrlib.model.densenet import DenseNetEncoder



def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-2] % 32 or x.shape[-1] % 32:
        raise ValueError(f"expected input (B, 1, H, W) with H and W multiples of 32, got {tuple(x.shape)}")


def predicted_maps(outputs: dict, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The predicted gaze maps of a model's ``outputs``: ``exp(saliency_log)`` as (B, H, W) in
    ``dtype``, each renormalised to sum to 1 (on the outputs' device, gradient kept).

    The one place the network's log-probabilities become maps, so every caller (predict, the
    validation scores, the CAM scoreboard, TensorBoard) has the same numerics. The renormalisation
    is in ``dtype`` because a float32 log-softmax sums to 1 only to about 1e-6."""
    maps = outputs["saliency_log"][:, 0].to(dtype).exp()
    return maps / maps.sum(dim=(-2, -1), keepdim=True)


class _Net(nn.Module):
    """timm-style contract shared by all models: forward = forward_head(forward_features(x)).

    ``_renamed_parts``: {old name: new name} of parts renamed since checkpoints were written;
    ``current_keys`` and ``load_state_dict`` read a state dict with the old names as the new."""

    _part_names: tuple[str, ...] = ()
    _renamed_parts: dict[str, str] = {}

    def __init__(self):
        super().__init__()
        if self._renamed_parts:
            self.register_load_state_dict_pre_hook(self._rename_old_keys)

    @classmethod
    def current_keys(cls, weights: dict, prefix: str = "") -> dict:
        """``weights`` (a state dict, keys under ``prefix``) with each renamed part's old keys
        under its current name; other keys unchanged, in order."""
        def rename(key: str) -> str:
            for old, new in cls._renamed_parts.items():
                if key.startswith(f"{prefix}{old}."):
                    return f"{prefix}{new}." + key[len(prefix) + len(old) + 1:]
            return key
        return {rename(k): v for k, v in weights.items()}

    @staticmethod
    def _rename_old_keys(module, state_dict, prefix, *args) -> None:
        """``load_state_dict`` pre-hook: a checkpoint from before a part's rename loads as is."""
        renamed = module.current_keys(state_dict, prefix)
        state_dict.clear()
        state_dict.update(renamed)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def parts(self) -> OrderedDict[str, nn.Module]:
        """The model's stages by name, in order (what a training stage freezes or trains)."""
        return OrderedDict((name, getattr(self, name)) for name in self._part_names)


class _MultiTaskNet(_Net):
    """Heads shared by the multi-task UNets (docs/method.md section 2, fusion classifier + saliency)."""

    def forward_head(self, features: dict, *, pre_logits: bool = False):
        decoder = features["decoder"]  # (B, 64, H, W)
        fused = torch.cat([features["pooled"], decoder.mean(dim=(2, 3))], dim=1)  # (B, 1920 + 64)
        if pre_logits:
            return fused
        return {"logits": self.classifier(fused), "saliency_log": self.saliency_head(decoder)}


class DualEncoderMTUNet(_MultiTaskNet):
    """The paper's network (docs/method.md section 2): DenseNet + Res-SE encoders, one UNet decoder.

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
    """MT-UNet baseline (Zhu et al. 2022; docs/method.md section 2, baselines): one plain UNet.

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
    """DenseNet alone with Linear(1920 -> classes): stages 1a/1b (docs/method.md sections 3-4).

    The encoder is named ``densenet`` as in DualEncoderMTUNet, so ``densenet.*`` keys carry over.
    The Linear head is ``linear_head``, not ``classifier`` (the fusion head's name in the
    multi-task networks); checkpoints written when it was ``classifier`` still load.
    ``embedding`` = GAP(denseblock4), the feature of the contrastive stage (docs/method.md section 3).
    """

    _part_names = ("densenet", "linear_head")
    _renamed_parts = {"classifier": "linear_head"}

    def __init__(self, *, pretrained=False, num_classes: int = 3, densenet_arch: str = "densenet201",
                 stem: str = "repeat", memory_efficient: bool = False):
        super().__init__()
        self.densenet = DenseNetEncoder(arch=densenet_arch, pretrained=pretrained, stem=stem,
                                        memory_efficient=memory_efficient)
        self.linear_head = nn.Linear(self.densenet.out_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x)
        return self.densenet(x)

    def forward_head(self, features: dict, *, pre_logits: bool = False):
        if pre_logits:
            return features["pooled"]  # (B, 1920)
        return {
            "logits": self.linear_head(features["pooled"]),  # (B, num_classes)
            "embedding": features["bottleneck"].mean(dim=(2, 3)),  # (B, 1920)
        }

    @property
    def cam_target_layers(self) -> list[nn.Module]:
        return [self.densenet.features.denseblock4]


_REGISTRY = {"dual": DualEncoderMTUNet, "mtunet": MTUNet, "resse_unet": ResSEUNet,
             "densenet": DenseNetClassifier}
if tuple(_REGISTRY) != MODEL_NAMES:  # the names are declared in cxrlib.config.choices
    raise RuntimeError(f"networks {tuple(_REGISTRY)} differ from cxrlib.config.choices {MODEL_NAMES}")


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
