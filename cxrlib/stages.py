"""The stages of multi-stage cooperative learning (method.md section 4), as notebook calls.

Each ``run_*`` function is one notebook's training step: build the stage's model, initialise
it from the previous stage's best checkpoint in the run folder (``init_from``), choose the parts
that train, reuse frozen features where nothing below the trained parts changes, and hand
everything to the one :class:`~cxrlib.train.Trainer`.

=====  ============================  =========================  ==================  ===========
stage  model                         trains                     loss                init_from
=====  ============================  =========================  ==================  ===========
1a     DenseNetClassifier            densenet (+ projection)    triplet/supcon/...  (ImageNet)
1b     DenseNetClassifier            densenet, classifier       cross-entropy       stage1a
2      DualEncoderMTUNet             res_se, decoder, sal. head KL                  stage1b
3      DualEncoderMTUNet             classifier (joint: all)    CE (joint: CE + KL) stage2
=====  ============================  =========================  ==================  ===========
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlib import distributed, losses, precision, runfolder
from cxrlib.checkpoints import load_weights, resolve_init
from cxrlib.data import EGDDataset, collate, load_or_make_splits, read_master_sheet, split_ids
from cxrlib.data.augment import random_view
from cxrlib.model import DenseNetClassifier, DualEncoderMTUNet, build_model
from cxrlib.runtime import default_device, seed_everything
from cxrlib.train import BEST, CachedFeatures, Trainer, load_init, precompute, warn_missing_init

# Which parts of the upstream checkpoint each stage takes (None: all parts of the model).
INIT_PARTS = {"stage1b": ("densenet",), "stage2": ("densenet",), "stage3": None, "explain": None}


@dataclass
class DataBundle:
    train: EGDDataset
    val: EGDDataset
    test: EGDDataset
    splits: object  # DataFrame: dicom_id, patient_id, label, split
    egd_root: Path
    image_root: Path


def ensure_data(config, *, progress: bool = True) -> tuple[Path, Path]:
    """The EGD folder to read: the user's, or the synthetic set (written once per run folder)."""
    if config.egd_root is not None:
        root = Path(config.egd_root).expanduser()
        if not (root / "master_sheet.csv").is_file():
            raise FileNotFoundError(f"egd_root={root} has no master_sheet.csv; point it at the EGD-CXR "
                                    f"folder (egd-cxr/1.0.0) or leave it None for the synthetic data")
        return root, Path(config.image_root).expanduser()
    from cxrlib.synthetic import make_egd_like

    root = Path(config.run_dir) / "synthetic"
    marker = root / "synthetic.json"
    wanted = {"n_images": config.synthetic_images, "seed": config.data_seed}
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        make_egd_like(root, n_images=config.synthetic_images, seed=config.data_seed, overwrite=True,
                      progress=progress)
        marker.write_text(json.dumps(wanted))
    return root, root


def dataset_kwargs(config, image_size=None) -> dict:
    return {"image_size": image_size or config.image_size, "gaze_source": config.gaze_source,
            "sigma": config.sigma, "sigma_frac": config.sigma_frac, "weighting": config.weighting,
            "resize": config.resize, "cache_dir": Path(config.run_dir) / "cache"}


def prepare_data(config, *, progress: bool = True) -> DataBundle:
    """Data sets of the three splits; the split is made once and kept in ``run_dir/splits.csv``.

    Under torchrun rank 0 writes the synthetic data and the split first; the others then read them.
    """
    with distributed.main_first(), runfolder.data_lock(config.run_dir):  # one writer of the data at a time
        egd_root, image_root = ensure_data(config, progress=progress and distributed.is_main())
        sheet = read_master_sheet(egd_root / "master_sheet.csv")
        splits = load_or_make_splits(Path(config.run_dir) / "splits.csv", sheet, seed=config.data_seed)
    kwargs = dataset_kwargs(config)
    sets = {name: EGDDataset(egd_root, image_root, ids=split_ids(splits, name), **kwargs)
            for name in ("train", "val", "test")}
    return DataBundle(sets["train"], sets["val"], sets["test"], splits, egd_root, image_root)


def checkpoint_path(config, stage: str | None = None) -> Path:
    return Path(config.run_dir) / (stage or config.stage) / BEST


def initialise(model: nn.Module, config) -> str:
    """Load the upstream stage's best weights (``init_from``); return what was done."""
    path = resolve_init(config)  # an explicit path or stage that does not resolve raises
    if path is None:
        return "random initialisation" + (" (+ ImageNet DenseNet)" if config.pretrained else "")
    if not path.is_file():  # the default upstream stage, absent in a smoke run (warned)
        return f"random initialisation ({path} missing)"
    parts = load_init(model, path, parts=INIT_PARTS.get(config.stage))
    return f"initialised {', '.join(parts)} from {path}"


def build_stage_model(config) -> nn.Module:
    seed_everything(config.seed)  # the random init must not depend on what ran before (a notebook's cells)
    # ImageNet weights only for a stage that starts from scratch: the others get their DenseNet
    # from the upstream checkpoint (init_from), so loading ImageNet first would be wasted work.
    fresh = config.init_from is None or str(config.init_from).lower() == "none"
    pretrained = config.pretrained if fresh else False
    if config.stage in ("stage1a", "stage1b"):
        return DenseNetClassifier(pretrained=pretrained, densenet_arch=config.densenet_arch)
    return DualEncoderMTUNet(pretrained=pretrained, densenet_arch=config.densenet_arch, base_width=config.base_width)


@dataclass
class StageResult:
    model: nn.Module
    history: object  # DataFrame
    init: str
    trainer: Trainer


def _device(config) -> torch.device:
    return torch.device(config.device) if config.device else default_device()


# -- step functions ----------------------------------------------------------------------
def projection_head(in_features: int = 1920, hidden: int = 512, out: int = 128) -> nn.Module:
    """SimCLR's MLP projection head (Chen et al. 2020), used only by the NT-Xent option."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def contrastive_step(config):
    """Stage 1a: the configured contrastive loss on GAP(denseblock4) (method.md section 3).

    Under torchrun the training loss is formed on the batch of all ranks (every rank's negatives
    see the others'; gradients flow back through the all-gather, see ``cxrlib.distributed``);
    validation, in eval mode, stays per rank.
    """
    def step(model, batch, extra=None):
        gather = distributed.all_gather_batch if model.training and distributed.world_size() > 1 else None
        if config.loss == "ntxent":
            views = [random_view(batch["image"]) for _ in range(2)]
            z = [extra["projection"](model(v)["embedding"]) for v in views]
            return {"loss": losses.nt_xent(z[0], z[1], temperature=config.temperature, gather=gather)}
        embedding = model(batch["image"])["embedding"]  # (B, 1920)
        if config.loss == "triplet":
            return {"loss": losses.triplet_all(embedding, batch["label"], margin=config.margin, gather=gather)}
        return {"loss": losses.supcon(embedding, batch["label"], temperature=config.temperature, gather=gather)}
    return step


def ce_step(model, batch, extra=None):
    """Stage 1b: cross-entropy of DenseNet201 + Linear(1920 -> 3)."""
    logits = model(batch["image"])["logits"]
    return {"loss": losses.classification_ce(logits, batch["label"]), "logits": logits}


def _cached_dense(batch) -> dict | None:
    if "dense_bottleneck" in batch:
        return {"bottleneck": batch["dense_bottleneck"], "pooled": batch["dense_pooled"]}
    return None


def saliency_step(model, batch, extra=None):
    """Stage 2: KL between the gaze map and the predicted saliency."""
    features = model.forward_features(batch["image"], dense=_cached_dense(batch))
    out = model.forward_head(features)
    # Only the saliency output: the fusion classifier is untrained here, its AUC would mislead.
    return {"loss": losses.saliency_kl(out["saliency_log"], batch["saliency"]), "saliency_log": out["saliency_log"]}


def fusion_step(model, batch, extra=None):
    """Stage 3 (head only): cross-entropy of the fusion classifier on the 1984-d features."""
    if "fused" in batch:  # cached pre-logits of the frozen network
        logits = model.classifier(batch["fused"])
    else:
        logits = model.classifier(model.forward_head(model.forward_features(batch["image"]), pre_logits=True))
    return {"loss": losses.classification_ce(logits, batch["label"]), "logits": logits}


def joint_step(model, batch, extra):
    """Stage 3 (joint): uncertainty-weighted CE + KL over the whole network (method.md section 3)."""
    out = model(batch["image"])
    ce = losses.classification_ce(out["logits"], batch["label"])
    kl = losses.saliency_kl(out["saliency_log"], batch["saliency"])
    return {"loss": extra["uncertainty"](ce, kl), **out}


# -- frozen-feature reuse ------------------------------------------------------------------
def with_frozen_densenet(model, data, config, *, progress=True):
    """Stage 2: the frozen DenseNet's outputs, computed once and served with each sample."""
    model.eval()
    device = next(model.parameters()).device
    # in the step's precision: what the frozen part would compute inside the training step
    with precision.config_autocast(config, device):
        feats = precompute(lambda b: {f"dense_{k}": v for k, v in model.densenet(b["image"]).items()},
                           data, batch_size=config.eval_batch_size, device=device, collate_fn=collate,
                           progress=progress, desc="frozen DenseNet features")
    return CachedFeatures(data, feats)


def with_fused_features(model, data, config, *, progress=True):
    """Stage 3: the 1984-d fused vector of every sample, one forward pass instead of one per epoch."""
    model.eval()
    device = next(model.parameters()).device
    with precision.config_autocast(config, device):
        feats = precompute(lambda b: {"fused": model.forward_head(model.forward_features(b["image"]), pre_logits=True),
                                      "label": b["label"]},
                           data, batch_size=config.eval_batch_size, device=device, collate_fn=collate,
                           progress=progress, desc="frozen fused features")
    return CachedFeatures(None, feats)  # the head needs no image: samples are the cached rows alone


# stage -> (parts that train, step function factory, frozen-feature reuse or None)
STAGES = {
    "stage1a": (("densenet",), contrastive_step, None),
    "stage1b": (("densenet", "classifier"), lambda config: ce_step, None),
    "stage2": (("res_se", "decoder", "saliency_head"), lambda config: saliency_step, with_frozen_densenet),
    "stage3": (("classifier",), lambda config: fusion_step, with_fused_features),
}


def run_stage(config, data: DataBundle, *, model: nn.Module | None = None, progress: bool = True,
              stop_after: int | None = None) -> StageResult:
    """Train ``config.stage`` and return its model with the best validation weights loaded.

    ``model``: an already built and initialised model (else built and initialised here).
    Stage 3 with ``mode="joint"`` continues with ``joint_epochs`` of joint fine-tuning.
    Under torchrun every rank runs this same call (progress bars on rank 0 only).
    """
    if config.stage not in STAGES:
        raise ValueError(f"run_stage trains {sorted(STAGES)}, not {config.stage!r}")
    seed_everything(config.seed)
    progress = progress and distributed.is_main()
    init = "model given by the caller"
    if model is None:
        model = build_stage_model(config)
        init = initialise(model, config)
    model = model.to(_device(config))
    train_parts, make_step, reuse = STAGES[config.stage]
    extra = None
    if config.stage == "stage1a" and config.loss == "ntxent":
        extra = {"projection": projection_head(model.densenet.out_channels)}
    train, val = data.train, data.val
    if reuse is not None and config.reuse_frozen_features and config.frozen_bn == "eval":
        # Under torchrun each rank computes its own full copy; the sampler then shards it.
        train, val = (reuse(model, d, config, progress=progress) for d in (train, val))
    # Stage 1a's embedding is taken before DenseNet's norm5, which therefore gets no gradient.
    trainer = Trainer(model, config, train_parts=train_parts, loss_fn=make_step(config), collate_fn=collate,
                      extra_modules=extra, progress=progress, find_unused_parameters=config.stage == "stage1a")
    history = trainer.fit(train, val, stop_after=stop_after)
    if config.stage == "stage3" and config.mode == "joint" and config.joint_epochs > 0:
        history = _joint_phase(config, data, model, history, progress)
    return StageResult(model, history, init, trainer)


def _joint_phase(config, data, model, history, progress):
    """Stage 3, second phase: every part trains with the uncertainty-weighted joint loss."""
    import dataclasses
    import shutil

    import pandas as pd

    joint_config = dataclasses.replace(config, epochs=config.joint_epochs)
    joint = Trainer(model, joint_config, train_parts=tuple(model.parts()), loss_fn=joint_step,
                    collate_fn=collate, progress=progress, stage_dir=config.stage_dir / "joint",
                    extra_modules={"uncertainty": losses.UncertaintyWeightedLoss(
                        learn_saliency_sigma=config.learn_saliency_sigma)})
    joint_history = joint.fit(data.train, data.val)
    # The joint phase's best weights are the stage's result: stage3/best.pt is what later notebooks load.
    if distributed.is_main():
        shutil.copyfile(config.stage_dir / "joint" / BEST, config.stage_dir / BEST)
    distributed.barrier()
    return pd.concat([history.assign(phase="head"), joint_history.assign(phase="joint")], ignore_index=True)


@torch.no_grad()
def embeddings(model: nn.Module, data, config, *, progress: bool = False):
    """(N, 1920) contrastive-stage embeddings and (N,) labels of a data set."""
    model = model.to(_device(config)).eval()
    out = precompute(lambda b: {"embedding": model(b["image"])["embedding"], "label": b["label"]},
                     data, batch_size=config.eval_batch_size, device=_device(config), collate_fn=collate,
                     progress=progress, desc="embeddings")
    return out["embedding"].numpy(), out["label"].numpy()


def _build_named(name: str, *, densenet_arch: str, base_width: int) -> nn.Module:
    """A model of the registry with the keywords its constructor takes."""
    kwargs = {}
    if name in ("dual", "densenet"):
        kwargs["densenet_arch"] = densenet_arch
    if name != "densenet":
        kwargs["base_width"] = base_width
    return build_model(name, **kwargs)


def _model_name(stage: str, saved: dict | None = None) -> str:
    if saved is not None and saved.get("stage") == "joint":
        return saved["model"]
    stage = saved["stage"] if saved is not None else stage
    return "densenet" if stage in ("stage1a", "stage1b") else "dual"


def load_stage_model(config, stage: str = "stage3", *, model_name: str | None = None) -> nn.Module:
    """A trained model from ``run_dir/<stage>/best.pt``, on the config's device, in eval mode."""
    from cxrlib.train import load_checkpoint

    state = load_checkpoint(checkpoint_path(config, stage))
    saved = state["config"]
    model = _build_named(model_name or _model_name(stage, saved), densenet_arch=saved["densenet_arch"],
                         base_width=saved["base_width"])
    load_weights(model, state, checkpoint_path(config, stage))
    return model.to(_device(config)).eval()


def trained_model(config, stage: str, *, model_name: str | None = None, required: bool = True):
    """``load_stage_model`` if the stage's checkpoint exists; else (smoke only) a random model.

    ``required=False``: return None when the checkpoint is missing (optional baselines).
    """
    path = checkpoint_path(config, stage)
    if path.is_file():
        return load_stage_model(config, stage, model_name=model_name)
    if not required:
        return None
    warn_missing_init(config.stage, path, config.profile)
    model = _build_named(model_name or _model_name(stage), densenet_arch=config.densenet_arch,
                         base_width=config.base_width)
    return model.to(_device(config)).eval()


@torch.no_grad()
def predict(model: nn.Module, data, config, *, progress: bool = True) -> dict:
    """Probabilities, predicted and true saliency maps, fixations and ids over a data set."""
    from torch.utils.data import DataLoader

    from cxrlib.train import _progress, to_device

    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(data, batch_size=config.eval_batch_size, shuffle=False, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
    out = {"probs": [], "labels": [], "saliency": [], "target": [], "fixations": [], "dicom_id": []}
    for batch in _progress(loader, total=len(loader), desc="predict", enabled=progress):
        result = model(to_device(batch, device)["image"])
        out["probs"].append(result["logits"].float().softmax(1).cpu().numpy())
        out["labels"].append(batch["label"].numpy())
        if "saliency_log" in result:
            out["saliency"].append(result["saliency_log"].float().exp().cpu().numpy()[:, 0])
        out["target"].append(batch["saliency"].numpy()[:, 0])
        out["fixations"] += [f.numpy() for f in batch["fixations"]]
        out["dicom_id"] += batch["dicom_id"]
    for key in ("probs", "labels", "saliency", "target"):
        out[key] = np.concatenate(out[key]) if out[key] else None
    return out
