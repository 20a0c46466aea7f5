"""The check before a stage trains: refuse a run whose estimated memory need cannot fit.

The estimate is :mod:`cxrlib.model.memory`'s, the one ``activation_checkpointing="auto"`` chooses
levels by: the tensors autograd saves on a small probe, scaled to the stage's image size and batch,
plus weights, gradients and Adam's moments, with the levels this run checkpoints and half-precision
activations under CUDA autocast. On the CPU a run over the machine's available memory is refused
with both figures (the operating system would kill it without a word, exit 137); on a GPU it only
warns, since the allocator's behaviour and cuDNN workspaces make the figure rough.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from cxrlib.model.memory import GIB, estimate_peak_bytes, level_activation_bytes

SKIP_VARIABLE = "CXRLIB_SKIP_MEMORY_CHECK"  # set to 1 to train even when the estimate does not fit


class NotEnoughMemory(RuntimeError):
    """The estimated need of a stage exceeds the memory the device has free."""


def available_bytes(device) -> int | None:
    """Free memory of ``device``: CUDA's free memory, or the host's MemAvailable; None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None  # MPS, or a system without /proc/meminfo: not checked


def checkpointed_levels(config, levels) -> list[str]:
    """The UNet levels this run checkpoints; ``"auto"`` counts as every level (the least it can need)."""
    setting = getattr(config, "activation_checkpointing", False)
    if setting is True or setting == "auto":
        return list(levels)
    if isinstance(setting, str):
        return [name.strip() for name in setting.split(",") if name.strip() in levels]
    return []


def estimate_need(model: nn.Module, config, device) -> int:
    """Estimated peak bytes of one training step of ``model`` (its trainable flags as set)."""
    sizes = level_activation_bytes(model, tuple(config.image_size), config.batch_size)
    half = torch.device(device).type == "cuda" and getattr(config, "amp", None) is not False
    levels = [name for name in sizes if name != "rest"]
    return estimate_peak_bytes(model, sizes, checkpointed_levels(config, levels), half=half)


def check_fits(model: nn.Module, config, device, *, stage: str) -> int | None:
    """Refuse (CPU) or warn (GPU) when the step's estimate exceeds the free memory; return the
    estimate in bytes, or None when the device's free memory is unknown, the check is skipped
    (``CXRLIB_SKIP_MEMORY_CHECK=1``) or the model's blocks are compiled (``compile``)."""
    free = available_bytes(device)
    if free is None or os.environ.get(SKIP_VARIABLE) == "1" or getattr(config, "compile", False):
        return None  # compiled blocks: the probe would compile them again on the CPU
    need = estimate_need(model, config, device)
    if need <= free:
        return need
    figure = (f"{stage} at image_size {tuple(config.image_size)}, batch_size {config.batch_size} needs about "
              f"{need / GIB:.1f} GiB (estimate) and {torch.device(device)} has {free / GIB:.1f} GiB free")
    if torch.device(device).type == "cpu":
        raise NotEnoughMemory(f"{figure}: lower image_size or batch_size, or set {SKIP_VARIABLE}=1 to try anyway")
    warnings.warn(f"{figure}; activation_checkpointing or a smaller batch_size needs less", stacklevel=2)
    return need
