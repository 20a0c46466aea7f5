"""Benchmarks of the data path and of frozen-feature reuse (``cxrlib bench-data``, ``bench-reuse``).

* Loader: samples/s of a cold pass (decode DICOM, build the gaze map, resample, write the cache)
  against a warm pass (read the cache), on the synthetic set or a real EGD folder.
* Reuse: seconds per epoch of stage 2 and head-only stage 3 with the frozen parts' outputs
  computed once against recomputed every step (``reuse_frozen_features``), and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def benchmark_loader(*, n_images: int = 60, image_size=(320, 256), egd_root=None, image_root=None,
                     seed: int = 0, print_result: bool = True) -> dict:
    """Cold and warm samples/s over ``n_images`` images (a fresh cache folder, deleted after)."""
    from cxrlib.data import EGDDataset
    from cxrlib.synthetic import make_egd_like

    with tempfile.TemporaryDirectory(prefix="cxrlib-bench-") as tmp:
        if egd_root is None:
            egd_root = image_root = make_egd_like(Path(tmp) / "egd", n_images=n_images, seed=seed, progress=False)
            sigma = {"sigma_frac": 0.025}
        else:
            sigma = {}
        ds = EGDDataset(egd_root, image_root or egd_root, image_size=image_size, cache_dir=Path(tmp) / "cache", **sigma)
        n = min(n_images, len(ds))
        result = {"images": n, "image_size": tuple(image_size)}
        for name in ("cold", "warm"):
            started = time.perf_counter()
            for i in range(n):
                ds[i]
            result[f"{name}_samples_per_s"] = n / (time.perf_counter() - started)
    result["speed_up"] = result["warm_samples_per_s"] / result["cold_samples_per_s"]
    if print_result:
        print(f"loader, {n} images at {image_size[0]}x{image_size[1]}: cold (decode) "
              f"{result['cold_samples_per_s']:.1f} samples/s, warm (cache) {result['warm_samples_per_s']:.1f} "
              f"samples/s, {result['speed_up']:.1f}x")
    return result


def benchmark_reuse(*, profile: str = "smoke", epochs: int = 2, print_result: bool = True, **params) -> dict:
    """Seconds per epoch with and without frozen-feature reuse for stages 2 and 3 (head only).

    The epoch time comes from the trainer's history (training + validation); the one-off
    precompute is the rest of the stage's wall time and is reported on its own.
    """
    from cxrlib import stages
    from cxrlib.config import make_config

    result = {}
    with tempfile.TemporaryDirectory(prefix="cxrlib-bench-") as tmp:
        base = {"run_dir": tmp, "epochs": epochs, "init_from": "none", **params}
        data = stages.prepare_data(make_config("stage2", profile, **base), progress=False)
        for stage in ("stage2", "stage3"):
            row = {}
            for reuse in (True, False):
                config = make_config(stage, profile, **{**base, "run_dir": f"{tmp}/{stage}-{reuse}"},
                                     reuse_frozen_features=reuse)
                started = time.perf_counter()
                history = stages.run_stage(config, data, progress=False).history
                total = time.perf_counter() - started
                name = "reuse" if reuse else "recompute"
                row[f"{name}_s_per_epoch"] = float(history["seconds"].mean())
                row[f"{name}_setup_s"] = total - float(history["seconds"].sum())
            row["ratio"] = row["recompute_s_per_epoch"] / row["reuse_s_per_epoch"]
            row["precompute_s"] = row["reuse_setup_s"] - row["recompute_setup_s"]
            result[stage] = row
    if print_result:
        print(f"frozen-feature reuse ({profile} profile, {epochs} epochs; epoch = training + validation):")
        for stage, r in result.items():
            print(f"  {stage}: {r['reuse_s_per_epoch']:.2f} s/epoch with reuse (+{r['precompute_s']:.1f} s once "
                  f"for the precompute), {r['recompute_s_per_epoch']:.2f} s/epoch without: {r['ratio']:.1f}x per epoch")
    return result
