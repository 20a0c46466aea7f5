"""How much memory a stage's training step needs, estimated before the run, and the check that
refuses a run that cannot fit.

Activations dominate: autograd keeps, for the backward pass, every tensor the forward pass saved,
and their size grows with the pixels of the batch. The estimate runs the stage's model once on a
small probe image (the stage's parts already frozen or trainable, as the step runs them), adds up
the bytes of every tensor autograd saves, and scales them by pixels and batch size. Weights,
gradients and Adam's two moments are added per trainable parameter. The estimate is float32:
half-precision autocast and activation checkpointing need less, so on a GPU it is an upper bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

PROBE = (64, 64)  # the probe image: the smallest a five-level UNet takes, cheap on any CPU
SKIP_VARIABLE = "CXRLIB_SKIP_MEMORY_CHECK"  # set to 1 to train even when the estimate does not fit


class NotEnoughMemory(RuntimeError):
    """The estimated need of a stage exceeds the memory the device has free."""


def saved_activation_bytes(model: nn.Module, image_size=PROBE, batch: int = 1) -> int:
    """Bytes autograd keeps for the backward pass of one forward of ``model`` (each storage once)."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # weights are counted once, per parameter, by the caller
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    modes = {module: module.training for module in model.modules()}
    model.eval()  # BatchNorm's running statistics stay as they are: the probe changes no weight or buffer
    try:
        x = torch.zeros(batch, 1, *image_size, device=next(model.parameters()).device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    finally:
        for module, training in modes.items():  # each part's own mode back (frozen parts may be in eval)
            module.training = training
    return sum(seen.values())


def estimate_training_bytes(model: nn.Module, image_size, batch_size: int) -> int:
    """Estimated peak bytes of a float32 training step at ``image_size`` and ``batch_size``."""
    h, w = image_size
    per_probe = saved_activation_bytes(model, PROBE)
    activations = per_probe * (h * w) / (PROBE[0] * PROBE[1]) * batch_size
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(activations + weights + 3 * trainable)  # + gradients and Adam's two moments


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


def check_fits(model: nn.Module, config, device, *, stage: str) -> int | None:
    """Refuse (CPU) or warn (GPU, where the estimate is an upper bound) when the step cannot fit.

    Returns the estimate in bytes, or None when the device's free memory is unknown."""
    free = available_bytes(device)
    if free is None or os.environ.get(SKIP_VARIABLE) == "1":
        return None
    need = estimate_training_bytes(model, config.image_size, config.batch_size)
    if need <= free:
        return need
    figure = (f"{stage} at image_size {tuple(config.image_size)}, batch_size {config.batch_size} needs about "
              f"{need / 2**30:.1f} GiB (float32 estimate) and {torch.device(device)} has {free / 2**30:.1f} GiB free")
    if torch.device(device).type == "cpu":
        raise NotEnoughMemory(f"{figure}: lower image_size or batch_size, or set {SKIP_VARIABLE}=1 to try anyway")
    import warnings

    warnings.warn(f"{figure}; mixed precision and activation_checkpointing need less, so it may still fit",
                  stacklevel=2)
    return need
