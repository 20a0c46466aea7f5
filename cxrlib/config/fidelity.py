"""The ``fidelity`` presets: every switch of the authors' code set at once, on top of any profile.

``fidelity="method"`` (the default) changes nothing: the method as docs/method.md describes it,
with this project's defaults. ``fidelity="code"`` sets every field that has a switch to what the
public code (HealthX-Lab/CXRGazeLearn) did when it ran, including its only active full-model
script, ``Module/RUN.py``: stage 3 becomes the whole network trained jointly from ImageNet.
``fidelity="code_training"`` is the same without the scoring protocol (the split rule, the scored
split and the KLD's eps), so the result is scored on the run's own test images, with the same
metrics, and can be paired with the other ablation rows.

Sizes and lengths (``image_size``, ``epochs``, ``batch_size``, ``plateau_patience``,
``pretrained``, ``sigma``) stay the profile's: the paper profile already holds the code's. The
table "The fidelity preset" in docs/reproduction-notes.md lists every entry with its source; a
test checks that table against :data:`CODE_PRESET` field by field. Parameters set explicitly
(``-p NAME VALUE``) win over the preset. This module imports nothing.
"""

from __future__ import annotations

from cxrlib.config.choices import FIDELITY_PRESETS

FIDELITY = FIDELITY_PRESETS

# stage -> {field: the code's value}; "common" applies to every stage that reads the field.
CODE_PRESET = {
    "common": {
        "split": "image", "eval_split": "val",
        "resize": "stride", "intensity": "max", "modality_lut": False,
        "gaze_source": "eye_gaze", "weighting": "count",
        "frozen_bn": "train", "lr": 1e-4, "amp_dtype": "fp16", "drop_last": False,
        "plateau_eps": 0.0, "reload_best_on_drop": True, "lr_floor": 1e-8,
        "val_shuffle": True, "eval_fp32": True, "kld_eps": 0.0,
    },
    "stage1a": {"loss": "triplet", "margin": 1.0, "triplet_feature": "map", "triplet_reduction": "sum"},
    "stage1b": {"init_from": "none", "linear_probe": False},
    "stage3": {"mode": "joint", "init_from": "none", "learn_saliency_sigma": False, "shuffle": False},
    "joint": {"learn_saliency_sigma": False, "shuffle": False},
}
# Fields of the preset that follow another field: the code stops after 2 x patience + 3 epochs
# without improvement (KL/RUN.py: patience_early_stop = patience_reduce_lr*2+3, 83 at patience 40).
DERIVED = {"early_stopping": "2 * plateau_patience + 3"}
# What "code_training" leaves to the run: the split rule, the scored split and the KLD metric's eps.
PROTOCOL_FIELDS = ("split", "eval_split", "kld_eps")


def preset_values(fidelity: str, stage: str) -> dict:
    """The fields ``fidelity`` sets for ``stage`` (before ``DERIVED``); {} for "method"."""
    if fidelity not in FIDELITY:
        raise ValueError(f"parameter 'fidelity' must be one of {FIDELITY}, got {fidelity!r}")
    if fidelity == "method":
        return {}
    values = {**CODE_PRESET["common"], **CODE_PRESET.get(stage, {})}
    if fidelity == "code_training":
        values = {k: v for k, v in values.items() if k not in PROTOCOL_FIELDS}
    return values


def derived_early_stopping(plateau_patience: int) -> int:
    return 2 * plateau_patience + 3
