"""A session's life marks on disk: deleted (the tombstone), truncation points, archived.

``<root>/lifecycle/<sid>.json`` holds one small JSON object. It lives outside ``index/``
(a cache that may be deleted by hand) because it is part of the truth: a tombstone or a
truncation point must survive Redis losing everything. It is only written under the
session's writer lease, always whole: a temporary file, ``fsync``, ``rename``, and an
``fsync`` of the directory, so a crash leaves the old marks or the new ones.

A session without the file has no marks; reading them then costs one failed ``open``.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from journal._storage.durable import write_durably


class Archived(msgspec.Struct, frozen=True):
    """The session's bytes ``[0, length)`` live in ``archive/<sid>.jsonl.zst``."""

    length: int  # the committed length that was archived
    sha256: str  # of the uncompressed bytes
    heads: dict[str, int]
    at: float  # unix time of the archive


class Compaction(msgspec.Struct, frozen=True):
    """The last compaction: the committed length before it and after it. A reader that got
    the old length from Redis just before the rewrite is told apart from a cut file."""

    before: int
    after: int


class Marks(msgspec.Struct, frozen=True, omit_defaults=True):
    deleted_at: float | None = None  # the tombstone
    floors: dict[str, int] = {}  # branch -> lowest sequence still stored
    archived: Archived | None = None
    compaction: Compaction | None = None


_decoder = msgspec.json.Decoder(Marks)
NONE = Marks()


def marks_path(root: Path, session_id: str) -> Path:
    return root / "lifecycle" / f"{session_id}.json"


def load(root: Path, session_id: str) -> Marks:
    return load_path(str(marks_path(root, session_id)))


def load_path(path: str) -> Marks:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return NONE
    try:
        raw = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    return _decoder.decode(raw)


def save(root: Path, session_id: str, marks: Marks) -> None:
    """Replace the marks atomically and durably (under the session's lease)."""
    path = marks_path(root, session_id)
    write_durably(path, msgspec.json.encode(marks))
