"""Inputs of every metric: NumPy arrays or torch tensors (any device), as NumPy."""

from __future__ import annotations

import numpy as np


def as_numpy(x, dtype=np.float64) -> np.ndarray:
    """``x`` as a NumPy array of ``dtype`` (None: keep the dtype); a tensor is detached and copied to the CPU."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)
