"""Geometry shared by images, saliency maps and gaze points (docs/method.md section 5).

An image of native size (h, w) becomes a (H, W) network input in one of two ways:

* ``"pad_resize"`` (default): zero-pad centred to the target aspect ratio, then resize with
  anti-aliasing (bilinear, ``antialias=True``).
* ``"stride"``: the paper code's recipe. Zero-pad centred to a canvas of (k*H, k*W) and keep every
  k-th pixel. With MIMIC-sized images (about 3000 x 2500) and 640x512 this is the code's
  pad-to-3200x2560 and subsample by 5 (k = 10 for 320x256).

One :class:`Geometry` object maps all three kinds of data, so a gaze point and the pixel it
looked at always land in the same place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrlib.config.validation import check_image_size  # noqa: F401 (the datasets import it from here)
from cxrlib.config.choices import RESIZE_MODES  # noqa: F401 (declared once, with the other choices)


@dataclass(frozen=True)
class Geometry:
    """Native (h, w) -> target (H, W) mapping: centred zero padding, then a scale."""

    native: tuple[int, int]
    target: tuple[int, int]
    mode: str
    pad_top: int
    pad_left: int
    padded: tuple[int, int]  # (h + pads, w + pads)

    @classmethod
    def fit(cls, native, target, mode: str = "pad_resize") -> "Geometry":
        h, w = (int(v) for v in native)
        H, W = check_image_size(target)
        if mode == "pad_resize":
            if h * W >= w * H:  # relatively taller than the target: pad the width
                ph, pw = h, max(w, round(h * W / H))
            else:
                ph, pw = max(h, round(w * H / W)), w
        elif mode == "stride":
            k = max(1, math.ceil(max(h / H, w / W)))
            ph, pw = k * H, k * W
        else:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
        return cls((h, w), (H, W), mode, (ph - h) // 2, (pw - w) // 2, (ph, pw))

    @property
    def stride(self) -> int:
        return self.padded[0] // self.target[0]

    @property
    def scale(self) -> float:
        """Output pixels per native pixel."""
        return self.target[0] / self.padded[0]

    # -- images and maps ---------------------------------------------------------------------
    def _pad(self, array: np.ndarray) -> np.ndarray:
        h, w = self.native
        if array.shape != (h, w):
            raise ValueError(f"expected an array of native shape {self.native}, got {array.shape}")
        out = np.zeros(self.padded, dtype=np.float32)
        out[self.pad_top : self.pad_top + h, self.pad_left : self.pad_left + w] = array
        return out

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Native (h, w) float image -> (H, W) float32."""
        padded = self._pad(image)
        if self.mode == "stride":
            k = self.stride
            return np.ascontiguousarray(padded[::k, ::k])
        t = torch.from_numpy(padded)[None, None]
        out = F.interpolate(t, size=self.target, mode="bilinear", antialias=True, align_corners=False)
        return out[0, 0].numpy()

    def apply_map(self, density: np.ndarray) -> np.ndarray:
        """Native probability map -> (H, W) map that again sums to 1."""
        out = np.clip(self.apply_image(density), 0.0, None)
        total = out.sum()
        if total <= 0:
            raise ValueError("the saliency map is empty after resampling")
        return (out / total).astype(np.float32)

    # -- points ------------------------------------------------------------------------------
    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) native (x=column, y=row) -> output pixel coordinates, same convention.

        pad_resize uses pixel centres (as ``align_corners=False`` resizing does); stride keeps
        native pixel ``k * j`` as output pixel ``j``.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        shifted = pts + np.array([self.pad_left, self.pad_top], dtype=np.float64)
        if self.mode == "stride":
            return (shifted / self.stride).astype(np.float32)
        return ((shifted + 0.5) * self.scale - 0.5).astype(np.float32)

    def image_mask(self) -> np.ndarray:
        """(H, W) float mask: 1 where output pixels come from the image, 0 on the padding."""
        return (self.apply_image(np.ones(self.native, dtype=np.float32)) > 0.5).astype(np.float32)
