"""On-disk cache of preprocessed samples, so only the first pass decodes DICOMs.

A sample's key hashes everything its arrays depend on: the image file (path, size, modification
time and a fingerprint of its content), its gaze points, and every preprocessing parameter.
Change any of them and the sample is recomputed; nothing stale is served. The fingerprint (a hash
of the file's first, middle and last 64 KiB) catches a file rewritten in place with the same size
and modification time, which the metadata alone would miss.

Each entry carries a CRC-32 of its header and arrays, checked on every read: a flipped byte, a
truncated file or a damaged header is rebuilt from the source (with a warning that counts the
repairs), never trained on. Files are written to a temporary name unique to the process and
renamed, so an interrupted run never leaves a half-written entry and parallel writers (DataLoader
workers, ``cxrlib prepare``) are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np

from cxrlib.runfolder import process_alive

CACHE_VERSION = 3  # bump when the preprocessing code or the entry format changes
FINGERPRINT_BLOCK = 64 * 1024


def content_fingerprint(path) -> str:
    """SHA-1 of the file's size and its first, middle and last 64 KiB (cheap on 10 MB DICOMs)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with path.open("rb") as f:
        for start in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
            f.seek(start)
            h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


def sample_key(image_path, params: dict, *arrays: np.ndarray) -> str:
    path = Path(image_path)
    stat = path.stat()
    h = hashlib.sha1()
    h.update(json.dumps(
        {"v": CACHE_VERSION, "path": str(path.resolve()), "size": stat.st_size,
         "mtime_ns": stat.st_mtime_ns, "content": content_fingerprint(path), "params": params},
        sort_keys=True, default=str,
    ).encode())
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


_MAGIC = b"CXRC2\n"
_PREFIX = len(_MAGIC) + 8  # magic, header length (4 bytes), CRC-32 of header + arrays (4 bytes)


class DamagedEntry(ValueError):
    """A cache entry that cannot be trusted (truncated, bytes flipped, header unreadable)."""


def _pack(arrays: dict) -> bytes:
    """One file per sample: magic, header length, CRC-32, a JSON header (name, dtype, shape,
    offset, size) and the raw bytes.

    Read back with a single ``read`` and zero-copy views: several times faster than ``.npz``,
    which is what keeps the warm pass cheap even with the checksum.
    """
    header, chunks, offset = {}, [], 0
    for name, value in arrays.items():
        array = np.asarray(value)  # (ascontiguousarray would turn a 0-d scalar into shape (1,))
        if not array.flags.c_contiguous:
            array = array.copy()
        header[name] = [array.dtype.str, list(array.shape), offset, array.nbytes]
        chunks.append(array.tobytes())
        offset += array.nbytes
    head = json.dumps(header).encode()
    crc = zlib.crc32(b"".join(chunks), zlib.crc32(head))
    return _MAGIC + len(head).to_bytes(4, "little") + crc.to_bytes(4, "little") + head + b"".join(chunks)


def _unpack(blob: bytes) -> dict:
    if not blob.startswith(_MAGIC) or len(blob) < _PREFIX:
        raise DamagedEntry("not a cxrlib cache entry of this version")
    size = int.from_bytes(blob[len(_MAGIC):len(_MAGIC) + 4], "little")
    crc = int.from_bytes(blob[len(_MAGIC) + 4:_PREFIX], "little")
    view = memoryview(blob)
    if _PREFIX + size > len(blob):
        raise DamagedEntry("truncated header")
    if zlib.crc32(view[_PREFIX + size:], zlib.crc32(view[_PREFIX:_PREFIX + size])) != crc:
        raise DamagedEntry("checksum mismatch")
    try:
        header = json.loads(bytes(view[_PREFIX:_PREFIX + size]))
        body = view[_PREFIX + size:]
        out = {}
        for name, (dtype, shape, offset, nbytes) in header.items():
            if offset + nbytes > len(body):
                raise DamagedEntry("truncated arrays")
            out[name] = np.frombuffer(body[offset:offset + nbytes], dtype=dtype).reshape(shape)
    except DamagedEntry:
        raise
    except Exception as err:  # a header that passes the CRC but not the parser: an older writer's bug
        raise DamagedEntry(f"unreadable header ({type(err).__name__}: {err})") from None
    return out


class SampleCache:
    """A folder of ``<key>.bin`` files; ``None`` as root disables caching.

    ``repaired`` counts the damaged entries this object found (and removed so they are rebuilt).
    """

    def __init__(self, root):
        self.root = Path(root) if root is not None else None
        self.repaired = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.bin"

    def has(self, key: str) -> bool:
        """An entry exists (not verified: :meth:`get` checks it)."""
        return self.root is not None and self.path(key).is_file()

    def get(self, key: str) -> dict | None:
        if self.root is None:
            return None
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _unpack(blob)
        except DamagedEntry as err:
            # A damaged entry (disk error, a killed writer on a filesystem without atomic rename,
            # a flipped bit) is recomputed rather than trusted.
            path.unlink(missing_ok=True)
            self.repaired += 1
            warnings.warn(f"sample cache {self.root}: entry {path.name} is damaged ({err}); rebuilding it from "
                          f"the source ({self.repaired} damaged entr{'y' if self.repaired == 1 else 'ies'} "
                          f"rebuilt by this process so far)", stacklevel=2)
            return None

    def put(self, key: str, arrays: dict) -> None:
        if self.root is None:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(_pack(arrays))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        return [] if self.root is None else sorted(self.root.glob("*/*.bin"))

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def remove_orphans(self) -> int:
        """Delete temporary files that a killed writer left (its process is gone); return how many."""
        if self.root is None:
            return 0
        n = 0
        for tmp in self.root.glob("*/.*.tmp"):
            try:
                pid = int(tmp.name.split(".")[2])
            except (IndexError, ValueError):
                continue
            if not process_alive(pid):
                tmp.unlink(missing_ok=True)
                n += 1
        return n

    def clear(self) -> int:
        """Delete every entry; return how many were removed."""
        n = 0
        for entry in self.entries():
            entry.unlink()
            n += 1
        return n
