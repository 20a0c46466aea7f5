"""Batches: moving them to the device, the order of an epoch, the loader's worker processes and
the progress bar around a loop (used by the trainer, the frozen-feature precompute and ``predict``)."""

from __future__ import annotations

import os
import sys
import time

import torch

from cxrlib.training import precision


def to_device(batch: dict, device: torch.device, *, channels_last: bool = False) -> dict:
    """Tensors of ``batch`` on ``device`` (4-D ones in channels_last when asked)."""
    return {k: (precision.to_memory_format(v.to(device, non_blocking=True), channels_last) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def in_kernel() -> bool:
    """Whether this runs in a Jupyter (IPython) kernel, not a terminal."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def widget_front_end() -> bool:
    """Whether someone's notebook front end will draw a widget bar: a kernel, ipywidgets, and no sign
    of a headless run (``CXRLIB_HEADLESS``, which ``cxrlib run`` sets for papermill's kernels, or
    pytest's environment, which nbmake's kernels inherit). A headless run saves a widget as "0%"."""
    if os.environ.get("CXRLIB_HEADLESS") or os.environ.get("PYTEST_CURRENT_TEST") or not in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class TextProgress:
    """Progress as whole lines at every quarter of ``total`` (and the last item): text that reads the
    same in a saved notebook as it did live, where a widget or carriage-return bar is saved as "0%"."""

    def __init__(self, iterable, *, total: int, desc: str, stream=None):
        self.iterable, self.total, self.desc = iterable, max(int(total or 0), 0), desc
        self.stream, self.postfix = stream or sys.stdout, ""

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def __iter__(self):
        marks = {max(1, round(self.total * q / 4)) for q in (1, 2, 3, 4)} if self.total else set()
        started = time.perf_counter()
        for count, item in enumerate(self.iterable, 1):
            yield item
            if count in marks:
                extra = f", {self.postfix}" if self.postfix else ""
                print(f"{self.desc}: {count}/{self.total} ({100 * count // self.total}%), "
                      f"{time.perf_counter() - started:.1f} s{extra}", file=self.stream, flush=True)


def progress_bar(iterable, *, total, desc, enabled):
    """A bar over ``iterable`` (its iterator: see below), or ``iterable`` itself when not ``enabled``:
    a widget bar in a notebook someone is looking at, text lines in a headless kernel (papermill,
    nbmake), tqdm's bar in a terminal."""
    if not enabled:
        return iterable
    if in_kernel() and not widget_front_end():
        return TextProgress(iter(iterable), total=total, desc=desc)
    from tqdm.auto import tqdm

    # An iterator, not the DataLoader: tqdm.auto's bar calls iter() on what it gets once more,
    # and every DataLoader iterator draws a seed from the loader's generator, so the bar alone
    # changed the shuffled order (a notebook, with bars, trained otherwise than --no-progress).
    return tqdm(iter(iterable), total=total, desc=desc, leave=False)


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
