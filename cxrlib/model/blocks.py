"""Building blocks of the networks (docs/method.md section 2): Conv-BN-ReLU, the UNet block, the
residual and Squeeze-and-Excitation blocks, the UNet encoder and decoder, the two heads, and
activation checkpointing of encoder and decoder levels (the memory/speed knob of a stage).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint



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
    """The UNet block, 2 x (Conv3x3-BN-ReLU) (docs/method.md section 2, "block"; Ronneberger 2015)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class ResidualBlock(nn.Module):
    """Conv3x3-BN-ReLU-Conv3x3-BN plus a Conv3x3 shortcut (bias, no BN, as in the code); add; ReLU.

    docs/method.md section 2, encoder B (He et al. 2016, with a learned shortcut at every level).
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
    """One Res-SE encoder level: ResidualBlock then SEBlock (docs/method.md section 2, encoder B)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ResidualBlock(in_ch, out_ch), SEBlock(out_ch))


class Up(nn.Sequential):
    """Nearest x2 upsampling then Conv3x3-BN-ReLU (docs/method.md section 2, "up")."""

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
        self.checkpointing = False  # bool, or a set of level indices: see set_activation_checkpointing

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the skips, shallow first: level i has ``widths[i]`` channels at stride 2**i."""
        skips = []
        for i, level in enumerate(self.levels):
            x = run_level(level, x if i == 0 else self.pool(x), checkpointing=level_checkpointed(self, i))
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
        self.checkpointing = False  # bool, or a set of level indices: see set_activation_checkpointing

    def forward(self, x: torch.Tensor, skips) -> torch.Tensor:
        for i, (up, block, skip) in enumerate(zip(self.ups, self.blocks, skips)):
            # skip first in the concatenation, as in the authors' code
            x = run_level(_UpConcat(up, block), x, skip, checkpointing=level_checkpointed(self, i))  # (B, w, 2h, 2w)
        return x


class _UpConcat(nn.Module):
    """One decoder level as a single callable (what activation checkpointing recomputes)."""

    def __init__(self, up: nn.Module, block: nn.Module):
        super().__init__()
        self.up, self.block = up, block

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))


class SaliencyHead(nn.Module):
    """Conv3x3-BN-ReLU, Conv1x1 -> 1, log-softmax over all H*W pixels (docs/method.md section 2).

    Returns log-probabilities so that the KL loss (docs/method.md section 3) needs no extra log.
    """

    def __init__(self, in_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, in_ch)
        self.out = nn.Conv2d(in_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.out(self.conv(x))  # (B, 1, H, W)
        return F.log_softmax(z.flatten(1), dim=1).view_as(z)  # logsumexp over H*W == 0


class FusionClassifier(nn.Sequential):
    """Linear -> Dropout -> ReLU -> Linear, in this order as in docs/method.md section 2."""

    def __init__(self, in_features: int, hidden: int = 64, dropout: float = 0.25, num_classes: int = 3):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )




# ----------------------------------------------------------------------------- activation checkpointing


@contextmanager
def batchnorm_stats_frozen(module: nn.Module):
    """Leave the running statistics of ``module``'s BatchNorm layers untouched inside the block.

    Activation checkpointing runs a level's forward twice (once for the output, once in the
    backward pass to rebuild what was not stored). In training mode BatchNorm would then move its
    running mean and variance twice per step. With momentum 0 the update is
    ``(1 - 0) * running + 0 * batch``, which leaves the running statistics bit for bit as they
    were; the normalisation itself still uses the batch statistics, so the recomputed output is
    the one of the first pass. ``num_batches_tracked`` is put back too.
    """
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:  # also when the recomputation stops early (torch.utils.checkpoint's early stop)
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def run_level(level: nn.Module, *inputs: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """``level(*inputs)``; with ``checkpointing`` (and gradients on) its activations are not kept
    but recomputed in the backward pass, trading about a third more compute for memory."""
    if not (checkpointing and torch.is_grad_enabled()):
        return level(*inputs)
    calls = []

    def forward(*args):
        calls.append(1)
        if len(calls) == 1:
            return level(*args)
        with batchnorm_stats_frozen(level):  # the recomputation in the backward pass
            return level(*args)

    return checkpoint(forward, *inputs, use_reentrant=False)


def level_checkpointed(module: nn.Module, index: int) -> bool:
    """Whether level ``index`` of a UNet encoder/decoder is checkpointed: ``module.checkpointing``
    is a bool (every level or none) or a set of level indices."""
    flag = module.checkpointing
    return flag if isinstance(flag, bool) else index in flag


def unet_levels(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """Every UNet encoder and decoder level of ``model`` by name (``"res_se.4"``, ``"decoder.0"``;
    the index counts in the module's order: encoder shallow first, decoder deepest first)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (UNetEncoder, UNetDecoder)):
            count = len(module.levels) if isinstance(module, UNetEncoder) else len(module.blocks)
            out.update({f"{name}.{i}": (module, i) for i in range(count)})
    return out


def set_activation_checkpointing(model: nn.Module, enabled) -> int:
    """Switch checkpointing of the UNet encoder and decoder levels of ``model``; return how many
    encoders/decoders there are. ``enabled``: True (every level), False (none), or level names
    (`unet_levels`; a list, or one comma-separated string) for exactly those levels. The
    DenseNet is left alone: torchvision's own ``memory_efficient`` option recomputes its
    BatchNorm layers with their statistics updated twice."""
    levels = unet_levels(model)
    if isinstance(enabled, str):
        enabled = [n.strip() for n in enabled.split(",") if n.strip()]
    chosen: dict = {}
    if not isinstance(enabled, bool):
        unknown = sorted(set(enabled) - set(levels))
        if unknown:
            raise ValueError(f"activation_checkpointing: unknown level(s) {unknown}; this model has "
                             f"{list(levels)} (or use True, False or 'auto')")
        for name in enabled:
            module, index = levels[name]
            chosen.setdefault(id(module), set()).add(index)
    modules = {id(m): m for m, _ in levels.values()}
    for key, module in modules.items():
        module.checkpointing = bool(enabled) if isinstance(enabled, bool) else frozenset(chosen.get(key, ()))
    return len(modules)
