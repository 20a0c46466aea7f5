"""Benchmarks of the data path and of frozen-feature reuse (``cxrlib bench-data``, ``bench-reuse``).

* Loader: samples/s of a cold pass (decode DICOM, build the gaze map, resample, write the cache)
  with 1 and 2 decoding processes, against a warm pass (read the cache, checksum verified), on
  the synthetic set (also full-size JPEG 2000 files) or a real EGD folder.
* Reuse: seconds per epoch of stage 2 and head-only stage 3 with the frozen parts' outputs
  computed once against recomputed every step (``reuse_frozen_features``), and their ratio.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from pathlib import Path


def benchmark_loader(*, n_images: int = 60, image_size=(320, 256), egd_root=None, image_root=None,
                     seed: int = 0, native_shape=None, transfer_syntax: str = "explicit", workers=(1, 2),
                     rounds: int = 2, print_result: bool = True) -> dict:
    """Cold samples/s per number of decoding workers, and warm samples/s, over ``n_images`` images.

    Cold: ``prepare_cache`` into a fresh cache folder (decode, gaze map, resample, checksum,
    write) with each worker count in ``workers``, alternating the order over ``rounds`` so that
    a machine shared with other work disturbs every count alike. Warm: one process reads every
    sample back through the data set (checksum verified), as each epoch after the first does.
    The synthetic set (``native_shape``, ``transfer_syntax``) or the cache folders are deleted after.
    """
    import numpy as np

    from cxrlib.data import EGDDataset
    from cxrlib.data.prepare import prepare_cache
    from cxrlib.synthetic.egd import make_egd_like

    synthetic = egd_root is None
    with tempfile.TemporaryDirectory(prefix="cxrlib-bench-") as tmp:
        if synthetic:
            egd_root = image_root = make_egd_like(Path(tmp) / "egd", n_images=n_images, seed=seed, progress=False,
                                                  native_shape=native_shape, transfer_syntax=transfer_syntax)
            sigma = {"sigma_frac": 0.025}
        else:
            sigma = {}

        def fresh(cache):
            ds = EGDDataset(egd_root, image_root or egd_root, image_size=image_size, cache_dir=cache, **sigma)
            ids = ds.sheet["dicom_id"].tolist()[:n_images]
            return EGDDataset(egd_root, image_root or egd_root, image_size=image_size, cache_dir=cache, ids=ids, **sigma)

        cold: dict[int, list[float]] = {w: [] for w in workers}
        cores: dict[int, list[float]] = {w: [] for w in workers}
        for r in range(rounds):
            for w in (workers if r % 2 == 0 else workers[::-1]):
                cache = Path(tmp) / f"cache-{r}-{w}"
                built = prepare_cache([fresh(cache)], workers=w, progress=False)
                cold[w].append(built["samples_per_s"])
                cores[w].append(built["cores_used"])
        ds = fresh(cache)  # the last cache, complete
        n = len(ds)
        for i in range(n):
            ds.key(i)  # hashed once per data set, at its first epoch
        started = time.perf_counter()
        for i in range(n):
            ds[i]
        warm = n / (time.perf_counter() - started)
        blobs = [p.read_bytes() for p in ds.cache.entries()]
        started = time.perf_counter()
        for blob in blobs:
            zlib.crc32(blob)
        checksum_ms = 1000 * (time.perf_counter() - started) / len(blobs)
        native = ds.load(0)["native_shape"].tolist()
        entry_bytes = ds.cache.disk_bytes() / len(blobs)
    result = {"images": n, "image_size": tuple(image_size), "native_shape": tuple(native),
              "transfer_syntax": transfer_syntax if synthetic else "as found",
              "cold_samples_per_s": {w: float(np.median(v)) for w, v in cold.items()},
              "cold_rounds": cold, "cores_used": cores, "warm_samples_per_s": warm, "checksum_ms_per_entry": checksum_ms,
              "cache_bytes_per_entry": entry_bytes}
    one = result["cold_samples_per_s"][min(workers)]
    result["speed_up"] = warm / one  # warm against cold, both on one core
    if len(workers) > 1:
        result["worker_ratios"] = [b / a for a, b in zip(cold[workers[0]], cold[workers[-1]])]
    if print_result:
        print(f"loader, {n} images of {native[0]}x{native[1]} ({result['transfer_syntax']}) to "
              f"{image_size[0]}x{image_size[1]}; cache entry {entry_bytes / 1e6:.2f} MB")
        for w, v in cold.items():
            print(f"  cold (decode, {w} worker{'s' if w != 1 else ''}): {np.median(v):.2f} samples/s "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in v)}; CPU cores the decoding got: "
                  f"{', '.join(f'{x:.2f}' for x in cores[w])}; {np.median(cores[w]) / np.median(v):.2f} CPU s "
                  f"per sample)")
        if len(workers) > 1:
            print(f"  {workers[-1]} workers / {workers[0]}: " + ", ".join(f"{x:.2f}x" for x in result["worker_ratios"])
                  + " per round")
        print(f"  warm (cache, checksum verified): {warm:.1f} samples/s, {result['speed_up']:.0f}x the cold pass "
              f"of {min(workers)} worker; the CRC-32 takes {checksum_ms:.2f} ms of each entry's read")
    return result


def benchmark_reuse(*, profile: str = "smoke", epochs: int = 2, print_result: bool = True, **params) -> dict:
    """Seconds per epoch with and without frozen-feature reuse for stages 2 and 3 (head only).

    The epoch time comes from the trainer's history (training + validation); the one-off
    precompute is the rest of the stage's wall time and is reported on its own.
    """
    from cxrlib.training import stages
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
