"""Reading radiographs: MIMIC-CXR DICOMs (and MIMIC-CXR-JPG files) as float images in [0, 1].

The pitfalls of data-formats.md, each handled here:

* MONOCHROME1 stores inverted intensities: it is inverted, so bone is always bright.
* Rescale slope/intercept (the modality LUT) is applied; the VOI LUT / window is optional.
* Intensities are scaled by the image's real value range, never by an assumed bit depth.
* Compressed transfer syntaxes need a pixel-data handler; without one the error names the file
  and the package to install. A truncated file, or a corrupt stream that an installed decoder
  rejects, is reported as such (not as "no pixel data" or a missing handler).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def read_dicom(path, *, voi_lut: bool = False) -> np.ndarray:
    """Read one radiograph as a float32 (rows, columns) array in [0, 1], display orientation.

    Parameters
    ----------
    path : DICOM file.
    voi_lut : also apply the file's VOI LUT or window centre/width (off by default, as in the
        paper's code, which used the raw values).
    """
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
    try:
        pixels = ds.pixel_array
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
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if voi_lut:
        values = apply_voi_lut(values, ds).astype(np.float64)
    image = _scale_to_unit(values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        image = 1.0 - image
    return image


def read_raster(path) -> np.ndarray:
    """Read a MIMIC-CXR-JPG (or PNG) image as float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("I") if im.mode in ("I;16", "I") else im.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot decode the image ({err})") from err
    return _scale_to_unit(array.astype(np.float64))


def read_image(path, *, voi_lut: bool = False) -> np.ndarray:
    """Dispatch on the suffix: DICOM (``.dcm``) or raster (``.jpg``/``.png``)."""
    path = Path(path)
    if path.suffix.lower() in JPEG_SUFFIXES:
        return read_raster(path)
    return read_dicom(path, voi_lut=voi_lut)


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
