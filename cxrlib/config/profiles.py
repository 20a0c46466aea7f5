"""The three profiles: the defaults a stage config takes for every field left at ``None``.

* ``smoke``: CI. The real DenseNet201 + Res-SE network at a tiny size, two steps per stage.
* ``demo``: a CPU run on the synthetic data that really learns, the chain in minutes.
* ``paper``: docs/method.md section 4 (sizes, epochs, batches, ImageNet weights) for a GPU and EGD-CXR.

``PROFILE_DEFAULTS[profile]["common"]`` applies to every stage, ``[profile][stage]`` on top of it.
"""

from __future__ import annotations

PROFILES = ("smoke", "demo", "paper")

_SYNTHETIC = {"sigma_frac": 0.025}  # 75.5 px of a ~3000 px MIMIC image, for any native size

PROFILE_DEFAULTS = {
    "smoke": {
        # num_workers 0: CI's tiny images decode in milliseconds, so worker start-up would cost more
        "common": {**_SYNTHETIC, "synthetic_images": 48, "image_size": (64, 64), "base_width": 8, "num_workers": 0,
                   "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "eval_batch_size": 8,
                   "n_boot": 50, "examples_per_class": 1},
        "stage3": {"finetune_epochs": 1},
        "explain": {"max_images": 6},
        "results": {"seeds": (0,)},
        "external": {"synthetic_reflacx_images": 8},
    },
    "demo": {
        "common": {**_SYNTHETIC, "synthetic_images": 300, "image_size": (128, 96), "base_width": 16,
                   "batch_size": 16, "eval_batch_size": 32, "plateau_patience": 3, "n_boot": 1000},
        "stage1a": {"epochs": 3, "batch_size": 24},
        "stage1b": {"epochs": 6},
        "stage2": {"epochs": 10, "batch_size": 8},
        "stage3": {"epochs": 30, "batch_size": 16},
        "explain": {"max_images": 60},
        "joint": {"epochs": 10, "batch_size": 8},
        # notebook 07 only reads finished variants in `cxrlib run --profile demo` (which stays
        # within minutes); `cxrlib ablate --profile demo` trains them (its cost, from the measured
        # stage times: docs/reproduction-notes.md, "CPU budget of the demo ablation").
        "results": {"seeds": (0, 1, 2), "train_missing": False},
        "external": {"synthetic_reflacx_images": 40},
    },
    "paper": {
        # activation checkpointing keeps every stage within a 16 GB T4 (README, "On a GPU")
        "common": {"synthetic_images": 1083, "image_size": (640, 512), "pretrained": True, "base_width": 64,
                   "sigma": 75.5, "gaze_source": "eye_gaze", "plateau_patience": 40, "n_boot": 1000,
                   "activation_checkpointing": True},
        # the code validates stage 1a in batches of 32 too: with the summed triplet loss the batch matters
        "stage1a": {"image_size": (320, 256), "epochs": 50, "batch_size": 32, "eval_batch_size": 32},
        "stage1b": {"epochs": 10, "batch_size": 16},
        "stage2": {"epochs": 50, "batch_size": 16},
        "stage3": {"epochs": 40, "batch_size": 6},
        "explain": {"batch_size": 6},
        "joint": {"epochs": 50, "batch_size": 6},
        "results": {"seeds": (0, 1, 2), "train_missing": False},
        "external": {"synthetic_reflacx_images": 40},
    },
}
