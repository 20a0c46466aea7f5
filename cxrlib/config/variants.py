"""The ablation variants of notebook 07 as data: what each trains, and which claim it tests.

A variant is a chain of ordinary stages (``(stage, config overrides)``, trained in order by
:mod:`cxrlib.evaluation.ablation`) plus where its diagnosis and its gaze map come from. The claims are the
paper's (arXiv:2403.16970, the ablation and the baselines). This module imports nothing heavy,
so the config check (:mod:`cxrlib.config`) and the report (:mod:`cxrlib.evaluation.results`) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrlib.config.stage_table import CHAIN


@dataclass(frozen=True)
class Variant:
    label: str
    claim: str  # what comparing it with the full method tests
    chain: tuple  # ((stage, config overrides), ...), trained in order
    diagnosis_from: str  # the stage whose model gives the diagnosis
    map_from: str  # the stage whose model gives the predicted map; "gradcam": Grad-CAM of `diagnosis_from`


_COOPERATIVE = tuple((stage, {}) for stage in CHAIN)  # stages 1a -> 1b -> 2 -> 3
VARIANTS = {
    "full": Variant("full method", "reference: stages 1a -> 1b -> 2 -> 3", _COOPERATIVE, "stage3", "stage3"),
    "joint": Variant("joint, one stage", "the multi-stage cooperative schedule helps",
                     (("joint", {"model": "dual"}),), "joint", "joint"),
    "no_contrastive": Variant("no contrastive 1a", "contrastive pretraining helps",
                              (("stage1b", {"init_from": "none"}), ("stage2", {}), ("stage3", {})), "stage3", "stage3"),
    "no_fusion": Variant("no fusion (1b head)", "the multi-scale fusion classifier helps",
                         _COOPERATIVE[:3], "stage1b", "stage2"),
    "mtunet": Variant("MT-UNet", "the method beats MT-UNet (Zhu et al. 2022)",
                      (("joint", {"model": "mtunet"}),), "joint", "joint"),
    "resse_unet": Variant("Res-SE UNet", "DenseNet201 + the schedule help (against MT-UNet: the Res-SE blocks)",
                          (("joint", {"model": "resse_unet"}),), "joint", "joint"),
    "densenet": Variant("DenseNet201 + Grad-CAM", "multi-task beats a single-task classifier and its Grad-CAM",
                        (("stage1b", {"init_from": "none"}),), "stage1b", "gradcam"),
    # Fidelity variants: the full chain with one stage-1a/1b choice of the authors' code changed
    # (docs/reproduction-notes.md rows 1, 2 and 5).
    "pooled_triplet": Variant("pooled, averaged triplet (1a)",
                              "the code's unpooled-map, summed triplet loss matters (against GAP features, mean)",
                              (("stage1a", {"triplet_feature": "pooled", "triplet_reduction": "mean"}),
                               *_COOPERATIVE[1:]), "stage3", "stage3"),
    "linear_probe": Variant("linear probe (1b)", "fine-tuning the DenseNet in 1b helps (against the code's "
                            "commented frozen-DenseNet path)",
                            (_COOPERATIVE[0], ("stage1b", {"linear_probe": True}), *_COOPERATIVE[2:]),
                            "stage3", "stage3"),
    # The code as it ran (cxrlib.config.fidelity): its only active full-model script, Module/RUN.py,
    # trains the whole network jointly from ImageNet, with every loop and data switch of the code.
    # "code_training" keeps the run's split, scored split and KLD eps, so it is paired with `full` (the
    # method as described) on the same test images and metrics; `-p fidelity code` gives the code's own
    # protocol too.
    "code": Variant("the code as it ran", "the described method differs from what the code ran (Module/RUN.py: "
                    "joint from ImageNet, the code's loop and preprocessing)",
                    (("stage3", {"fidelity": "code_training"}),), "stage3", "stage3"),
}


def describe_variants(names=None) -> "pd.DataFrame":
    """The registry as a table: what each variant trains and what it tests."""
    import pandas as pd

    def chain(v):
        return " -> ".join(stage + "".join(f" ({k}={val})" for k, val in o.items()) for stage, o in v.chain)

    return pd.DataFrame([{"variant": n, "label": v.label, "stages": chain(v), "diagnosis from": v.diagnosis_from,
                          "map from": "Grad-CAM of " + v.diagnosis_from if v.map_from == "gradcam" else v.map_from,
                          "tests": v.claim} for n, v in VARIANTS.items() if names is None or n in names])


def check_results_config(config) -> None:
    """Fail at the config cell on an unknown variant or a bad seed list."""
    for name in (*config.variants, config.reference):
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    if not config.variants or len(set(config.variants)) != len(config.variants):
        raise ValueError(f"parameter 'variants' must list distinct variants, got {config.variants!r}")
    if not config.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in config.seeds) \
            or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"parameter 'seeds' must be distinct integers, got {config.seeds!r}")
