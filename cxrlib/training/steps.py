"""What one training step of each stage computes, and the frozen-feature reuse of stages 2 and 3.

A step function ``step(model, batch, extra=None) -> {"loss": ..., "logits"?: ..., "saliency_log"?: ...}``
is what :class:`~cxrlib.training.trainer.Trainer` calls; the stage registry (:mod:`cxrlib.training.stages`) names
the one each stage uses. ``contrastive_step(config)`` is a factory: the loss is a setting.
"""

from __future__ import annotations

from torch import nn

from cxrlib import losses
from cxrlib.training import distributed, precision
from cxrlib.data import collate
from cxrlib.data.augment import random_view
from cxrlib.training.frozen_features import CachedFeatures, precompute


# -- step functions ----------------------------------------------------------------------
def projection_head(in_features: int = 1920, hidden: int = 512, out: int = 128) -> nn.Module:
    """SimCLR's MLP projection head (Chen et al. 2020), used only by the NT-Xent option."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def contrastive_extra(config, model) -> dict | None:
    """Stage 1a's modules trained beside the model: NT-Xent's projection head."""
    return {"projection": projection_head(model.densenet.out_channels)} if config.loss == "ntxent" else None


def joint_extra(config, model) -> dict:
    """The joint loss's learnt task weights (Kendall et al. 2018), trained beside the model."""
    return {"uncertainty": losses.UncertaintyWeightedLoss(learn_saliency_sigma=config.learn_saliency_sigma)}


def contrastive_step(config):
    """Stage 1a: the configured contrastive loss on denseblock4 (docs/method.md section 3).

    The triplet loss takes the unpooled (B, 1920, h, w) map by default, as the paper's code does
    (``triplet_feature="pooled"``: GAP, 1920-d), summed over triplets (``triplet_reduction``);
    SupCon and NT-Xent take GAP(denseblock4).

    Under torchrun the training loss is formed on the batch of all ranks (every rank's negatives
    see the others'; gradients flow back through the all-gather, see ``cxrlib.training.distributed``);
    validation, in eval mode, stays per rank.
    """
    # each loss takes its own hyper-parameter: the triplet a margin, SupCon / NT-Xent a temperature
    hyper = {"margin": config.margin, "reduction": config.triplet_reduction} if config.loss == "triplet" \
        else {"temperature": config.temperature}
    unpooled = config.loss == "triplet" and config.triplet_feature == "map"

    def step(model, batch, extra=None):
        gather = distributed.all_gather_batch if model.training and distributed.world_size() > 1 else None
        if config.loss == "ntxent":  # self-supervised: two random views of each image
            inputs = [extra["projection"](model(random_view(batch["image"]))["embedding"]) for _ in range(2)]
        elif unpooled:  # the paper code's triplet: the denseblock4 map (B, 1920, h, w) and the labels
            inputs = [model.forward_features(batch["image"])["bottleneck"], batch["label"]]
        else:  # label-supervised: the embedding (B, 1920) and the labels
            inputs = [model(batch["image"])["embedding"], batch["label"]]
        return {"loss": losses.contrastive_loss(config.loss, *inputs, gather=gather, **hyper)}
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
    return {"loss": losses.saliency_kl(out["saliency_log"], batch["gaze_map"]), "saliency_log": out["saliency_log"]}


def fusion_step(model, batch, extra=None):
    """Stage 3 (head only): cross-entropy of the fusion classifier on the 1984-d features."""
    if "fused" in batch:  # cached pre-logits of the frozen network
        logits = model.classifier(batch["fused"])
    else:
        logits = model.classifier(model.forward_head(model.forward_features(batch["image"]), pre_logits=True))
    return {"loss": losses.classification_ce(logits, batch["label"]), "logits": logits}


def joint_step(model, batch, extra):
    """The joint stage (and stage 3's fine-tuning): uncertainty-weighted CE + KL over the whole
    network (docs/method.md section 3; Kendall et al. 2018)."""
    out = model(batch["image"])
    ce = losses.classification_ce(out["logits"], batch["label"])
    kl = losses.saliency_kl(out["saliency_log"], batch["gaze_map"])
    return {"loss": extra["uncertainty"](ce, kl), **out}


# -- frozen-feature reuse ------------------------------------------------------------------
def with_frozen_densenet(model, data, config, *, progress=True):
    """Stage 2: the frozen DenseNet's outputs, computed once and served with each sample."""
    model.eval()
    device = next(model.parameters()).device
    # in the step's precision: what the frozen part would compute inside the training step, and
    # kept in it (half the host memory of float32 under autocast, the same values)
    with precision.config_autocast(config, device):
        feats = precompute(lambda b: {f"dense_{k}": v for k, v in model.densenet(b["image"]).items()},
                           data, batch_size=config.eval_batch_size, device=device, collate_fn=collate,
                           progress=progress, desc="frozen DenseNet features", keep_half=True)
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
