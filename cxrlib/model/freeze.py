"""Which parts of a network train in a stage: the rest is frozen (no gradient) and, by default,
kept in eval mode so that its BatchNorm statistics do not move (docs/method.md section 4)."""

from __future__ import annotations

from torch import nn


def set_trainable(model: nn.Module, train_parts) -> list[nn.Parameter]:
    """Freeze every part not in ``train_parts``; return the parameters that train."""
    parts = model.parts()
    unknown = sorted(set(train_parts) - set(parts))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; this model has {list(parts)}")
    params = []
    for name, part in parts.items():
        trains = name in train_parts
        part.requires_grad_(trains)
        if trains:
            params += list(part.parameters())
    return params


def set_modes(model: nn.Module, train_parts, frozen_bn: str = "eval") -> None:
    """Training mode for the trained parts; eval mode for the frozen ones unless told otherwise."""
    model.train()
    if frozen_bn == "eval":
        for name, part in model.parts().items():
            if name not in train_parts:
                part.eval()
