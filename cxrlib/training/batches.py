"""Batches: moving them to the device, the order of an epoch and the loader's worker processes
(used by the trainer, the frozen-feature precompute and ``predict``; their bar: cxrlib.progress)."""

from __future__ import annotations

import torch

from cxrlib.training import precision


def to_device(batch: dict, device: torch.device, *, channels_last: bool = False) -> dict:
    """Tensors of ``batch`` on ``device`` (4-D ones in channels_last when asked)."""
    return {k: (precision.to_memory_format(v.to(device, non_blocking=True), channels_last) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def loader_workers(config, device: torch.device) -> int:
    """DataLoader worker processes: ``config.num_workers``, else one per core (at most 8) on CUDA
    and none elsewhere. On a CPU the model's own threads use every core, and reading a cached
    sample takes well under a millisecond, so workers would only take cores from the model."""
    from cxrlib.data.prepare import default_workers

    if config.num_workers is not None:
        if config.num_workers < 0:
            raise ValueError(f"parameter 'num_workers' must be 0 or more, got {config.num_workers}")
        return config.num_workers
    return default_workers() if device.type == "cuda" else 0


class EpochShuffle(torch.utils.data.Sampler):
    """A random order of ``n`` indices that depends only on (seed, epoch); see Trainer._loader.

    The draws are those of a per-epoch DataLoader with ``shuffle=True`` and a generator seeded
    ``seed * 100003 + epoch`` (one draw for the worker seed, then the permutation), which the
    trainer used before its loaders persisted, so earlier runs' orders are kept.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return iter(torch.randperm(self.n, generator=generator).tolist())
