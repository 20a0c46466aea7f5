"""Two random views of a batch, for the self-supervised NT-Xent option of stage 1a.

The paper code trains without augmentation; SimCLR (Chen et al. 2020) needs two views per
image. Chest radiographs are not mirror-symmetric (the heart is on the left), so there is no
flip: a random crop-and-rescale (area 60-100 %), a small rotation, and a gamma/contrast jitter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_view(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> one randomly cropped, rotated, intensity-jittered view."""
    b = images.shape[0]
    dev = images.device

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=generator).to(dev)

    scale = uniform(0.6, 1.0).sqrt()  # side scale for 60-100 % of the area
    angle = uniform(-10, 10) * math.pi / 180
    shift_x, shift_y = uniform(-1, 1) * (1 - scale), uniform(-1, 1) * (1 - scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    view = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    gamma = uniform(0.7, 1.4).view(b, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(b, 1, 1, 1)
    view = view.clamp(0, 1) ** gamma
    mean = view.mean(dim=(2, 3), keepdim=True)
    return ((view - mean) * contrast + mean).clamp(0, 1)
