"""A picture of the dual-encoder network, drawn from the model itself (notebooks 02-05).

The shapes in the boxes are not typed in: :func:`network_shapes` runs the model on a zero input
with a forward hook on every part and records what comes out. The input lives on PyTorch's
``meta`` device, so only shapes are computed (no arithmetic, no memory for activations) and the
picture costs nothing even at the paper's 640x512. The parts a stage does not train are drawn
in grey, so a student sees which weights each stage of cooperative learning changes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cxrlib.config.stage_table import STAGE_TABLE

# Colours of the trained parts (colour-blind safe, matplotlib's "tab" set), grey for the rest.
_COLOURS = {"densenet": "#4c72b0", "res_se": "#dd8452", "decoder": "#55a868",
            "saliency_head": "#c44e52", "classifier": "#8172b3"}
_FROZEN = "#d9d9d9"
_PART_LABELS = {"densenet": "DenseNet201 encoder", "res_se": "Res-SE encoder", "decoder": "UNet decoder",
                "saliency_head": "saliency head", "classifier": "fusion classifier"}


def _meta_twin(model: nn.Module) -> dict:
    """Every parameter and buffer of ``model`` as an empty ``meta`` tensor of the same shape."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return {name: torch.empty_like(t, device="meta") for name, t in named.items()}


def network_shapes(image_size, *, model: nn.Module | None = None, base_width: int = 64,
                   densenet_arch: str = "densenet201") -> "OrderedDict[str, tuple]":
    """Output shape (without the batch axis) of every part of a ``DualEncoderMTUNet``.

    ``model``: the network to measure (its weights are not touched: the forward pass runs on meta
    copies); None builds one on the meta device with ``base_width`` and ``densenet_arch``.
    Keys: ``input``, ``bottleneck`` and ``pooled`` (DenseNet201's two taps), ``e1`` .. ``e5``
    (Res-SE levels), ``d5`` .. ``d1`` (decoder levels), ``saliency`` and ``logits``.
    """
    from cxrlib.model import DualEncoderMTUNet

    if model is None:
        with torch.device("meta"):
            model = DualEncoderMTUNet(base_width=base_width, densenet_arch=densenet_arch)
    if not isinstance(model, DualEncoderMTUNet):
        raise TypeError(f"network_shapes draws the dual-encoder network, got {type(model).__name__}")
    h, w = (int(s) for s in image_size)
    shapes: OrderedDict[str, tuple] = OrderedDict(input=(1, h, w))

    def record(name):
        def hook(module, args, output):
            if isinstance(output, dict):  # the DenseNet encoder returns its two taps
                shapes.update({key: tuple(value.shape[1:]) for key, value in output.items()})
            else:
                shapes[name] = tuple(output.shape[1:])
        return hook

    hooks = [model.densenet.register_forward_hook(record("densenet"))]
    hooks += [level.register_forward_hook(record(f"e{i + 1}")) for i, level in enumerate(model.res_se.levels)]
    n = len(model.decoder.blocks)
    hooks += [block.register_forward_hook(record(f"d{n - i}")) for i, block in enumerate(model.decoder.blocks)]
    hooks += [model.saliency_head.register_forward_hook(record("saliency")),
              model.classifier.register_forward_hook(record("logits"))]
    try:
        x = torch.zeros(1, 1, h, w, device="meta")
        with torch.no_grad():
            torch.func.functional_call(model, _meta_twin(model), (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def draw_network(stage: str, image_size, *, trained=None, base_width: int = 64,
                 densenet_arch: str = "densenet201", model: nn.Module | None = None):
    """Draw the dual-encoder multi-task UNet with each part's output shape at ``image_size``.

    The parts ``stage`` trains (``stages.STAGES``; or the names in ``trained``) are coloured,
    the others grey: frozen, or (stages 1a and 1b) not yet part of the network. Returns the
    figure; each part's box carries the part's name as its ``gid``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    if trained is None:
        from cxrlib.config import make_config
        from cxrlib.training.stages import STAGES

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {sorted(STAGES)}")
        trained = STAGES[stage].trained_parts(make_config(stage))  # the registry, at the stage's defaults
    trained = set(trained)
    linear_head = STAGE_TABLE.get(stage) is not None and STAGE_TABLE[stage].head == "linear"
    if linear_head:  # its Linear(1920 -> 3) on DenseNet is not in the dual network drawn here
        trained.discard("linear_head")
    unknown = trained - set(_COLOURS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)}; parts: {list(_COLOURS)}")
    s = network_shapes(image_size, model=model, base_width=base_width, densenet_arch=densenet_arch)
    fig, ax = plt.subplots(figsize=(11, 6))
    ax.set_xlim(-0.8, 10.6)
    ax.set_ylim(-1.4, 6.2)
    ax.axis("off")

    def box(x, y, text, part, width=1.7, height=0.62):
        on = part is None or part in trained
        colour = "white" if part is None else (_COLOURS[part] if on else _FROZEN)
        patch = FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.03",
                               facecolor=colour, edgecolor="0.2" if on else "0.72", alpha=0.9 if on else 1.0,
                               hatch=None if on else "//", lw=1)
        patch.set_gid(part or "input")
        ax.add_patch(patch)
        ax.text(x, y, text, ha="center", va="center", fontsize=8, color="black" if on else "0.35")
        return patch

    def arrow(a, b, style="-|>", dashed=False, colour="0.3"):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle=style, color=colour, lw=1,
                                                         ls="--" if dashed else "-", shrinkA=2, shrinkB=2))

    box(0, 3, f"image\n{_fmt(s['input'])}", None, width=1.2)
    ys = [5.2, 4.2, 3.2, 2.2, 1.2]  # level 1 at the top: full resolution
    for i, y in enumerate(ys, start=1):
        box(2.3, y, f"Res-SE e{i}\n{_fmt(s[f'e{i}'])}", "res_se")
        box(6.6, y, f"decoder d{i}\n{_fmt(s[f'd{i}'])}", "decoder")
        arrow((3.15, y), (5.75, y), dashed=True, colour="0.55")  # skip connection
    for y0, y1 in zip(ys[:-1], ys[1:]):
        arrow((2.3, y0 - 0.31), (2.3, y1 + 0.31))  # max-pool /2 down the encoder
        arrow((6.6, y1 + 0.31), (6.6, y0 - 0.31))  # upsample x2 up the decoder
    box(4.45, -0.2, f"DenseNet201 encoder\ndenseblock4 {_fmt(s['bottleneck'])}\nnorm5 + GAP {_fmt(s['pooled'])}",
        "densenet", width=2.6, height=0.95)
    arrow((0.6, 2.8), (3.15, -0.2))
    arrow((0.6, 3.2), (1.45, 5.2))
    arrow((5.75, -0.05), (6.6, 0.89))  # the bottleneck starts the decoder
    ax.text(6.75, 0.45, "bottleneck", fontsize=7, color="0.3")
    box(9.3, 5.2, f"saliency head\n{_fmt(s['saliency'])}\nsoftmax over pixels", "saliency_head", width=1.9,
        height=0.8)
    arrow((7.45, 5.2), (8.35, 5.2))
    box(9.3, 1.6, f"fusion classifier\n{s['pooled'][0] + s['d1'][0]} -> 64 -> {s['logits'][0]}\nNormal / CHF / Pneumonia",
        "classifier", width=1.9, height=0.8)
    arrow((7.45, 5.0), (8.7, 2.0))
    ax.text(8.15, 3.3, "GAP(d1)", fontsize=7, color="0.3", rotation=-62)
    arrow((5.75, -0.35), (8.5, 1.25))
    ax.text(7.3, 0.25, "GAP(norm5)", fontsize=7, color="0.3", rotation=28)
    ax.text(4.45, 5.85, "skip connections (dashed): Res-SE level i -> decoder level i", ha="center", fontsize=8,
            color="0.4")
    frozen = [p for p in _COLOURS if p not in trained]
    note = " (with a temporary Linear(1920 -> 3) head)" if linear_head else ""
    ax.set_title(f"{stage} at {s['input'][1]}x{s['input'][2]}: trains "
                 f"{', '.join(_PART_LABELS[p] for p in _COLOURS if p in trained)}{note}\n"
                 f"grey, hatched: frozen or not used in this stage ({', '.join(_PART_LABELS[p] for p in frozen)})",
                 fontsize=9)
    fig.tight_layout()
    return fig
