"""Where the read, rebuild and append paths meet a session's life marks (docs/design.md,
"The life of a session").

``protocol.py`` calls these few functions instead of the plain :class:`SessionStore`
methods, inside the same blocking steps, so honouring tombstones, truncation points and
archives costs the hot path one failed ``open`` of the marks file and one ``stat``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from journal import _fault_hook as fault
from journal._model.records import DECODE_ERRORS, EventRecord, decode_line
from journal._storage import archive, compaction, durable, tombstone
from journal._storage.compaction import position
from journal._storage.session_file import SessionStore, TailResult
from journal.errors import HistoryTruncated, SessionDeleted, StorageError


def _root(store: SessionStore) -> Path:
    return store.path.parent.parent


_marks_paths: dict[str, str] = {}


def _marks_path(store: SessionStore) -> str:
    """Computed once per file: pathlib on every read costs more than the open itself."""
    key = str(store.path)
    found = _marks_paths.get(key)
    if found is None:
        if len(_marks_paths) > 4096:
            _marks_paths.clear()
        found = _marks_paths[key] = str(tombstone.marks_path(_root(store), store.session_id))
    return found


def marks(store: SessionStore) -> tombstone.Marks:
    found = tombstone.load_path(_marks_path(store))
    if found.deleted_at is not None:
        raise SessionDeleted(store.session_id)
    store.floors = found.floors
    return found


def exists(store: SessionStore) -> bool:
    """Is there a session to rebuild Redis state from? (SessionDeleted for a tombstone.)"""
    found = marks(store)
    return store.path.exists() or found.archived is not None


def rebuild(store: SessionStore, guard: Callable[[], None], full: bool = False,
            hint_may_outrun: bool = False) -> TailResult:
    """``SessionStore.rebuild`` that knows archives and finishes an interrupted compaction
    (called under the rebuild lease)."""
    found = marks(store)
    try:
        return _rebuild(store, found, guard, full, hint_may_outrun)
    except StorageError:
        # A life-cycle operation that held the lease when Redis lost it may still have been
        # at work, trusting its own clock: a compaction it installed after we read the
        # marks shows as a file shorter than the hint we read before. Its marks tell.
        again = marks(store)
        if again == found:
            raise
        return _rebuild(store, again, guard, full, hint_may_outrun)


def _rebuild(store: SessionStore, found: tombstone.Marks, guard: Callable[[], None], full: bool,
             hint_may_outrun: bool) -> TailResult:
    if found.archived is not None and not store.path.exists():
        return TailResult(length=found.archived.length, heads=dict(found.archived.heads))
    compaction.finish(store, found, guard)
    return store.rebuild(full, hint_may_outrun)


def mismatch(store: SessionStore, size: int, committed: int) -> StorageError:
    return StorageError(store.lagging(size, committed))


def read(store: SessionStore, branch_id: str, first: int, last: int,
         committed: int) -> list[EventRecord]:
    found = marks(store)
    floor = found.floors.get(branch_id, 1)
    if first < floor:
        raise HistoryTruncated(store.session_id, branch_id, first, floor)
    if last < first:
        return []
    fault.hit("read:after_marks")
    # A read may race an archive, which saves its marks and then removes the file, or an
    # append that reopens an archived session, which puts the file back, clears the mark,
    # then removes the archive. Whichever it met, a second look at the marks and the files
    # finds the events; only a file missing on both looks is reported.
    path = str(store.path)
    for _look in range(2):
        if os.path.exists(path):
            # A length from just before a compaction is fine too: reads are bounded by
            # sequence, and every line read is verified. The file removed under the read
            # reads as nothing: look again.
            records = store.read(branch_id, first, last, committed)
            if records or os.path.exists(path):
                return records
        elif found.archived is not None and (src := _archive_of(store)).exists():
            try:
                data = archive.read(src, found.archived.sha256)
            except (FileNotFoundError, StorageError):
                if src.exists():
                    raise  # damaged, not removed by a reopen
            else:
                return _read_bytes(store, data, branch_id, first, last, committed)
        elif not committed:
            return []
        found = marks(store)
    if found.archived is not None:
        archive.read(_archive_of(store), found.archived.sha256)  # raises: it is missing
    # Redis knows committed bytes of a file that is not there. (A file cut short is read up
    # to its damage and reported as CorruptLine, as before.)
    raise mismatch(store, 0, committed)


def _archive_of(store: SessionStore) -> Path:
    return archive.archive_path(_root(store), store.session_id)


def _read_bytes(store: SessionStore, data: bytes, branch_id: str, first: int, last: int,
                committed: int) -> list[EventRecord]:
    out: list[EventRecord] = []
    lineno = 0
    for raw in memoryview(data)[:committed].tobytes().split(b"\n"):
        lineno += 1
        pos = position(raw) if raw.strip() else None
        if pos is None or pos.branch_id != branch_id or pos.sequence < first:
            continue
        if pos.sequence > last:
            break
        try:
            out.append(decode_line(raw))
        except DECODE_ERRORS as exc:
            raise StorageError(f"{store.path} (archived) line {lineno}: {exc}") from None
    return out


class Restored(msgspec.Struct, frozen=True):
    """An archived session's file, restored beside its place (``short_file``): what the
    append's protocol installs, fenced, with :func:`reopen` and :func:`forget_archive`."""

    length: int
    marks: tombstone.Marks


def short_file(store: SessionStore, size: int, committed: int) -> int | Restored:
    """An append found the file shorter than the committed length. The size once a lagging
    view caught up; for an archived session its file restored beside its place, to be
    installed under the lease (:func:`reopen`); anything else is refused."""
    found = marks(store)
    if found.archived is None:
        size = store.size_reaching(committed, store.view_catch_up_s)
        if size >= committed:
            return size
        raise mismatch(store, size, committed)
    if size != 0 or store.path.exists():
        raise mismatch(store, size, committed)
    data = archive.read(_archive_of(store), found.archived.sha256)
    durable.write_synced(compaction.tmp_path(store), data)
    fault.hit("reopen:after_write")
    return Restored(len(data), found)


def reopen(store: SessionStore, guard: Callable[[], None]) -> None:
    """Put a restored file in place: the commit point of a reopen, from which on the file
    is the truth again. (Every reopen restores to the same temporary name, so of two
    racing ones the later finds it gone instead of renaming over the other's file.)"""
    guard()
    compaction.tmp_path(store).replace(store.path)
    durable.sync_dir(store.path.parent)
    fault.hit("reopen:after_rename")


def forget_archive(store: SessionStore, restored: Restored, guard: Callable[[], None]) -> None:
    """After a reopen: the marks no longer say archived, and the archive goes."""
    guard()
    tombstone.save(_root(store), store.session_id,
                   msgspec.structs.replace(restored.marks, archived=None))
    _archive_of(store).unlink(missing_ok=True)


def remove_files(store: SessionStore) -> None:
    """Remove every file of a session but its marks (delete; under the lease)."""
    root = _root(store)
    for path in (store.path, compaction.tmp_path(store),
                 archive.archive_path(root, store.session_id)):
        path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(store.index_dir)
    for folder in (store.path.parent, root / "archive", root / "index"):
        durable.sync_dir(folder)


def archive_files(store: SessionStore, guard: Callable[[], None]) -> None:
    """After the marks say archived: the file and its index go (under the lease, while
    ``guard`` passes)."""
    guard()
    store.path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(store.index_dir)
    durable.sync_dir(store.path.parent)
