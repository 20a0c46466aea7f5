"""Gaze recordings to saliency maps (docs/method.md section 5, docs/method.md section 5).

Three conventions meet here (docs/method.md section 5, "The gaze-to-map conventions"):

============  =====================  ============================  ==========================
              EGD authors            paper's code (default)        REFLACX
source        fixations.csv          eye_gaze.csv (raw samples)    fixations.csv
weight        count                  count                         fixation duration
sigma         150 px native          75.5 px native                1 degree of visual angle
clipping      display padding        off-image points dropped      to the rectangle shown
============  =====================  ============================  ==========================

``X_ORIGINAL``/``Y_ORIGINAL`` are already native image coordinates (column, row): the display
padding of the master sheet does not apply to them. Points off the image are dropped and
counted, never clipped onto the border.

The map is the sum of one isotropic Gaussian per gaze point, restricted to the image and
normalised to sum 1. :func:`gaze_map_native` builds it literally (accumulate at native
resolution, blur, then resample with the image); :func:`gaze_map` evaluates the same Gaussians
directly on the output grid, which is exact up to the resampling filter and avoids blurring a
3000 x 2500 array per image. A test checks the two agree.

The REFLACX convention is ``gaze_map(..., convention="reflacx")`` on :class:`ShownGazePoints`:
each fixation's Gaussian has its own sigma (1 degree of visual angle: the row's pixels per
degree, separately along x and y), is weighted by the fixation's duration and is cut to the part
of the image on screen at that moment (zoom and pan). With one sigma for all points, equal
durations and the whole image shown it is the fixed-sigma map (a test checks it).

Fixations off the image (``off_image``, :data:`OFF_IMAGE`): ``"drop"`` (the default) drops and
counts them, as for EGD-CXR. ``"cut"`` is what the REFLACX authors' own heatmaps do
(``examples_and_paper_numbers/generate_heatmaps.py`` in ricbl/eyetracking): every fixation keeps
its Gaussian, evaluated only on the image rectangle shown with it, so a fixation just past the
border still puts its tail on the image. With the fixed-sigma convention ``"cut"`` cuts to the
image. Only points with a non-finite coordinate are dropped then.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cxrlib.data import tables
from cxrlib.data.geometry import Geometry
from cxrlib.config.choices import GAZE_SOURCES, WEIGHTINGS  # noqa: F401 (declared once, with the other choices)

GAZE_COLUMNS = ("DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL")
DURATION_COLUMN = "FPOGD"
PAPER_SIGMA_PX = 75.5  # paper code: OpenCV kernel 501, sigma 0 -> 0.3*((501-1)*0.5-1)+0.8
CONVENTIONS = ("fixed_sigma", "reflacx")
OFF_IMAGE = ("drop", "cut")  # fixations off the image: dropped and counted, or (REFLACX authors) kept and cut
REFLACX_SIGMA_DEGREES = 1.0  # REFLACX heatmaps: sigma of one degree of visual angle
MIMIC_NATIVE_SIDE = 3000.0  # typical long side of a MIMIC-CXR image, to express sigma relatively


def _on_image(xy: np.ndarray, native_shape) -> np.ndarray:
    h, w = native_shape
    x, y = xy[:, 0], xy[:, 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)


@dataclass
class GazePoints:
    """The gaze of one image in native pixel coordinates, before any dropping."""

    xy: np.ndarray  # (N, 2) float64, columns x (column) and y (row)
    weight: np.ndarray  # (N,) float64

    def inside(self, native_shape) -> tuple["GazePoints", int]:
        """Keep the points on the image; return them and how many were dropped."""
        keep = _on_image(self.xy, native_shape)
        return GazePoints(self.xy[keep], self.weight[keep]), int((~keep).sum())

    def finite(self) -> tuple["GazePoints", int]:
        """Keep every point with finite coordinates, on the image or not (``off_image="cut"``)."""
        keep = np.isfinite(self.xy).all(axis=1)
        return type(self)(*(getattr(self, f.name)[keep] for f in fields(self))), int((~keep).sum())


@dataclass
class ShownGazePoints(GazePoints):
    """Fixations with what the reader saw at the time (REFLACX): per point, the native pixels
    per degree of visual angle along x and y, and the image rectangle on screen."""

    pixels_per_degree: np.ndarray  # (N, 2) float64: x, y
    shown: np.ndarray  # (N, 4) float64: xmin, ymin, xmax, ymax in native pixels

    def inside(self, native_shape) -> tuple["ShownGazePoints", int]:
        keep = _on_image(self.xy, native_shape)
        return (ShownGazePoints(self.xy[keep], self.weight[keep], self.pixels_per_degree[keep], self.shown[keep]),
                int((~keep).sum()))


def load_gaze_csv(path, *, weighting: str = "count", known_ids=None) -> dict[str, GazePoints]:
    """Read ``eye_gaze.csv`` or ``fixations.csv`` into {dicom_id: GazePoints}.

    Rows whose ``DICOM_ID`` is not in ``known_ids`` are an error (they usually mean the master
    sheet and the gaze file come from different releases), as are missing columns, an empty
    file and non-numeric coordinates.
    """
    import pandas as pd

    path = Path(path)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not path.is_file():
        raise FileNotFoundError(f"gaze file not found: {path}")
    needed = list(GAZE_COLUMNS) + ([DURATION_COLUMN] if weighting == "duration" else [])
    try:
        ids_as_text = {c: str for c in tables.header(path) if c.strip() == "DICOM_ID"}  # keeps zero-padded ids
        table = tables.read_csv(path, needed, usecols=lambda c: c.strip() in needed, dtype=ids_as_text)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (expected a header and gaze rows)") from None
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {missing}; a gaze file needs {needed} "
            f"(EGD-CXR eye_gaze.csv / fixations.csv)"
        )
    if table.empty:
        raise ValueError(f"{path}: the file has a header but no gaze rows")
    tables.check_filled(table, ("DICOM_ID",), path)
    for col in needed[1:]:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}, line {row + 2}: column {col} is not a number ({table[col].iloc[row]!r})")
        table[col] = values
    ids = table["DICOM_ID"].astype(str).str.strip()
    if known_ids is not None:
        unknown = ~ids.isin(set(known_ids))
        if unknown.any():
            rows = np.flatnonzero(unknown.to_numpy())
            raise ValueError(
                f"{path}, line {rows[0] + 2}: gaze for DICOM_ID {ids.iloc[rows[0]]!r}, which is not in the "
                f"master sheet ({len(rows)} such rows, {ids[unknown].nunique()} unknown ids). Use the "
                f"master_sheet.csv of the same EGD-CXR release, or remove those rows."
            )
    weights = table[DURATION_COLUMN].to_numpy(float) if weighting == "duration" else np.ones(len(table))
    xy = table[["X_ORIGINAL", "Y_ORIGINAL"]].to_numpy(float)
    out = {}
    for dicom_id, index in ids.groupby(ids, sort=False).groups.items():
        idx = np.asarray(index)
        out[dicom_id] = GazePoints(xy[idx], weights[idx])
    return out


def _weights_or_fail(points: GazePoints, dicom_id: str, dropped: int) -> np.ndarray:
    total = points.weight.sum() if len(points.weight) else 0.0
    if total <= 0:
        raise ValueError(
            f"image {dicom_id}: no usable gaze ({dropped} point(s) dropped as off the image, "
            f"{len(points.weight)} left with total weight {total}); exclude the image or check its gaze rows"
        )
    return points.weight


def gaze_map(points: GazePoints, geometry: Geometry, sigma_px: float | None, *, dicom_id: str = "?",
             convention: str = "fixed_sigma", off_image: str = "drop"):
    """Gaussian gaze map on the output grid of ``geometry``. Returns (map (H, W) float32, dropped).

    Each point's Gaussian (``sigma_px`` native pixels) is evaluated at the output pixel centres
    mapped back to native coordinates, masked to the image area and normalised to sum 1. The
    separable form ``Gy^T diag(w) Gx`` costs O(N (H + W) + H W N) in one matrix product.

    ``convention="reflacx"`` (``points`` a :class:`ShownGazePoints`, ``sigma_px`` None): sigma
    is ``REFLACX_SIGMA_DEGREES`` times each point's pixels per degree (x and y apart), and each
    Gaussian is zero outside the rectangle shown with that fixation. The rectangle is separable
    too, so the same product computes it. Each Gaussian is a density (divided by its sigmas), so
    its mass is its weight (the duration) before the cut; a clipped Gaussian is not renormalised:
    the mass outside the screen was not seen.

    ``off_image="cut"`` keeps the fixations off the image (the REFLACX authors' heatmaps): their
    Gaussians are cut like every other, to the shown rectangle and the image; ``dropped`` then
    counts only points without finite coordinates.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if off_image not in OFF_IMAGE:
        raise ValueError(f"off_image must be one of {OFF_IMAGE}, got {off_image!r}")
    inside, dropped = points.inside(geometry.native) if off_image == "drop" else points.finite()
    weights = _weights_or_fail(inside, dicom_id, dropped)
    H, W = geometry.target
    centres = geometry.apply_points(inside.xy).astype(np.float64)  # (N, 2) output coords
    out_per_native = geometry.scale if geometry.mode == "pad_resize" else 1.0 / geometry.stride
    rows = np.arange(H, dtype=np.float64)
    cols = np.arange(W, dtype=np.float64)
    if convention == "reflacx":
        sigma_x, sigma_y, row_in, col_in = _reflacx_terms(inside, geometry, rows, cols, sigma_px, dicom_id)
        # Each fixation is a normalised density (mass = its duration before the cut), so a
        # zoomed-in fixation (fewer image pixels per degree) is sharper, not lighter.
        weights = weights / (sigma_x * sigma_y)
    else:
        sigma_x = sigma_y = sigma_px
        row_in, col_in = 1.0, 1.0
    sigma_x, sigma_y = np.asarray(sigma_x) * out_per_native, np.asarray(sigma_y) * out_per_native
    gy = np.exp(-0.5 * ((rows[None, :] - centres[:, 1:2]) / np.reshape(sigma_y, (-1, 1))) ** 2) * row_in  # (N, H)
    gx = np.exp(-0.5 * ((cols[None, :] - centres[:, 0:1]) / np.reshape(sigma_x, (-1, 1))) ** 2) * col_in  # (N, W)
    density = (gy * weights[:, None]).T @ gx  # (H, W)
    density *= geometry.image_mask()
    total = density.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"image {dicom_id}: the gaze map is empty (sigma {sigma_px} px too small?)")
    return (density / total).astype(np.float32), dropped


def _reflacx_terms(points, geometry: Geometry, rows, cols, sigma_px, dicom_id: str):
    """Per-point sigmas (native px) and the (N, H), (N, W) masks of the shown rectangles."""
    if not isinstance(points, ShownGazePoints):
        raise TypeError(f"image {dicom_id}: convention='reflacx' needs ShownGazePoints (pixels per degree, "
                        f"shown rectangle per fixation), got {type(points).__name__}")
    if sigma_px is not None:
        raise ValueError("convention='reflacx' takes sigma from each fixation's pixels per degree: pass sigma_px=None")
    ppd = points.pixels_per_degree * REFLACX_SIGMA_DEGREES
    # Output pixel centres in native coordinates, to compare with the rectangles.
    if geometry.mode == "stride":
        native_rows, native_cols = rows * geometry.stride, cols * geometry.stride
    else:
        native_rows, native_cols = (rows + 0.5) / geometry.scale - 0.5, (cols + 0.5) / geometry.scale - 0.5
    native_rows, native_cols = native_rows - geometry.pad_top, native_cols - geometry.pad_left
    x0, y0, x1, y1 = (points.shown[:, k:k + 1] for k in range(4))
    row_in = ((native_rows[None, :] >= y0 - 0.5) & (native_rows[None, :] <= y1 + 0.5)).astype(np.float64)
    col_in = ((native_cols[None, :] >= x0 - 0.5) & (native_cols[None, :] <= x1 + 0.5)).astype(np.float64)
    return ppd[:, 0], ppd[:, 1], row_in, col_in


def gaze_map_native(points: GazePoints, geometry: Geometry, sigma_px: float, *, dicom_id: str = "?"):
    """Reference construction: accumulate at native resolution, blur, resample like the image.

    Slow for MIMIC-sized images (a 3000 x 2500 blur per image); used to check :func:`gaze_map`.
    """
    from scipy.ndimage import gaussian_filter

    inside, dropped = points.inside(geometry.native)
    weights = _weights_or_fail(inside, dicom_id, dropped)
    h, w = geometry.native
    acc = np.zeros((h, w), dtype=np.float64)
    cols = np.rint(inside.xy[:, 0]).astype(int)
    rows = np.rint(inside.xy[:, 1]).astype(int)
    np.add.at(acc, (rows, cols), weights)
    blurred = gaussian_filter(acc, sigma=sigma_px, mode="constant")
    return geometry.apply_map(blurred.astype(np.float32)), dropped


def resolve_sigma(native_shape, sigma: float | None, sigma_frac: float | None) -> float:
    """Sigma in native pixels: ``sigma`` as given, or ``sigma_frac`` times the long side.

    The paper's 75.5 px on MIMIC images (long side about 3000 px) is ``sigma_frac`` 0.025; the
    relative form keeps the blur comparable on data of other sizes (the synthetic set).
    """
    if sigma_frac is not None:
        if sigma_frac <= 0:
            raise ValueError(f"sigma_frac must be positive, got {sigma_frac}")
        return float(sigma_frac) * max(native_shape)
    if sigma is None or sigma <= 0:
        raise ValueError(f"sigma must be a positive number of native pixels, got {sigma}")
    return float(sigma)
