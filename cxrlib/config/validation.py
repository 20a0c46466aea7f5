"""Range and path checks of the stage configs (:mod:`cxrlib.config` calls them in ``_finalise``).

A bad value fails when the config is built (a notebook's config cell, ``cxrlib run`` before any
kernel starts), naming the parameter and what it must be, instead of failing deep inside
PyTorch or NumPy or, worse, running: ``max_steps_per_epoch=0`` used to give an empty epoch
counted as a perfect one, ``early_stopping=-1`` stopped after one epoch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path


class ParameterError(TypeError, ValueError):
    """A parameter of unknown name, wrong type or out of range (a usage error: ``cxrlib`` exits 2)."""


# name -> (test, what the value must be); a field absent from a config is skipped.
_SEED_MAX = 2**32 - 1  # NumPy's legacy seeding takes 32 bits
_RANGES = {
    **{n: (lambda v: v >= 1, "an integer >= 1") for n in (
        "epochs", "batch_size", "eval_batch_size", "synthetic_images", "base_width", "n_boot", "examples_per_class")},
    **{n: (lambda v: v >= 0, "an integer >= 0") for n in ("plateau_patience", "finetune_epochs")},
    "num_workers": (lambda v: v is None or v >= 0, "None (one per core on CUDA, 0 on the CPU) or an integer >= 0"),
    "early_stopping": (lambda v: v >= 0, "an integer >= 0 (epochs without improvement before stopping; 0: never)"),
    "max_steps_per_epoch": (lambda v: v is None or v >= 1, "None (the whole split) or an integer >= 1"),
    "max_images": (lambda v: v is None or v >= 1, "None (every image) or an integer >= 1"),
    **{n: (lambda v: 0 <= v <= _SEED_MAX, f"an integer in [0, {_SEED_MAX}]") for n in ("seed", "data_seed")},
    **{n: (lambda v: math.isfinite(v) and v > 0, "a finite number > 0") for n in ("lr", "temperature")},
    "sigma": (lambda v: math.isfinite(v) and v > 0, "a finite number of native pixels > 0"),
    "sigma_frac": (lambda v: v is None or (math.isfinite(v) and 0 < v <= 1),
                   "in (0, 1] (a fraction of the native long side, e.g. 0.025; for a sigma in native pixels "
                   "set `sigma`, which replaces the profile's sigma_frac)"),
    "margin": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    **{n: (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0") for n in ("plateau_eps", "lr_floor")},
    "device": (lambda v: v is None or re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", str(v).strip()) is not None,
               "None (cuda, then mps, then cpu) or a device such as 'cpu', 'cuda', 'cuda:1' or 'mps'"),
}


def check_ranges(config) -> None:
    """Every numeric field in its range, so a bad value fails here, naming the parameter, not
    deep inside PyTorch or NumPy, and never silently (an empty loop, an instant LR cut)."""
    for name, (test, wanted) in _RANGES.items():
        if hasattr(config, name) and not test(getattr(config, name)):
            raise ParameterError(f"parameter {name!r} must be {wanted}, got {getattr(config, name)!r}")
    for seed in getattr(config, "seeds", ()):
        if not (isinstance(seed, int) and 0 <= seed <= _SEED_MAX):
            raise ParameterError(f"parameter 'seeds' must be integers in [0, {_SEED_MAX}], got {seed!r}")


def check_data_roots(config) -> None:
    """``egd_root`` / ``image_root`` must exist before anything starts (not in a notebook's 6th cell)."""
    if config.egd_root is not None:
        root = Path(config.egd_root).expanduser()
        if not (root / "master_sheet.csv").is_file():
            raise FileNotFoundError(
                f"parameter 'egd_root': {root} has no master_sheet.csv; point it at the EGD-CXR folder "
                f"(egd-cxr/1.0.0), or leave it None for the synthetic data set")
    if config.image_root is not None and not Path(config.image_root).expanduser().is_dir():
        raise FileNotFoundError(
            f"parameter 'image_root': {config.image_root} is not a folder; point it at the MIMIC-CXR or "
            f"MIMIC-CXR-JPG root that holds files/p10/..., or leave it None (= egd_root)")


def _is_whole(value) -> bool:
    """A float or numpy number with no fractional part (64.0 yes, 64.9 no)."""
    try:
        return float(value).is_integer() and not isinstance(value, (str, bool))
    except (TypeError, ValueError):
        return False


def check_image_size(image_size) -> tuple[int, int]:
    """Validate a target (H, W): two positive multiples of 32 (the UNet halves five times)."""
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) or _is_whole(v) for v in (h, w)):
        raise ValueError(f"image_size must be two whole numbers of pixels, got {image_size!r}; "
                         "e.g. (320, 256) or (640, 512)")
    h, w = int(h), int(w)
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ValueError(
            f"image_size must be two positive multiples of 32 (the network halves the image five "
            f"times), got {image_size!r}; e.g. (320, 256) or (640, 512)"
        )
    return h, w
