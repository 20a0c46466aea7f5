"""Several processes, one GPU each, with PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node N -m cxrlib train --stage ...`` starts N copies of the same program;
:func:`setup` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the process
group (NCCL on CUDA, else gloo). Without torchrun nothing here does anything: ``rank() == 0``,
``world_size() == 1``, ``barrier()`` returns at once, so single-process code pays nothing.

What the rest of the library takes from here:

* :func:`all_gather_batch`: the contrastive losses' ``gather`` hook. Embeddings are gathered
  *with* gradient (``torch.distributed.nn.functional.all_gather``), labels without.
* :func:`broadcast_buffers`: rank 0's BatchNorm statistics on every rank before validation.
* :func:`sum_across` / :func:`concat_across`: training and validation outputs (loss sums and counts,
  probabilities and labels, per-image saliency scores) merged so every rank computes the same
  metrics, hence the same scheduler and early-stopping decisions.

Gradient scale of the gathered losses. Every rank computes the same global loss ``L`` over the
gathered batch. The all-gather's backward *sums* the gradient that each rank's copy of ``L``
sends to a rank's own rows, i.e. ``N * dL/de_r``; DistributedDataParallel then *averages*
parameter gradients over the N ranks. The two factors cancel: the parameter gradient is exactly
``dL/dtheta`` of one process on the concatenated batch (``tests/test_distributed.py`` checks it).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """The process that writes checkpoints, history, figures and the synthetic data."""
    return rank() == 0


def setup(backend: str | None = None, timeout_s: float = 1800) -> bool:
    """Join torchrun's process group if there is one; return whether this run is distributed.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun, with ``MASTER_ADDR`` and
    ``MASTER_PORT``); on CUDA each process takes the GPU ``LOCAL_RANK``. Idempotent.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or "RANK" not in os.environ:
        return False
    device = None
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)  # then "cuda" (config.device None) means this process's GPU
    backend = backend or ("nccl" if device is not None else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if backend == "nccl" else None)
    return True


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a data set); the others then run it (and read)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _gather_sizes(n: int, device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def _all_gather_rows(x: torch.Tensor, *, grad: bool) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order; ranks may hold different sizes."""
    sizes = _gather_sizes(len(x), x.device)
    longest = max(sizes)
    padded = x
    if len(x) < longest:  # the collectives need equal shapes: pad, then drop the padding
        padded = torch.cat([x, x.new_zeros((longest - len(x), *x.shape[1:]))])
    if grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public one
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)
            parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def all_gather_batch(embeddings: torch.Tensor, labels: torch.Tensor | None = None):
    """The contrastive losses' ``gather`` hook: the global batch, gradients back to each rank.

    ``(embeddings, labels) -> (all embeddings, all labels)`` for ``triplet_all`` / ``supcon``;
    ``z -> all z`` for ``nt_xent``. Row order is rank 0's rows, then rank 1's, and so on.
    Outside a process group it returns its inputs unchanged.
    """
    if is_distributed() and world_size() > 1:
        embeddings = _all_gather_rows(embeddings, grad=True)
        if labels is not None:
            labels = _all_gather_rows(labels.detach(), grad=False)
    return embeddings if labels is None else (embeddings, labels)


def sum_across(*values: float) -> tuple[float, ...]:
    """Sum numbers (loss sums, sample counts) over all ranks; every rank gets the totals."""
    if not is_distributed():
        return tuple(float(v) for v in values)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics), one collective per dtype.

    DDP does this at the start of each forward, so after an epoch's last step each rank still
    holds its own statistics; validation and checkpoints need rank 0's everywhere.
    """
    if not is_distributed():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for group in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in group])
        dist.broadcast(flat, src)
        for b, part in zip(group, flat.split([b.numel() for b in group])):
            b.copy_(part.view_as(b))


def concat_across(lists: dict[str, list]) -> dict[str, list]:
    """Each key's list from every rank, concatenated in rank order, on every rank (one collective).

    For validation outputs: probabilities, labels, per-image saliency scores (anything picklable).
    """
    if not is_distributed():
        return {k: list(v) for k, v in lists.items()}
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, {k: list(v) for k, v in lists.items()})
    return {k: [item for part in gathered for item in part[k]] for k in lists}
