"""On-disk cache of preprocessed samples, so only the first pass decodes DICOMs.

A sample's key hashes everything its arrays depend on: the image file's path and the SHA-1 of
its whole content, its gaze points, and every preprocessing parameter. Change any of them and
the sample is recomputed; a file rewritten in place (even with the same size and modification
time, changed anywhere) gets a new key, so nothing stale is served.

Hashing is the cost: reading every image once per data set object (measured in the README,
"Reliability"). So the digest of each file is stored once, in ``<cache>/sources/``, beside the
file's size, modification time, inode and status-change time (``st_ctime``), and read back while
all four are unchanged. Writing a file, or setting its times with ``touch``, always moves its
ctime to now (only the kernel sets it), so a stored digest is never reused for changed content;
a copy or a ``chmod`` only costs one more hash. On Windows, where ``st_ctime`` is the creation
time, every file is hashed again each time.

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

CACHE_VERSION = 4  # bump when the preprocessing code or the entry format changes
FINGERPRINT_BLOCK = 64 * 1024
HASH_CHUNK = 1 << 20


def content_fingerprint(path) -> str:
    """SHA-1 of the file's size and its first, middle and last 64 KiB (cheap on 10 MB DICOMs).

    Not part of the cache key any more (a change elsewhere in the file escapes it): see
    :func:`content_digest`."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with path.open("rb") as f:
        for start in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
            f.seek(start)
            h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


def file_sha1(path) -> str:
    """SHA-1 of the whole file, read in 1 MiB chunks."""
    h = hashlib.sha1()
    with Path(path).open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _identity(stat: os.stat_result) -> list:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class DigestStore:
    """Whole-file SHA-1 digests kept in ``root`` (one small JSON file per source file), reused
    while the file's size, mtime, ctime, inode and device are unchanged; ``None`` stores nothing."""

    def __init__(self, root):
        self.root = Path(root) if root is not None and os.name == "posix" else None
        self.hashed = 0  # files this object hashed (the rest came from the store)

    def digest(self, path) -> str:
        path = Path(path).resolve()
        identity = _identity(path.stat())
        record = None if self.root is None else self.root / f"{hashlib.sha1(str(path).encode()).hexdigest()}.json"
        if record is not None:
            try:
                saved = json.loads(record.read_text())
                if saved.get("path") == str(path) and saved.get("identity") == identity:
                    return saved["sha1"]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass  # no record, or a damaged one: hash again
        digest = file_sha1(path)
        self.hashed += 1
        if record is not None and _identity(path.stat()) == identity:  # unchanged while it was read
            record.parent.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f".{record.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                tmp.write_text(json.dumps({"path": str(path), "identity": identity, "sha1": digest}))
                os.replace(tmp, record)
            except OSError:
                pass  # a read-only cache: the digest is still right, only not stored
            finally:
                tmp.unlink(missing_ok=True)
        return digest


def content_digest(path, store: DigestStore | None = None) -> str:
    """SHA-1 of the whole file ``path``: from ``store`` when it holds it for this very file."""
    return (store or DigestStore(None)).digest(path)


def sample_key(image_path, params: dict, *arrays: np.ndarray, digests: DigestStore | None = None) -> str:
    path = Path(image_path)
    h = hashlib.sha1()
    h.update(json.dumps(
        {"v": CACHE_VERSION, "path": str(path.resolve()), "content": content_digest(path, digests),
         "params": params},
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

    @property
    def digests(self) -> DigestStore:
        """The store of source-file digests that the keys of this cache use."""
        if not hasattr(self, "_digests"):
            self._digests = DigestStore(None if self.root is None else self.root / "sources")
        return self._digests

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
