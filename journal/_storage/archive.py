"""Archived sessions: one zstandard file per session, ``archive/<sid>.jsonl.zst``.

The file is one zstd frame of the session file's committed bytes, byte for byte, with the
frame's content checksum (XXH64) and content size; the lifecycle marks also keep its
SHA-256. Reading verifies both, so a damaged archive is reported, never served.
Decompressed archives are cached (a few, by path, size and mtime): archived sessions are
idle, and their reads should not decompress the whole file every time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import zstandard

from journal._storage.durable import write_durably
from journal.errors import StorageError

LEVEL = 10  # a good ratio at a few MB/s: archiving is background work
_CACHE_BYTES = 64 << 20
_cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
_cache_lock = threading.Lock()


def archive_path(root: Path, session_id: str) -> Path:
    return root / "archive" / f"{session_id}.jsonl.zst"


def write(path: Path, data: bytes) -> str:
    """Compress ``data`` into ``path`` durably; returns its SHA-256."""
    compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True,
                                          write_content_size=True)
    write_durably(path, compressor.compress(data))
    return hashlib.sha256(data).hexdigest()


def read(path: Path, sha256: str | None) -> bytes:
    """The archived bytes, checked against the frame checksum and ``sha256``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StorageError(f"{path}: the session is archived but its archive is missing") \
            from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    data = decompress(path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StorageError(f"{path}: SHA-256 mismatch: the archive is damaged")
    with _cache_lock:
        _cache[key] = data
        total = sum(len(v) for v in _cache.values())
        while total > _CACHE_BYTES and len(_cache) > 1:
            _, dropped = _cache.popitem(last=False)
            total -= len(dropped)
    return data


def decompress(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return zstandard.ZstdDecompressor().decompress(raw)
    except zstandard.ZstdError as exc:
        raise StorageError(f"{path}: damaged archive: {exc}") from None
