"""Losses of the three stages (docs/method.md, section 3): saliency KL, cross-entropy, the
uncertainty-weighted joint loss, and the contrastive losses of the pre-training stage.

All are pure functions of tensors with explicit arguments; the one module,
`UncertaintyWeightedLoss`, only holds the two learnable log-sigmas.

Contrastive losses take an optional ``gather`` hook that turns the local batch into the global
one before the loss is formed (for example an all-gather that keeps gradients, under
distributed training). ``gather=None`` (default) uses the local batch only.
- label-based losses (`triplet_all`, `supcon`): ``embeddings, labels = gather(embeddings, labels)``
- `nt_xent`: ``z1, z2 = gather(z1), gather(z2)``
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrlib.config.choices import CONTRASTIVE_LOSSES as _LOSS_NAMES, TRIPLET_REDUCTIONS

# TripletMarginLoss / F.pairwise_distance add this to the difference vector.
_PAIRWISE_EPS = 1e-6


def saliency_kl(saliency_log: torch.Tensor, gaze_map: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(gaze map || prediction) summed over pixels, mean over the batch (docs/method.md, section 3).

    Follows the paper's code: ``KLDivLoss(reduction="batchmean")`` with the prediction a
    log-softmax over all pixels and the gaze map normalised to sum 1 per image.

    Args:
        saliency_log: (B, 1, H, W) log-probabilities over the pixels of each image.
        gaze_map: (B, 1, H, W) non-negative maps, the truth (any scale; normalised here).
        eps: a gaze map whose pixel sum is <= eps is treated as empty.

    Raises:
        ValueError: shapes differ, a gaze map has a negative value, or sums to (about) zero.
    """
    if saliency_log.shape != gaze_map.shape:
        raise ValueError(f"saliency_log {tuple(saliency_log.shape)} != gaze_map {tuple(gaze_map.shape)}")
    log_p = saliency_log.float().flatten(1)  # (B, H*W); float32 also under autocast
    t = gaze_map.float().flatten(1)
    sums = t.sum(dim=1, keepdim=True)  # (B, 1)
    # One host sync for both checks.
    empty, negative = torch.stack([(sums <= eps).any(), (t < 0).any()]).tolist()
    if negative:
        raise ValueError("gaze map has negative values")
    if empty:
        raise ValueError("gaze map sums to zero for at least one image")
    t = t / sums
    # xlogy gives 0 * log 0 = 0, as KLDivLoss does.
    return (torch.xlogy(t, t) - t * log_p).sum() / log_p.shape[0]


def classification_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on logits (B, C) and labels (B,), no class weights (docs/method.md, section 3)."""
    return F.cross_entropy(logits, labels)


def uncertainty_weighted(
    ce: torch.Tensor, kl: torch.Tensor, log_sigma_c: torch.Tensor, log_sigma_s: torch.Tensor
) -> torch.Tensor:
    """Joint loss ``CE / s_c^2 + log(s_c + 1) + KL / (2 s_s^2) + log(s_s + 1)``, s = exp(log_sigma).

    Homoscedastic-uncertainty weighting (Kendall et al. 2018) in the form of MT-UNet's code
    (Zhu et al. 2022), which the paper's code reuses (docs/method.md, section 3). The ``+ 1`` inside the
    logs keeps the regulariser positive; classification counts as the "classification" term
    (1/s^2), saliency as the "regression" term (1/(2 s^2)).
    """
    s_c = torch.exp(log_sigma_c)
    s_s = torch.exp(log_sigma_s)
    return ce / s_c**2 + torch.log(s_c + 1) + kl / (2 * s_s**2) + torch.log(s_s + 1)


class UncertaintyWeightedLoss(nn.Module):
    """Holds the learnable log-sigmas of `uncertainty_weighted` (both initialised at 0).

    As in the paper's code only the classification sigma is learned by default; set
    ``learn_saliency_sigma=True`` to learn the saliency one too. Add this module's parameters
    to the optimiser.
    """

    def __init__(self, *, learn_saliency_sigma: bool = False) -> None:
        super().__init__()
        self.log_sigma_c = nn.Parameter(torch.zeros(()))
        self.log_sigma_s = nn.Parameter(torch.zeros(()), requires_grad=learn_saliency_sigma)

    def forward(self, ce: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        return uncertainty_weighted(ce, kl, self.log_sigma_c, self.log_sigma_s)


def _same_label(labels: torch.Tensor) -> torch.Tensor:
    labels = labels.reshape(-1)
    return labels[:, None] == labels[None, :]  # (B, B) bool




def _pairwise_rows(features: torch.Tensor) -> torch.Tensor:
    """d[r, i, j] = ||f_i[r] + 1e-6 - f_j[r]||_2 for features (B, R, L): one distance per row r."""
    # The direct (non-matmul) kernel is exact, and its backward keeps no (B, B, L) differences.
    return torch.cdist(
        (features + _PAIRWISE_EPS).transpose(0, 1), features.transpose(0, 1),
        compute_mode="donot_use_mm_for_euclid_dist",
    )  # (R, B, B)


def triplet_all(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 1.0,
    reduction: str = "sum",
    gather: Callable | None = None,
) -> torch.Tensor:
    """Label-supervised triplet margin loss over every valid triplet in the batch.

    The paper code's active contrastive loss (docs/method.md, section 3): for each (a, p, n) with
    ``a != p``, ``label[p] == label[a]`` and ``label[n] != label[a]``, the value of
    ``torch.nn.TripletMarginLoss(margin, p=2)(f[a:a+1], f[p:p+1], f[n:n+1])``, then the sum
    (``reduction="sum"``, as the code's ``train_iterate`` accumulates it) or the mean over the
    valid triplets, zero-loss ones included.

    That module takes the L2 distance ``||x - y + 1e-6||`` along the *last* axis and averages the
    hinge ``max(d(a, p) - d(a, n) + margin, 0)`` over every other axis. So for (B, D) embeddings
    the distance is over the whole vector, and for an unpooled (B, C, h, w) feature map (what
    the code feeds it) it is one distance per (channel, row) over the w columns, the hinge then
    averaged over the C*h rows.

    Cost: for each anchor and row, the sum over its (positive, negative) pairs is formed from
    the negatives' distances sorted once, with prefix sums: ``sum_n max(x - d_n, 0) = k x -
    (sum of the k smallest d_n)``, k = #(d_n < x). Memory and time grow with B^2 rows (plus a
    log for the sort), not with the B^3 triplets, and no triplet is visited in Python.

    Args:
        embeddings: (B, D) vectors or (B, ..., L) maps (distance along the last axis).
        labels: (B,) integer class labels.
        margin: the hinge margin (the code: 1.0).
        reduction: ``"sum"`` over triplets (the code) or ``"mean"``.
        gather: optional ``(embeddings, labels) -> (embeddings, labels)`` hook (module docstring).

    Returns a float32 scalar; with no valid triplet, a zero that keeps the graph (``0 * sum``).
    """
    if reduction not in TRIPLET_REDUCTIONS:
        raise ValueError(f"reduction must be one of {TRIPLET_REDUCTIONS}, got {reduction!r}")
    if embeddings.dim() < 2:
        raise ValueError(f"embeddings must be (B, D) or (B, ..., L), got shape {tuple(embeddings.shape)}")
    if gather is not None:
        embeddings, labels = gather(embeddings, labels)
    b = embeddings.shape[0]
    rows = embeddings.float().reshape(b, -1, embeddings.shape[-1])  # (B, R, L); (B, D) -> R = 1
    labels = labels.reshape(-1).to(rows.device)
    same = _same_label(labels)  # (B, B)
    positive = same & ~torch.eye(b, dtype=torch.bool, device=same.device)  # (B_a, B_p)
    negative = ~same  # (B_a, B_n)
    n_triplets = (positive.sum(1) * negative.sum(1)).sum()
    if not bool(n_triplets > 0):
        return 0 * embeddings.sum()
    d = _pairwise_rows(rows)  # (R, B_a, B_j)
    # Negatives of each anchor, sorted ascending per (row, anchor); the others pushed to the end.
    d_neg = d.masked_fill(~negative, float("inf")).sort(dim=-1).values  # (R, B_a, B_n)
    prefix = torch.cat([torch.zeros_like(d_neg[..., :1]),
                        torch.where(torch.isinf(d_neg), 0.0, d_neg).cumsum(-1)], dim=-1)  # (R, B_a, B_n + 1)
    x = d + margin  # (R, B_a, B_p): the hinge is positive for negatives closer than this
    k = torch.searchsorted(d_neg.detach().contiguous(), x.detach().contiguous())  # #(d_n < x)
    hinge = k * x - prefix.gather(-1, k)  # sum over the anchor's negatives, (R, B_a, B_p)
    total = (hinge * positive).sum() / rows.shape[1]  # the module's mean over the R rows
    return total if reduction == "sum" else total / n_triplets


def supcon(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 0.07,
    gather: Callable | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020, eq. 2), one view per sample.

    ``L = mean_i -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T))``
    with z the L2-normalised embeddings and P(i) the other samples with i's label. Anchors
    without a positive are left out of the mean; with none at all the result is a zero that keeps
    the graph. (No ``temperature / base_temperature`` factor: at the code's T = 0.07 it is 1.)
    For several views per sample, concatenate the views and repeat the labels.

    Args:
        embeddings: (B, D) features; (B, ...) is flattened.
        labels: (B,) integer class labels.
        gather: optional ``(embeddings, labels) -> (embeddings, labels)`` hook (module docstring).
    """
    embeddings = embeddings.flatten(1)
    if gather is not None:
        embeddings, labels = gather(embeddings, labels)
    z = F.normalize(embeddings.float(), dim=1)
    logits = z @ z.T / temperature  # (B, B)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # over a != i
    positives = _same_label(labels) & ~self_mask
    n_pos = positives.sum(dim=1)  # (B,)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return 0 * embeddings.sum()
    # where() rather than multiply: the diagonal of log_prob is -inf.
    pos_sum = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(pos_sum[has_pos] / n_pos[has_pos]).mean()


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.5,
    gather: Callable | None = None,
) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, SimCLR, eq. 1) over the 2B views of B samples.

    Views ``z1[k]`` and ``z2[k]`` are positives; the other 2B - 2 views are negatives. With
    cosine similarity ``sim`` (L2 normalisation inside), for each of the 2B views i with partner j:
    ``l(i, j) = -log(exp(sim(i, j) / T) / sum_{k != i} exp(sim(i, k) / T))``, mean over all 2B.

    Args:
        z1, z2: (B, D) projections of two augmented views; (B, ...) is flattened.
        gather: optional ``z -> z`` hook applied to each view (module docstring).
    """
    z1, z2 = z1.flatten(1), z2.flatten(1)
    if z1.shape != z2.shape:
        raise ValueError(f"views differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    if gather is not None:
        z1, z2 = gather(z1), gather(z2)
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, partner)


CONTRASTIVE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "triplet": triplet_all,
    "supcon": supcon,
    "ntxent": nt_xent,
}
if tuple(CONTRASTIVE_LOSSES) != _LOSS_NAMES:  # the names are declared in cxrlib.config.choices
    raise RuntimeError(f"losses {tuple(CONTRASTIVE_LOSSES)} differ from cxrlib.config.choices {_LOSS_NAMES}")


def contrastive_loss(name: str, *args, **kwargs) -> torch.Tensor:
    """Call the contrastive loss named ``name`` (a key of `CONTRASTIVE_LOSSES`) with the rest.

    ``"triplet"`` and ``"supcon"`` take ``(embeddings, labels)``; ``"ntxent"`` takes ``(z1, z2)``.
    """
    try:
        fn = CONTRASTIVE_LOSSES[name]
    except KeyError:
        valid = ", ".join(repr(k) for k in CONTRASTIVE_LOSSES)
        raise ValueError(f"unknown contrastive loss {name!r}; valid names: {valid}") from None
    return fn(*args, **kwargs)
