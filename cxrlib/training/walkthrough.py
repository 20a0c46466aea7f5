"""One training step written out, for the stage notebooks (02-05) to show before ``run_stage``.

:func:`one_step` does on a copy of the model what :meth:`cxrlib.training.trainer.Trainer.train_epoch`
does for every batch: freeze the parts the stage does not train (``cxrlib.model.freeze``), take
one training batch, run the stage's step function (``cxrlib.training.steps``: forward pass and
the ``cxrlib.losses`` loss), ``backward()``, one Adam step. It records what a student wants to
see: the output shape of each part of the network, the loss, which parts received a gradient,
how far each part's weights moved, and whether the BatchNorm layers of the frozen parts are in
eval mode. The copy keeps the notebook's own model untouched, so ``run_stage`` afterwards
trains exactly what it would have trained without this step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrlib.data import collate
from cxrlib.model.freeze import set_modes, set_trainable
from cxrlib.runtime import config_device
from cxrlib import losses
from cxrlib.training import precision
from cxrlib.training.batches import to_device
from cxrlib.training.stages import stage_of


def _shapes(value):
    """Tensor -> shape tuple; a dict or list of tensors -> the same structure of shapes."""
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shapes(v) for v in value]
    return type(value).__name__


@dataclass
class StepReport:
    """What one training step did (see the module docstring)."""

    stage: str
    input_shape: tuple
    loss: float
    part_shapes: dict = field(default_factory=dict)  # part -> output shape(s); absent: not run
    trained: dict = field(default_factory=dict)  # part -> True (trains) / False (frozen)
    grad_norm: dict = field(default_factory=dict)  # part -> L2 norm of its gradient (0: none)
    weight_change: dict = field(default_factory=dict)  # part -> largest |w_after - w_before|
    frozen_batchnorm_eval: dict = field(default_factory=dict)  # frozen part with BatchNorm -> all in eval mode

    def __str__(self) -> str:
        lines = [f"{self.stage}: one step on a batch of {self.input_shape[0]} images {self.input_shape}",
                 f"loss = {self.loss:.4f}", "part            trains  output shape(s)"]
        for part, trains in self.trained.items():
            shape = self.part_shapes.get(part, "not run in this stage's forward pass")
            lines.append(f"  {part:<14}{'yes' if trains else 'no':<8}{shape}")
        lines.append("part            |gradient|   largest weight change")
        for part in self.trained:
            lines.append(f"  {part:<14}{self.grad_norm[part]:<13.3g}{self.weight_change[part]:.3g}")
        for part, ok in self.frozen_batchnorm_eval.items():
            lines.append(f"frozen {part}: BatchNorm layers in {'eval' if ok else 'TRAIN'} mode")
        return "\n".join(lines)


def first_batch(dataset, config) -> dict:
    """The first training batch of ``config.batch_size`` samples, in file order, on the device."""
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate)
    return to_device(next(iter(loader)), config_device(config))


def one_step(config, dataset, model: nn.Module) -> StepReport:
    """One training step of ``config.stage`` on a copy of ``model`` (module docstring)."""
    entry = stage_of(config)
    device = config_device(config)
    student = copy.deepcopy(model).to(device)
    parts = entry.trained_parts(config, student)
    extra = nn.ModuleDict(entry.extra(config, student) if entry.extra else {}).to(device)
    params = set_trainable(student, parts) + list(extra.parameters())  # the rest: requires_grad False
    set_modes(student, parts, config.frozen_bn)  # trained parts in train mode, frozen ones in eval
    extra.train()
    optimizer = precision.adam(params, lr=config.lr, device=device)
    step = entry.step(config)

    shapes, hooks = {}, []
    for name, part in student.parts().items():  # a hook that returns None leaves the output as it is
        hooks.append(part.register_forward_hook(
            lambda m, i, out, name=name: None if shapes.setdefault(name, _shapes(out)) else None))
    before = {name: [p.detach().clone() for p in part.parameters()] for name, part in student.parts().items()}
    batch = first_batch(dataset, config)
    try:
        out = step(student, batch, **({"extra": extra} if len(extra) else {}))  # forward pass + cxrlib loss
    finally:
        for hook in hooks:
            hook.remove()
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    grads = {name: float(sum((p.grad.float() ** 2).sum() for p in part.parameters() if p.grad is not None) ** 0.5)
             for name, part in student.parts().items()}
    optimizer.step()
    change = {name: max((float((p.detach() - b).abs().max()) for p, b in zip(part.parameters(), before[name])),
                        default=0.0) for name, part in student.parts().items()}
    norms = {name: [m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
             for name, part in student.parts().items() if name not in parts}
    bn_eval = {name: all(not m.training for m in found) for name, found in norms.items() if found}
    return StepReport(stage=config.stage, input_shape=tuple(batch["image"].shape), loss=float(out["loss"].detach()),
                      part_shapes=shapes, trained={name: name in parts for name in student.parts()},
                      grad_norm=grads, weight_change=change, frozen_batchnorm_eval=bn_eval)


def triplet_count(labels: torch.Tensor) -> int:
    """The valid (anchor, positive, negative) triplets of a batch: sum over anchors of
    (other samples of its class) x (samples of other classes)."""
    same = labels.reshape(-1, 1) == labels.reshape(1, -1)
    return int(((same.sum(1) - 1) * (~same).sum(1)).sum())


@torch.no_grad()
def triplet_loss_per_triplet(model: nn.Module, dataset, config) -> dict:
    """Stage 1a's triplet loss on ``dataset`` in eval mode, in batches of ``config.batch_size``:
    the summed loss per batch (what the history shows) and the loss per triplet (comparable
    between splits and batch sizes). Returns ``{"sum_per_batch", "per_triplet", "triplets_per_batch"}``.
    """
    if config.loss != "triplet":
        raise ValueError(f"triplet_loss_per_triplet needs loss='triplet', this run uses {config.loss!r}")
    device = config_device(config)
    model = model.to(device).eval()
    total, triplets, batches = 0.0, 0, 0
    for batch in DataLoader(dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate):
        batch = to_device(batch, device)
        if config.triplet_feature == "map":
            features = model.forward_features(batch["image"])["bottleneck"]
        else:
            features = model(batch["image"])["embedding"]
        total += float(losses.triplet_all(features, batch["label"], margin=config.margin, reduction="sum"))
        triplets += triplet_count(batch["label"])
        batches += 1
    return {"sum_per_batch": total / max(batches, 1), "per_triplet": total / max(triplets, 1),
            "triplets_per_batch": triplets / max(batches, 1)}
