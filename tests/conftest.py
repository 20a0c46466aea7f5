"""Shared fixtures. Two cores oversubscribe easily: pin torch to them."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)
