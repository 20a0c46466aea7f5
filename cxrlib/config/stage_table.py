"""The torch-free facts of each stage, written once: what kind it is, its notebook, its upstream
stage, its network, its phases and its place in the cooperative chain.

The stage registry (:mod:`cxrlib.training.stages`) adds the torch side (step functions, trained
parts, frozen-feature reuse) to these rows; the configs, checkpoints, ``cli``, ``bench``, the
ablation variants and the diagram read the rows from here. Adding a stage is one row here, its
config class, and its registry entry with a step function. This module imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAINING, NOTEBOOK = "training", "notebook"  # a stage that writes best.pt / a notebook that trains nothing


@dataclass(frozen=True)
class StageFacts:
    """One stage. ``upstream``: the stage whose best checkpoint initialises it by default (the
    config's ``init_from`` default; for a notebook, the model it reads). ``network``: the
    network it trains (``None`` for a joint stage: its config's ``model`` field). ``head``:
    its classification head (``"linear"``: the part ``linear_head``, a Linear(1920 -> 3) on
    DenseNet; ``"fusion"``: the part ``classifier``, the fusion head). ``finetune``: a second
    phase (``mode="finetune"``, ``finetune_epochs``) trains every part with the joint stage's
    set-up. ``chain``: one of the cooperative stages 1a -> 1b -> 2 -> 3, in order."""

    name: str
    kind: str
    notebook: str | None = None
    upstream: str | None = None
    network: str | None = None
    head: str | None = None
    finetune: bool = False
    chain: bool = False

    @property
    def trains(self) -> bool:
        return self.kind == TRAINING


STAGE_TABLE = {s.name: s for s in (
    StageFacts("data", NOTEBOOK, "01_data_exploration.ipynb"),
    StageFacts("stage1a", TRAINING, "02_contrastive_pretraining.ipynb", network="densenet", chain=True),
    StageFacts("stage1b", TRAINING, "03_stage1_encoder.ipynb", upstream="stage1a", network="densenet", head="linear",
               chain=True),
    StageFacts("stage2", TRAINING, "04_stage2_saliency.ipynb", upstream="stage1b", network="dual", chain=True),
    StageFacts("stage3", TRAINING, "05_stage3_fusion.ipynb", upstream="stage2", network="dual", head="fusion",
               finetune=True, chain=True),
    StageFacts("explain", NOTEBOOK, "06_saliency_gradcam_comparison.ipynb", upstream="stage3"),
    StageFacts("results", NOTEBOOK, "07_results_and_ablations.ipynb"),
    StageFacts("external", NOTEBOOK, "08_external_validation_reflacx.ipynb", upstream="stage3"),
    # Not a notebook: the one-stage baselines of notebook 07 (cxrlib train --stage joint).
    StageFacts("joint", TRAINING, head="fusion"),
)}

TRAINING_STAGES = tuple(name for name, s in STAGE_TABLE.items() if s.trains)  # each writes <stage>/best.pt
CHAIN = tuple(name for name, s in STAGE_TABLE.items() if s.chain)  # the cooperative stages, in training order
NOTEBOOK_STAGES = {s.notebook: name for name, s in STAGE_TABLE.items() if s.notebook}  # notebook -> stage

# The config fields each network is built from (its constructor's keyword arguments).
NETWORK_FIELDS = {"densenet": ("pretrained", "densenet_arch"), "dual": ("pretrained", "densenet_arch", "base_width"),
                  "mtunet": ("base_width",), "resse_unet": ("base_width",)}


def upstream(stage: str) -> str | None:
    """The stage that initialises ``stage`` by default (its config's ``init_from`` default)."""
    return STAGE_TABLE[stage].upstream


def has_finetune(config) -> bool:
    """Whether a run (a stage config or its saved dict) has the fine-tuning phase after the head."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    name = get("stage")
    return (name in STAGE_TABLE and STAGE_TABLE[name].finetune and get("mode") == "finetune"
            and (get("finetune_epochs", 0) or 0) > 0)
