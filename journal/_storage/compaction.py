"""Compaction after ``truncate_before``: the session file rewritten without the lines below
the branches' truncation points.

Two steps, both under the session's lease. :func:`prepare` writes the new file beside the
old one (``events/.<sid>.jsonl.compact``, fsynced) and the new index files
(``index/<sid>/.<branch>.idx2.compact``). :func:`finish` renames the new file over the old one
(the commit point: ``rename`` is atomic), fsyncs the directory, then installs the index and
the committed hint. A crash before the rename leaves the old file whole; after it, the new
one. ``finish`` is idempotent, so whoever holds the lease next (a retry, or a rebuild after
Redis lost the state) completes it.

Index entries keep their meaning "entry *n* is sequence *n*": the entries below a
truncation point are zero ``(0, 0)`` and never read (reads below it are refused).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from journal._model.records import DECODE_ERRORS
from journal._storage.durable import sync_dir, write_synced
from journal._storage.session_file import (
    INDEX_ENTRY,
    INDEX_SUFFIX,
    SessionStore,
    checksum_of,
    iter_lines,
)
from journal._storage.tombstone import Marks

_SUFFIX = ".compact"


class Position(msgspec.Struct):
    session_id: str
    branch_id: str
    sequence: int


_position = msgspec.json.Decoder(Position)


def position(raw: bytes) -> Position | None:
    try:
        return _position.decode(raw)
    except DECODE_ERRORS:
        return None


def tmp_path(store: SessionStore) -> Path:
    return store.path.with_name(f".{store.path.name}{_SUFFIX}")


def _index_tmps(store: SessionStore) -> list[Path]:
    if not store.index_dir.is_dir():
        return []
    # .idx too: one prepared by a version without checksums (installed, it is ignored)
    return sorted(store.index_dir.glob(f".*.idx*{_SUFFIX}"))


def prepare(store: SessionStore, floors: dict[str, int], committed: int,
            heads: dict[str, int]) -> int:
    """Write the compacted file and index beside the live ones; returns the new length."""
    kept: list[bytes] = []
    rows: dict[str, list[tuple[int, int, int]]] = {
        b: [(0, 0, 0)] * (floors.get(b, 1) - 1) for b in heads
    }
    offset = 0
    known = store.known_checksums()  # a changed line must not be copied as good
    fd = os.open(store.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for at, raw, complete in iter_lines(fd, 0, committed):
            if not complete or not raw.strip():
                continue
            pos = position(raw)
            if pos is None or pos.sequence < floors.get(pos.branch_id, 1):
                continue
            crc = checksum_of(raw)
            store.check_known(known, pos.branch_id, pos.sequence, at, len(raw) + 1, crc)
            kept.append(raw + b"\n")
            rows.setdefault(pos.branch_id, []).append((offset, len(raw) + 1, crc))
            offset += len(raw) + 1
    finally:
        os.close(fd)
    discard(store)
    write_synced(tmp_path(store), b"".join(kept))
    store.index_dir.mkdir(parents=True, exist_ok=True)
    for branch, entries in rows.items():
        path = store.index_dir / f".{branch}{INDEX_SUFFIX}{_SUFFIX}"
        path.write_bytes(b"".join(INDEX_ENTRY.pack(*row) for row in entries))
    return offset


def pending(store: SessionStore, marks: Marks) -> bool:
    """A prepared compaction that the marks promise and the old file still waits for."""
    c = marks.compaction
    tmp = tmp_path(store)
    try:
        return (c is not None and tmp.stat().st_size == c.after
                and store.size() == c.before)
    except FileNotFoundError:
        return False


def finish(store: SessionStore, marks: Marks, guard: Callable[[], None]) -> bool:
    """Install a prepared compaction (idempotent); only under the lease. What a compaction
    that never reached its commit point left behind is removed. True when the file is the
    compacted one now."""
    from journal._fault_hook import hit

    c = marks.compaction
    if pending(store, marks):
        guard()
        os.replace(tmp_path(store), store.path)  # the commit point
        sync_dir(store.path.parent)
        hit("compact:after_rename")
    if c is None or store.size() != c.after:
        discard(store)
        return False
    for tmp in _index_tmps(store):
        os.replace(tmp, tmp.with_name(tmp.name[1:].removesuffix(_SUFFIX)))
    with contextlib.suppress(OSError):  # a cache: only a bound for rebuilds
        store.write_hint(c.after)
    discard(store)
    return True


def discard(store: SessionStore) -> None:
    """Remove what a compaction that never reached its commit point left behind."""
    for path in [tmp_path(store), *_index_tmps(store)]:
        path.unlink(missing_ok=True)
