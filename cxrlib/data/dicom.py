"""Reading radiographs: MIMIC-CXR DICOMs (and MIMIC-CXR-JPG files) as float images in [0, 1].

The pitfalls of docs/method.md section 5, each handled here:

* MONOCHROME1 stores inverted intensities: it is inverted, so bone is always bright.
* Rescale slope/intercept (the modality LUT) is applied; the VOI LUT / window is optional.
* Intensities are scaled by the image's real value range, never by an assumed bit depth.

Two switches select the paper code's reading instead (``Data/hzhu_data_raw.py``: the raw
``pixel_array``, zero-padded, subsampled, divided by its maximum): ``modality_lut=False`` keeps
the stored values (no rescale, no MONOCHROME1 inversion) and ``intensity="max"`` divides by the
maximum *after* the resize, where :func:`load_image` puts it.
* Compressed transfer syntaxes need a pixel-data handler; without one the error names the file
  and the package to install. A truncated file, or a corrupt stream that an installed decoder
  rejects, is reported as such (not as "no pixel data" or a missing handler); the decoder's
  warnings are repeated with the file's name. A stream damaged inside its coded data that the
  decoder accepts cannot be told apart: OpenJPEG decodes a JPEG 2000 stream with kilobytes of
  random bytes in its middle without error or warning (lossless JPEG 2000 carries no checksum).
* A TransferSyntaxUID that is not a transfer syntax, and a blank image (every pixel alike), are
  errors naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cxrlib.data.geometry import Geometry
from cxrlib.config.choices import INTENSITY_MODES  # (declared once, with the other choices)

HANDLER_HINT = (
    "install a pixel-data handler: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "(JPEG, JPEG-LS lossless and JPEG 2000) or `pip install python-gdcm`"
)
JPEG_SUFFIXES = (".jpg", ".jpeg", ".png")


def _decoder_available(syntax) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(syntax).is_available
    except Exception:  # a syntax pydicom has no decoder entry for
        return False


def _says_no_plugin(message: str) -> bool:
    """pydicom's wording for "no decoder installed" (as opposed to a decoder that failed)."""
    text = message.lower()
    return any(k in text for k in ("none of the available plugins", "are installed", "missing required",
                                   "no pixel data handler", "not installed"))


def _scale_to_unit(pixels: np.ndarray) -> np.ndarray:
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:  # a blank image: keep it blank rather than divide by zero
        return np.zeros(pixels.shape, dtype=np.float32)
    return ((pixels - lo) / (hi - lo)).astype(np.float32)


def _scale_by_max(pixels: np.ndarray) -> np.ndarray:
    hi = float(pixels.max()) if pixels.size else 0.0
    if hi <= 0:  # blank (or all non-positive): nothing to divide by
        return np.zeros(pixels.shape, dtype=np.float32)
    return (pixels / hi).astype(np.float32)


def _check_not_constant(pixels: np.ndarray, path: Path) -> None:
    """A blank image (every pixel alike: a failed export, a placeholder) has nothing to learn or
    explain; it is an error naming the file rather than a silent all-black sample."""
    if pixels.size and pixels.min() == pixels.max():
        raise ValueError(
            f"{path}: every pixel has the value {pixels.flat[0]}: a blank image (a failed export or a "
            f"placeholder) carries no information; replace the file, or remove its row from master_sheet.csv")


def _check_intensity(intensity: str) -> None:
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")


def read_dicom(path, *, voi_lut: bool = False, modality_lut: bool = True, intensity: str = "minmax") -> np.ndarray:
    """Read one radiograph as a float32 (rows, columns) array in [0, 1].

    Parameters
    ----------
    path : DICOM file.
    voi_lut : also apply the file's VOI LUT or window centre/width (off by default, as in the
        paper's code, which used the raw values).
    modality_lut : apply rescale slope/intercept and invert MONOCHROME1, so bone is bright
        (default). ``False``: the stored ``pixel_array`` as it is, as the paper's code reads it.
    intensity : ``"minmax"`` maps the value range to [0, 1]; ``"max"`` divides by the maximum
        (the paper's code; values below zero then stay negative, and are clipped by the cache).
    """
    _check_intensity(intensity)
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise ValueError(f"{path}: not a readable DICOM file ({err})") from err
    except Exception as err:  # truncated headers raise assorted errors deep in pydicom
        raise ValueError(f"{path}: cannot parse the DICOM header ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        size = path.stat().st_size
        if len(ds) == 0 or "Rows" in ds:  # an image header (or nothing) but no pixels: cut short
            raise ValueError(f"{path}: the file ends before its pixel data ({size} bytes): it is truncated (an "
                             f"interrupted download or copy); replace it with an intact copy")
        raise ValueError(f"{path}: the DICOM file has no pixel data (not an image; SOP class "
                         f"{ds.get('SOPClassUID', 'unknown')})")

    syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    if syntax is not None and not getattr(syntax, "is_transfer_syntax", False):
        raise ValueError(
            f"{path}: the file meta's TransferSyntaxUID {str(syntax)!r} is not a DICOM transfer syntax, so "
            f"its pixel data cannot be interpreted (a faulty export or a damaged header); convert the file "
            f"again (e.g. gdcmconv or dcmconv) or replace it with an intact copy")
    try:
        with warnings.catch_warnings(record=True) as decoder_warnings:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
        for w in decoder_warnings:  # the decoder's own warnings, with the file they are about
            warnings.warn(f"{path}: while decoding the pixel data: {w.message}", UserWarning, stacklevel=2)
    except Exception as err:
        message = str(err)
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        if compressed and (not _decoder_available(syntax) or _says_no_plugin(message)):
            raise RuntimeError(
                f"{path}: pixel data uses the compressed transfer syntax {syntax.name} ({syntax}) "
                f"and no installed handler can decode it; {HANDLER_HINT}. ({message})"
            ) from err
        what = f"the compressed {syntax.name} stream" if compressed else "the pixel data"
        installed = " although a decoder is installed" if compressed else ""
        raise ValueError(
            f"{path}: cannot decode {what}{installed}: the file is corrupt or truncated; replace it with an "
            f"intact copy ({' '.join(message.split())[:300]})"
        ) from err

    if pixels.ndim != 2:
        raise ValueError(
            f"{path}: expected one grey-level frame, got pixel data of shape {pixels.shape} "
            f"(multi-frame or colour images are not chest radiographs this loader knows)"
        )
    _check_not_constant(pixels, path)
    values = (apply_modality_lut(pixels, ds) if modality_lut else pixels).astype(np.float64)
    if voi_lut:
        values = apply_voi_lut(values, ds).astype(np.float64)
    monochrome1 = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1"
    if intensity == "max":
        if modality_lut and monochrome1:  # invert within the value range, then divide by the max
            values = values.max() + values.min() - values
        return _scale_by_max(values)
    image = _scale_to_unit(values)
    if modality_lut and monochrome1:
        image = 1.0 - image
    return image


def read_raster(path, *, intensity: str = "minmax") -> np.ndarray:
    """Read a MIMIC-CXR-JPG (or PNG) image as float32 in [0, 1] (``intensity`` as `read_dicom`)."""
    _check_intensity(intensity)
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("I") if im.mode in ("I;16", "I") else im.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot decode the image ({err})") from err
    _check_not_constant(array, path)
    values = array.astype(np.float64)
    return _scale_by_max(values) if intensity == "max" else _scale_to_unit(values)


def read_image(path, *, voi_lut: bool = False, modality_lut: bool = True, intensity: str = "minmax") -> np.ndarray:
    """Dispatch on the suffix: DICOM (``.dcm``) or raster (``.jpg``/``.png``)."""
    path = Path(path)
    if path.suffix.lower() in JPEG_SUFFIXES:
        return read_raster(path, intensity=intensity)
    return read_dicom(path, voi_lut=voi_lut, modality_lut=modality_lut, intensity=intensity)


def load_image(path, image_size, *, resize: str = "pad_resize", intensity: str = "minmax",
               modality_lut: bool = True, voi_lut: bool = False) -> tuple[np.ndarray, Geometry]:
    """A radiograph as a network input: read, pad and resize, scale. Returns ``(image, geometry)``.

    ``image`` is (H, W) float32; ``geometry`` maps the native image (``geometry.native``) to it,
    for the gaze map and points. With ``intensity="max"`` the division by the maximum comes after
    the resize, so ``resize="stride", intensity="max", modality_lut=False`` is the paper code's
    preprocessing (``MasterDataHandle.process`` in ``Data/hzhu_data_raw.py``): raw values,
    centred zero padding, every k-th pixel, divided by the maximum of what is left.
    """
    native = read_image(path, voi_lut=voi_lut, modality_lut=modality_lut, intensity=intensity)
    geometry = Geometry.fit(native.shape, image_size, resize)
    image = geometry.apply_image(native)
    return (_scale_by_max(image) if intensity == "max" else image), geometry


def header_summary(path) -> dict:
    """Technical DICOM header fields only (no names, dates or identifiers), for notebook 01."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    keys = (
        "Modality", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns",
        "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
        "WindowCenter", "WindowWidth",
    )
    out = {k: (str(ds.get(k)) if ds.get(k) is not None else None) for k in keys}
    out["TransferSyntax"] = ds.file_meta.TransferSyntaxUID.name if "TransferSyntaxUID" in ds.file_meta else None
    return out
