"""Frozen-feature reuse: what frozen parts compute does not change between epochs, so a stage
computes it once (:func:`precompute`) and trains on the stored tensors (:class:`CachedFeatures`).
Stage 2 reuses the frozen DenseNet's features, stage 3 in head mode the fused vectors
(:mod:`cxrlib.training.steps`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from cxrlib.progress import progress_bar
from cxrlib.training.batches import to_device


@torch.no_grad()
def precompute(fn: Callable, data: Dataset, *, batch_size: int, device, collate_fn=None, progress=True,
               desc="features", keep_half: bool = False) -> dict:
    """Run ``fn(batch) -> {name: tensor}`` once over ``data``; return the stacked CPU tensors.

    Used for frozen-feature reuse: what frozen parts compute does not change between epochs.
    Floating-point outputs become float32, except with ``keep_half``: outputs that ``fn``
    produced in half precision (under autocast) are kept so, with the same values in half the
    host memory. That suits features whose first use in the step casts them to the autocast
    dtype anyway (stage 2's DenseNet features: upsampling, then a convolution).
    """
    device = torch.device(device)
    # A private generator: a DataLoader without one draws its base seed from the global RNG,
    # which would shift every later dropout mask (and break reuse/no-reuse equivalence).
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    chunks: dict[str, list] = {}
    for batch in progress_bar(loader, total=len(loader), desc=desc, enabled=progress):
        out = fn(to_device(batch, device))
        for k, v in out.items():
            if v.is_floating_point() and not (keep_half and v.dtype in (torch.bfloat16, torch.float16)):
                v = v.float()
            chunks.setdefault(k, []).append(v.detach().cpu())
    return {k: torch.cat(v) for k, v in chunks.items()}


class CachedFeatures(Dataset):
    """Precomputed tensors (row ``i`` of each), added to a data set's samples or (``base=None``)
    standing alone."""

    def __init__(self, base: Dataset | None, features: dict):
        self.base, self.features = base, features
        self.n = len(next(iter(features.values())))
        if base is not None and len(base) != self.n:
            raise ValueError(f"{len(base)} samples but {self.n} feature rows")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        sample = {} if self.base is None else dict(self.base[index])
        sample.update({k: v[index] for k, v in self.features.items()})
        return sample

    def __getitems__(self, indices) -> "list[dict] | FeatureBatch":
        """A DataLoader's batch at once. Standing alone (stage 3's head loop), the rows are taken
        from the cached tensors with one index per tensor, already a batch (`FeatureBatch`,
        which ``collate`` passes through), instead of one dict per sample stacked again."""
        if self.base is not None:
            return [self[i] for i in indices]
        rows = torch.as_tensor(indices, dtype=torch.long)
        return FeatureBatch({k: v[rows] for k, v in self.features.items()})


class FeatureBatch(dict):
    """A batch that `CachedFeatures` assembled from its tensors: ``collate`` returns it as it is."""
