"""Which UNet levels to checkpoint, from a memory budget (``activation_checkpointing="auto"``).

Activation checkpointing (:func:`cxrlib.model.blocks.run_level`) saves memory only where a level
keeps large activations for the backward pass, and costs a recomputation wherever it is on. So
"auto" checkpoints the fewest levels, largest first, that bring the step's estimated peak under
the budget.

The estimate (an estimate, not a measurement of a card): the tensors autograd saves for the
backward pass are counted, by size, in one training forward pass of a copy of the model on the
CPU at a small size (64x64, batch 2), per UNet level and for the rest of the network, and scaled
to the stage's image size and batch (activations grow with pixels x batch). Added: the weights,
and gradients plus Adam's two moments of the parameters that train. Under half-precision
autocast the activations count half (their saved tensors are bf16/fp16) plus a half-precision
copy of the weights. Not counted: cuDNN workspaces and the allocator's fragmentation, which is
what the budget's headroom (default 14 GiB on a 16 GB card) is for.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from cxrlib.model.blocks import set_activation_checkpointing, unet_levels

PROBE_SIZE, PROBE_BATCH = (64, 64), 2
GIB = 1024 ** 3


def _saved_bytes(model: nn.Module, x: torch.Tensor, current: list) -> dict:
    """Bytes of the distinct tensors autograd saves in ``model(x)``, by the label in ``current``."""
    seen: set = {(p.untyped_storage().data_ptr(), p.storage_offset(), p.numel()) for p in model.parameters()}
    totals: dict = {}  # weights are counted apart (estimate_peak_bytes): they do not grow with the image

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen and t.numel() > 1:
            seen.add(key)
            totals[current[-1]] = totals.get(current[-1], 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return totals


def _level_modules(module: nn.Module, index: int) -> list[nn.Module]:
    if hasattr(module, "levels"):  # UNetEncoder
        return [module.levels[index]]
    return [module.ups[index], module.blocks[index]]  # UNetDecoder: up, (concat), block


def level_activation_bytes(model: nn.Module, image_size=PROBE_SIZE, batch_size: int = PROBE_BATCH) -> dict:
    """Saved-for-backward bytes per UNet level (``"res_se.4"``, ...) and ``"rest"``, at float32,
    measured on a CPU copy of ``model`` (its trainable flags kept) and scaled from the probe's
    64x64 x 2 to ``image_size`` x ``batch_size``."""
    probe = copy.deepcopy(model).cpu().float().train()
    set_activation_checkpointing(probe, False)
    current = ["rest"]
    handles = []
    for name, (module, index) in unet_levels(probe).items():
        for part in _level_modules(module, index):
            handles.append(part.register_forward_pre_hook(lambda m, args, name=name: current.append(name)))
            handles.append(part.register_forward_hook(lambda m, args, out: current.pop() and None))  # None: output kept
    try:
        # the probe draws (its input, the classifier's dropout) from a forked generator: the run's random
        # state stays as seeded, so a run with the estimate trains exactly as one without
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            x = torch.rand(PROBE_BATCH, 1, *PROBE_SIZE)
            totals = _saved_bytes(probe, x, current)
    finally:
        for h in handles:
            h.remove()
    scale = (image_size[0] * image_size[1]) / (PROBE_SIZE[0] * PROBE_SIZE[1]) * batch_size / PROBE_BATCH
    out = {name: int(totals.get(name, 0) * scale) for name in unet_levels(probe)}
    out["rest"] = int(totals.get("rest", 0) * scale)
    return out


def estimate_peak_bytes(model: nn.Module, sizes: dict, checkpointed, *, half: bool) -> int:
    """The step's estimated peak: weights (+ a half copy under autocast), gradients and Adam's
    moments of the trained parameters, the saved activations of every level not checkpointed
    and of the rest, the inputs a checkpointed level keeps (counted as its largest level's
    recomputation: one level's activations live at a time in the backward pass)."""
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = 4 * params + 3 * 4 * trained + (2 * params if half else 0)
    act = sizes["rest"] + sum(v for k, v in sizes.items() if k != "rest" and k not in checkpointed)
    recompute = max((sizes[k] for k in checkpointed), default=0)
    return int(fixed + (act + recompute) * (0.5 if half else 1.0))


def choose_checkpoint_levels(model: nn.Module, *, image_size, batch_size: int, budget_gib: float,
                             half: bool, sizes: dict | None = None) -> tuple[list[str], int]:
    """The fewest UNet levels, largest first, that bring the estimated peak under ``budget_gib``;
    returns (level names, estimated peak in bytes). When even every level does not fit, every
    level, with a warning."""
    sizes = sizes if sizes is not None else level_activation_bytes(model, image_size, batch_size)
    order = sorted((k for k in sizes if k != "rest"), key=lambda k: -sizes[k])
    chosen: list[str] = []
    peak = estimate_peak_bytes(model, sizes, chosen, half=half)
    for name in order:
        if peak <= budget_gib * GIB:
            break
        chosen.append(name)
        peak = estimate_peak_bytes(model, sizes, chosen, half=half)
    if peak > budget_gib * GIB:
        warnings.warn(f"activation_checkpointing='auto': even with every UNet level checkpointed the estimated "
                      f"peak is {peak / GIB:.1f} GiB, over checkpoint_budget_gib={budget_gib}; lower batch_size "
                      f"or image_size", stacklevel=2)
    return chosen, peak
