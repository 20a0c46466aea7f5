"""The saliency metrics of :mod:`cxrlib.metrics.saliency`, batched in torch on the maps' device.

Same definitions (Bylinskii et al. 2019, the MIT saliency benchmark), same edge cases (a constant
map scores chance level: CC 0, NSS 0, AUC-Judd 0.5), same errors (NaN/inf, negative or all-zero
maps raise ValueError), but one call scores a whole (N, H, W) batch where it lies, so a GPU's
validation does not copy every map to the host and loop over images in NumPy.

Precision (a choice): the sums run in float64 wherever the device has it (CPU, CUDA), so the
scores equal the NumPy reference to far better than 1e-5 and the figures a run prints do not
move; on MPS, which has no float64, in float32. The maps are small next to the network, so the
float64 cost does not show in an epoch (``cxrlib bench --suite`` measures it).
"""

from __future__ import annotations

import numpy as np
import torch

from cxrlib.metrics.saliency import EPS

__all__ = ["batch_scores_torch", "cc_t", "kld_t", "sim_t", "nss_t", "auc_judd_t"]


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) -> (N, H*W) in the working dtype."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name}: expected (N, H, W) or (N, 1, H, W) maps, got shape {tuple(x.shape)}")
    return x.reshape(len(x), -1).to(_work_dtype(x.device))


def _pair(predicted_maps: torch.Tensor, gaze_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if predicted_maps.shape != gaze_maps.shape:
        raise ValueError(f"maps differ in shape: {tuple(predicted_maps.shape)} vs {tuple(gaze_maps.shape)}")
    p, g = _flat(predicted_maps, "predicted_maps"), _flat(gaze_maps.to(predicted_maps.device), "gaze_maps")
    if not bool(torch.isfinite(p).all() & torch.isfinite(g).all()):  # one host sync per batch
        raise ValueError("maps contain NaN or inf")
    return p, g


def _distributions(p: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sp, sg = p.sum(1, keepdim=True), g.sum(1, keepdim=True)
    bad = torch.stack([(p < 0).any(), (g < 0).any(), (sp <= 0).any(), (sg <= 0).any()]).tolist()
    for flag, what in zip(bad, ("predicted_map has negative values", "gaze_map has negative values",
                                "predicted_map sums to zero", "gaze_map sums to zero")):
        if flag:
            raise ValueError(what)
    return p / sp, g / sg


def cc_t(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Pearson CC per row of two (N, P) tensors; 0 where either map is constant."""
    a, b = p - p.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    denom = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return torch.where(denom > 0, (a * b).sum(1) / torch.where(denom > 0, denom, 1), 0)


def kld_t(p: torch.Tensor, g: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """KL(g || p) per row of two (N, P) distributions; the benchmark's eps placement, or the
    exact KL for ``eps=0`` (0 log 0 = 0; inf where p is 0 and g is not), as `saliency.kld`."""
    if eps <= 0:
        return (torch.xlogy(g, g) - torch.where(g > 0, g * torch.log(p), 0)).sum(1)
    return (g * torch.log(eps + g / (p + eps))).sum(1)


def sim_t(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Histogram intersection per row of two (N, P) distributions."""
    return torch.minimum(p, g).sum(1)


def nss_t(p: torch.Tensor, fix: torch.Tensor) -> torch.Tensor:
    """NSS per row: ``p`` (N, P) maps, ``fix`` (N, P) bool; std with ddof=1; 0 for a constant
    map; NaN for a row without a fixated pixel (`batch_saliency_scores`'s convention)."""
    mean = p.mean(1, keepdim=True)
    std = p.std(1, correction=1, keepdim=True) if p.shape[1] > 1 else torch.zeros_like(mean)
    z = (p - mean) / torch.where(std > 0, std, 1)
    n_fix = fix.sum(1)
    score = (z * fix).sum(1) / n_fix.clamp(min=1)
    score = torch.where(std[:, 0] > 0, score, 0)
    return torch.where(n_fix > 0, score, torch.nan)


_JITTER: dict = {}


def _jitter(n_pixels: int, shape, seed: int, device, dtype) -> torch.Tensor:
    """The reference's tie-breaking jitter: ``default_rng(seed).random(shape) / 1e7``, the same
    for every map of one shape, so it is drawn once and kept on the device."""
    key = (tuple(shape), seed, str(device), dtype)
    if key not in _JITTER:
        _JITTER[key] = torch.as_tensor(np.random.default_rng(seed).random(tuple(shape)) / 1e7,
                                       device=device).reshape(n_pixels).to(dtype)
    return _JITTER[key]


def auc_judd_t(p: torch.Tensor, fix: torch.Tensor, shape, *, seed: int = 0) -> torch.Tensor:
    """AUC-Judd per row, as `saliency.auc_judd` with its seeded jitter (``shape``: the maps'
    (H, W), which the jitter is drawn for). Sorting is batched; the per-image part is a
    searchsorted over that image's fixated values. NaN for a row without fixations."""
    n, n_pix = p.shape
    lo, hi = p.min(1, keepdim=True).values, p.max(1, keepdim=True).values
    constant = (hi == lo)[:, 0]
    s = (p - lo) / torch.where(hi > lo, hi - lo, 1) + _jitter(n_pix, shape, seed, p.device, p.dtype)
    ordered = torch.sort(s, dim=1).values
    n_fix = fix.sum(1)
    if bool((n_fix == n_pix).any()):
        raise ValueError("every pixel is fixated: no negatives for AUC")
    out = torch.full((n,), torch.nan, dtype=p.dtype, device=p.device)
    for i in torch.nonzero(n_fix > 0).flatten().tolist():  # variable fixation counts: one image at a time
        if constant[i]:
            out[i] = 0.5
            continue
        thresholds = torch.sort(s[i][fix[i]], descending=True).values
        k = len(thresholds)
        above = n_pix - torch.searchsorted(ordered[i], thresholds, side="left")  # #(s >= thresh)
        steps = torch.arange(1, k + 1, device=p.device, dtype=p.dtype)
        zero, one = p.new_zeros(1), p.new_ones(1)
        tp = torch.cat([zero, steps / k, one])
        fp = torch.cat([zero, (above - steps) / (n_pix - k), one])
        out[i] = ((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2).sum()
    return out


@torch.no_grad()
def batch_scores_torch(predicted_maps: torch.Tensor, gaze_maps: torch.Tensor,
                       fixation_maps: torch.Tensor | None = None, *, kld_eps: float = EPS,
                       auc: bool = True) -> dict[str, torch.Tensor]:
    """CC, KLD and SIM of each (N, H, W) or (N, 1, H, W) map against its ground truth, on the
    maps' device; with ``fixation_maps`` (same shape; ``> 0`` is fixated) NSS and, when ``auc``,
    AUC-Judd too (NaN for images without fixations). Returns {metric: (N,) tensor}."""
    p, g = _pair(predicted_maps, gaze_maps)
    pn, gn = _distributions(p, g)
    out = {"cc": cc_t(p, g), "kld": kld_t(pn, gn, kld_eps), "sim": sim_t(pn, gn)}
    if fixation_maps is not None:
        fix = _flat(fixation_maps.to(predicted_maps.device), "fixation_maps")
        if fix.shape != p.shape:
            raise ValueError(f"fixation maps {tuple(fixation_maps.shape)} do not match the maps "
                             f"{tuple(predicted_maps.shape)}")
        fix = fix > 0
        out["nss"] = nss_t(p, fix)
        if auc:
            out["auc_judd"] = auc_judd_t(p, fix, predicted_maps.shape[-2:])
    return out
