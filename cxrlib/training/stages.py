"""The stages of multi-stage cooperative learning (docs/method.md section 4): the registry and its calls.

:data:`STAGES` holds one :class:`Stage` per stage: its config class, its notebook, the network
it trains, the parts that train, the parts taken from the upstream checkpoint (``init_from``),
its step function, extra trained modules and frozen-feature reuse. Everything that asks "which
model does this stage train" or "where do its weights come from" asks the registry.

=======  ==================  ===========================  ==================  ===========
stage    model               trains                       loss                init_from
=======  ==================  ===========================  ==================  ===========
stage1a  DenseNetClassifier  densenet (+ projection)      triplet/supcon/...  (ImageNet)
stage1b  DenseNetClassifier  densenet, linear_head        cross-entropy       stage1a
stage2   DualEncoderMTUNet   res_se, decoder, sal. head   KL                  stage1b
stage3   DualEncoderMTUNet   classifier (finetune: all)   CE (+ CE & KL)      stage2
joint    dual/mtunet/resse   every part, from scratch     CE & KL, weighted   (ImageNet)
=======  ==================  ===========================  ==================  ===========

:func:`run_stage` trains any of them with the one :class:`~cxrlib.training.trainer.Trainer`; :func:`prepare_data`
gives the splits, :func:`load_stage_model` a stage's best weights, :func:`predict` a model's predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cxrlib.training import distributed, memory
from cxrlib.training.equal_stages import finished_with, read_history
from cxrlib.training.checkpoints import BEST, init_path, load_init, load_weights, resolve_init, warn_missing_init
from cxrlib.config import STAGE_CONFIGS, load_config, make_config
from cxrlib.config.stage_table import NETWORK_FIELDS, STAGE_TABLE, TRAINING_STAGES, StageFacts, has_finetune
from cxrlib.data import collate
# the notebooks call stages.prepare_data: the data side of a stage, one package down
from cxrlib.training.bundle import DataBundle, dataset_kwargs, ensure_data, prepare_data  # noqa: F401
from cxrlib.model import build_model, predicted_maps
from cxrlib.runtime import config_device, seed_everything
from cxrlib.training.steps import (ce_step, contrastive_extra, contrastive_step, fusion_step, joint_extra, joint_step,
                          saliency_step, with_frozen_densenet, with_fused_features)
from cxrlib.training.frozen_features import precompute
from cxrlib.training.trainer import Trainer


def checkpoint_path(config, stage: str | None = None) -> Path:
    return Path(config.run_dir) / (stage or config.stage) / BEST


# -- the registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One stage: its row of the stage table (:mod:`cxrlib.config.stage_table`: kind, notebook,
    upstream stage, network, phases, chain position) plus the torch side written here.

    ``trains``: the model parts that train, ``config -> parts``, or None for every part.
    ``init_parts``: the parts taken from the upstream checkpoint (None: all). ``step``:
    ``config -> step function``; ``extra``: ``(config, model) -> {name: module}`` trained beside
    the model. ``reuse``: frozen-feature reuse, ``(model, data, config) -> data``. Entries of
    notebooks (``kind`` notebook) train nothing and carry only their name.
    """

    name: str
    trains: tuple | Callable | None = ()
    init_parts: tuple | None = None
    step: Callable | None = None
    extra: Callable | None = None
    reuse: Callable | None = None
    unused_parameters: bool = False  # DDP: a trained parameter may not reach the loss

    @property
    def facts(self) -> StageFacts:
        return STAGE_TABLE[self.name]

    @property
    def config(self) -> type:
        return STAGE_CONFIGS[self.name]

    @property
    def notebook(self) -> str | None:
        return self.facts.notebook

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    def finetune(self) -> bool:
        return self.facts.finetune

    @property
    def trainable(self) -> bool:
        return self.facts.trains

    @property
    def upstream(self) -> str | None:
        """The stage whose best checkpoint initialises this one by default."""
        return self.facts.upstream

    def model_name(self, config) -> str:
        return self.facts.network or config.model  # a joint stage: the network its config names

    def trained_parts(self, config, model: nn.Module | None = None) -> tuple:
        parts = self.trains(config) if callable(self.trains) else self.trains
        if parts is None:
            if model is None:
                raise ValueError(f"{self.name} trains every part: pass the model to list them")
            return tuple(model.parts())
        return tuple(parts)


_DUAL_TRUNK = ("res_se", "decoder", "saliency_head")
_ENTRIES = (
    # Stage 1a's embedding is taken before DenseNet's norm5, which therefore gets no gradient.
    Stage("stage1a", trains=("densenet",), step=contrastive_step, extra=contrastive_extra, unused_parameters=True),
    # linear_probe: the DenseNet stays frozen (in eval mode, by frozen_bn), only the Linear head trains
    Stage("stage1b", trains=lambda config: ("linear_head",) if config.linear_probe else ("densenet", "linear_head"),
          init_parts=("densenet",), step=lambda config: ce_step),
    Stage("stage2", trains=_DUAL_TRUNK, init_parts=("densenet",), step=lambda config: saliency_step,
          reuse=with_frozen_densenet),
    # mode="joint": every part at once with the joint loss (the code's Module/RUN.py), no feature reuse
    Stage("stage3", trains=lambda config: None if config.mode == "joint" else ("classifier",),
          step=lambda config: joint_step if config.mode == "joint" else fusion_step,
          extra=lambda config, model: joint_extra(config, model) if config.mode == "joint" else {},
          reuse=with_fused_features),
    Stage("joint", trains=None, step=lambda config: joint_step, extra=joint_extra),
)
# Every row of the stage table has an entry (a notebook's: its name only), in the table's order.
STAGES = {name: next((e for e in _ENTRIES if e.name == name), Stage(name)) for name in STAGE_TABLE}
if {e.name for e in _ENTRIES} != set(TRAINING_STAGES) or any(STAGES[n].step is None for n in TRAINING_STAGES):
    raise RuntimeError("each training stage of the stage table needs one registry entry with a step function")
TRAINABLE_STAGES = TRAINING_STAGES
NOTEBOOK_STAGES = {s.notebook: name for name, s in STAGES.items() if s.notebook}


def build_named(name: str, config, *, pretrained=False) -> nn.Module:
    """The network ``name`` at the config's sizes (``config``: a stage config or its dict)."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    kwargs = {k: pretrained if k == "pretrained" else get(k) for k in NETWORK_FIELDS[name]}
    return build_model(name, **kwargs)


def stage_of(config) -> Stage:
    """The registry entry of a config (or a saved config dict)."""
    name = config["stage"] if isinstance(config, dict) else config.stage
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
    return STAGES[name]


def build_stage_model(config) -> nn.Module:
    """The untrained model of a training stage (joint stages included)."""
    entry = stage_of(config)
    if not entry.trainable:
        raise ValueError(f"{config.stage} trains no model; training stages: {', '.join(TRAINABLE_STAGES)}")
    seed_everything(config.seed)  # the random init must not depend on what ran before (a notebook's cells)
    # ImageNet weights only for a stage that starts from scratch: the others get their DenseNet
    # from the upstream checkpoint (init_from), so loading ImageNet first would be wasted work.
    fresh = init_path(config.init_from, config.run_dir) is None
    return build_named(entry.model_name(config), config, pretrained=config.pretrained if fresh else False)


def initialise(model: nn.Module, config) -> str:
    """Load the upstream stage's best weights (``init_from``); return what was done."""
    path = resolve_init(config)  # an explicit path or stage that does not resolve raises
    if path is None:
        return "random initialisation" + (" (+ ImageNet DenseNet)" if config.pretrained else "")
    if not path.is_file():  # the default upstream stage, absent in a smoke run (warned)
        return f"random initialisation ({path} missing)"
    parts = load_init(model, path, parts=stage_of(config).init_parts)
    return f"initialised {', '.join(parts)} from {path}"


@dataclass
class StageResult:
    model: nn.Module
    history: object  # DataFrame
    init: str
    trainer: Trainer


def stage_trainer(config, model: nn.Module, *, entry: Stage | None = None, progress: bool = True,
                  stage_dir=None) -> Trainer:
    """The Trainer of a registry entry (default: the config's) for ``model``: the parts that
    train, the step function and the extra modules."""
    entry = entry or stage_of(config)
    return Trainer(model, config, train_parts=entry.trained_parts(config, model), loss_fn=entry.step(config),
                   collate_fn=collate, extra_modules=entry.extra(config, model) if entry.extra else None,
                   progress=progress, stage_dir=stage_dir, find_unused_parameters=entry.unused_parameters)


def feature_reuse(config) -> Callable | None:
    """The stage's frozen-feature reuse where it applies (frozen parts in eval mode), else None."""
    reuse = stage_of(config).reuse
    if getattr(config, "mode", None) == "joint":  # stage 3 trains every part: nothing is frozen
        return None
    return reuse if reuse is not None and config.reuse_frozen_features and config.frozen_bn == "eval" else None


def run_stage(config, data: DataBundle, *, model: nn.Module | None = None, progress: bool = True,
              stop_after: int | None = None) -> StageResult:
    """Train ``config.stage`` and return its model with the best validation weights loaded.

    ``model``: an already built and initialised model (else built and initialised here).
    Stage 3 with ``mode="finetune"`` continues with ``finetune_epochs`` of the joint stage's
    training (every part, uncertainty-weighted CE + KL). Under torchrun every rank runs this same
    call (progress bars on rank 0 only).
    """
    entry = stage_of(config)
    if not entry.trainable:
        raise ValueError(f"run_stage trains {', '.join(TRAINABLE_STAGES)}, not {config.stage!r}")
    progress = progress and distributed.is_main()
    init = "model given by the caller"
    if model is None:
        model = build_stage_model(config)  # seeds first: one seed_everything per stage run
        init = initialise(model, config)
    else:
        seed_everything(config.seed)
    model = model.to(config_device(config))
    if finished_with(config):  # a rerun with unchanged weight settings: the finished run, not a new one
        return _finished(config, model, init, entry, progress)
    train, val = data.train, data.val
    if (reuse := feature_reuse(config)) is not None:
        # Under torchrun each rank computes its own full copy; the sampler then shards it.
        train, val = (reuse(model, d, config, progress=progress) for d in (train, val))
    trainer = stage_trainer(config, model, entry=entry, progress=progress)
    memory.check_fits(model, config, config_device(config), stage=config.stage)  # before a kill by the kernel
    history = trainer.fit(train, val, stop_after=stop_after)
    if has_finetune(config):
        history = _finetune(config, data, model, history, progress)
    return StageResult(model, history, init, trainer)


def _finished(config, model, init, entry, progress) -> StageResult:
    """The stage as its finished run left it: best weights loaded, history read back."""
    import pandas as pd

    trainer = stage_trainer(config, model, entry=entry, progress=progress)
    trainer.load_best()
    if progress:
        print(f"{config.stage}: {config.stage_dir} holds a finished run with these settings; its best.pt is "
              "loaded instead of training again (change a setting that shapes the weights, e.g. lr, epochs or "
              "seed, to train anew)")
    return StageResult(model, pd.DataFrame(read_history(config.stage_dir)), init, trainer)


def _finetune(config, data, model, history, progress):
    """Stage 3, second phase: the joint stage's training of every part, on the same model."""
    import dataclasses
    import shutil

    import pandas as pd

    tuned = stage_trainer(dataclasses.replace(config, epochs=config.finetune_epochs), model, entry=STAGES["joint"],
                          progress=progress, stage_dir=config.stage_dir / "finetune").fit(data.train, data.val)
    # The fine-tuned best weights are the stage's result: stage3/best.pt is what later notebooks load.
    if distributed.is_main():
        shutil.copyfile(config.stage_dir / "finetune" / BEST, config.stage_dir / BEST)
    distributed.barrier()
    return pd.concat([history.assign(phase="head"), tuned.assign(phase="finetune")], ignore_index=True)


@torch.no_grad()
def embeddings(model: nn.Module, data, config, *, progress: bool = False):
    """(N, 1920) contrastive-stage embeddings and (N,) labels of a data set."""
    model = model.to(config_device(config)).eval()
    out = precompute(lambda b: {"embedding": model(b["image"])["embedding"], "label": b["label"]},
                     data, batch_size=config.eval_batch_size, device=config_device(config), collate_fn=collate,
                     progress=progress, desc="embeddings")
    return out["embedding"].numpy(), out["label"].numpy()


def load_stage_model(config, stage: str = "stage3", *, model_name: str | None = None) -> nn.Module:
    """A trained model from ``run_dir/<stage>/best.pt``, on the config's device, in eval mode.

    The network is the one the saved config's registry entry names (``model_name`` overrides)."""
    from cxrlib.training.checkpoints import load_checkpoint

    state = load_checkpoint(checkpoint_path(config, stage))
    saved = state["config"]
    model = build_named(model_name or stage_of(saved).model_name(load_config(saved)), saved)
    load_weights(model, state, checkpoint_path(config, stage))
    return model.to(config_device(config)).eval()


def trained_model(config, stage: str, *, model_name: str | None = None, required: bool = True):
    """``load_stage_model`` if the stage's checkpoint exists; else (smoke only) a random model.

    ``stage``: a folder under ``run_dir`` named after its stage (``stage1b``,
    ``ablation/mtunet/seed0/joint``). ``required=False``: return None when the checkpoint is
    missing (optional baselines).
    """
    path = checkpoint_path(config, stage)
    if path.is_file():
        return load_stage_model(config, stage, model_name=model_name)
    if not required:
        return None
    warn_missing_init(config.stage, path, config.profile)
    entry = stage_of({"stage": Path(stage).name})  # the folder is named after its stage
    model = build_named(model_name or entry.model_name(make_config(entry.name, config.profile)), config)
    return model.to(config_device(config)).eval()


@torch.no_grad()
def predict(model: nn.Module, data, config, *, progress: bool = True) -> dict:
    """The predictions over a data set: ``probs`` (N, 3), ``labels``, ``predicted_map`` (N, H, W
    float32, each summing to 1: :func:`cxrlib.model.predicted_maps`; None for a classifier),
    ``gaze_map`` (N, H, W: the ground truth), ``fixations`` and ``dicom_id``."""
    from torch.utils.data import DataLoader

    from cxrlib.progress import progress_bar
    from cxrlib.training.batches import to_device

    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(data, batch_size=config.eval_batch_size, shuffle=False, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    out = {"probs": [], "labels": [], "predicted_map": [], "gaze_map": [], "fixations": [], "dicom_id": []}
    for batch in progress_bar(loader, total=len(loader), desc="predict", enabled=progress):
        result = model(to_device(batch, device)["image"])
        out["probs"].append(result["logits"].float().softmax(1).cpu().numpy())
        out["labels"].append(batch["label"].numpy())
        if "saliency_log" in result:
            out["predicted_map"].append(predicted_maps(result).cpu().numpy())
        out["gaze_map"].append(batch["gaze_map"].numpy()[:, 0])
        out["fixations"] += [f.numpy() for f in batch["fixations"]]
        out["dicom_id"] += batch["dicom_id"]
    for key in ("probs", "labels", "predicted_map", "gaze_map"):
        out[key] = np.concatenate(out[key]) if out[key] else None
    return out
