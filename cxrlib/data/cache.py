"""On-disk cache of preprocessed samples, so only the first pass decodes DICOMs.

A sample's key hashes everything its arrays depend on: the image file (path, size, modification
time), its gaze points, and every preprocessing parameter. Change any of them and the sample is
recomputed; nothing stale is ever served. Files are written to a temporary name and renamed, so
an interrupted run never leaves a half-written entry (and parallel DataLoader workers are safe).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CACHE_VERSION = 1  # bump when the preprocessing code changes what it produces


def sample_key(image_path, params: dict, *arrays: np.ndarray) -> str:
    stat = Path(image_path).stat()
    h = hashlib.sha1()
    h.update(json.dumps(
        {"v": CACHE_VERSION, "path": str(Path(image_path).resolve()), "size": stat.st_size,
         "mtime_ns": stat.st_mtime_ns, "params": params},
        sort_keys=True, default=str,
    ).encode())
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class SampleCache:
    """A folder of ``<key>.npz`` files; ``None`` as root disables caching."""

    def __init__(self, root):
        self.root = Path(root) if root is not None else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            # A damaged entry (disk full, killed writer on a filesystem without atomic rename)
            # is recomputed rather than trusted.
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, arrays: dict) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    def clear(self) -> int:
        """Delete every entry; return how many were removed."""
        if self.root is None:
            return 0
        n = 0
        for entry in self.root.glob("*/*.npz"):
            entry.unlink()
            n += 1
        return n
