"""The allowed values of every choice parameter, each declared once (torch-free).

The modules that act on a choice (data/, losses, model/, training.precision) import its values
from here and check them at their own entry; the config check (:mod:`cxrlib.config`) derives its
table :data:`FIELD_CHOICES` from the same constants, so a new value is added in one place.
"""

from __future__ import annotations

GAZE_SOURCES = {"eye_gaze": "eye_gaze.csv", "fixations": "fixations.csv"}  # gaze source -> its CSV in egd_root
WEIGHTINGS = ("count", "duration")  # how a gaze point weighs in the map
RESIZE_MODES = ("pad_resize", "stride")
INTENSITY_MODES = ("minmax", "max")
FROZEN_BN_MODES = ("eval", "train")  # BatchNorm of the frozen parts: fixed statistics, or the code's drift
AMP_DTYPES = ("auto", "bf16", "fp16")
EVAL_SPLITS = ("test", "val")
CONTRASTIVE_LOSSES = ("triplet", "supcon", "ntxent")
TRIPLET_FEATURES = ("map", "pooled")
TRIPLET_REDUCTIONS = ("sum", "mean")
FUSION_MODES = ("head", "finetune", "joint")  # stage 3: the fusion head only, then (finetune) every part; joint: all from the start
SPLIT_RULES = ("patient", "image")  # data/splits.py: grouped by patient, or the code's per-class counter over images
FIDELITY_PRESETS = ("method", "code", "code_training")  # config/fidelity.py
COMPILE_MODES = (False, True, "blocks", "step")  # torch.compile: off, the repeated blocks (True), or the whole step
MODEL_NAMES = ("dual", "mtunet", "resse_unet", "densenet")  # the networks of cxrlib.model
JOINT_MODELS = ("dual", "mtunet", "resse_unet")  # the networks with a saliency head (a joint stage's choice)

# config field -> its allowed values; a field absent from a stage's config is not checked there.
FIELD_CHOICES = {
    "gaze_source": tuple(GAZE_SOURCES), "weighting": WEIGHTINGS, "resize": RESIZE_MODES,
    "frozen_bn": FROZEN_BN_MODES, "amp_dtype": AMP_DTYPES, "intensity": INTENSITY_MODES, "eval_split": EVAL_SPLITS,
    "loss": CONTRASTIVE_LOSSES, "triplet_feature": TRIPLET_FEATURES, "triplet_reduction": TRIPLET_REDUCTIONS,
    "mode": FUSION_MODES, "model": JOINT_MODELS, "split": SPLIT_RULES, "fidelity": FIDELITY_PRESETS,
    "compile": COMPILE_MODES,
}
