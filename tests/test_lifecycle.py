"""Delete, truncate and archive (issue 14), against a real redis-server."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from journal import (
    EventRecord,
    HistoryTruncated,
    InvalidInput,
    Journal,
    SessionDeleted,
    StorageError,
    _fault_hook,
)
from journal._storage import archive as archives
from journal._storage import compaction, gate, tombstone
from journal.errors import SequenceConflict

from .conftest import Backend


def _fill(j: Journal, sid: str, n: int, branch: str = "main", start: int = 1) -> None:
    j.append_batch([EventRecord.new(sid, branch, s, {"type": "UserMessage", "content": f"m{s}"})
                    for s in range(start, start + n)])


def test_delete_removes_events_and_everything_after_raises(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 5)
    _fill(j, "keep", 2)
    j.delete("s1")
    root = real_backend.root
    assert not (root / "events" / "s1.jsonl").exists()
    assert not (root / "index" / "s1").exists()
    assert (root / "lifecycle" / "s1.json").exists()
    assert j.redis.exists("journal:{s1}:tomb") == 1
    for call in (lambda: j.read("s1"), lambda: j.head("s1"), lambda: j.branches("s1"),
                 lambda: _fill(j, "s1", 1)):
        with pytest.raises(SessionDeleted, match="s1 was deleted"):
            call()
    # Redis forgetting everything does not bring it back: the tombstone is on disk too.
    real_backend.restart_empty()
    j2 = real_backend.journal()
    with pytest.raises(SessionDeleted):
        _fill(j2, "s1", 1)
    with pytest.raises(SessionDeleted):
        j2.read("s1")
    assert [r.sequence for r in j2.read("keep")] == [1, 2]
    j2.delete("s1")  # deleting again is a no-op, not an error
    with pytest.raises(InvalidInput, match="no session nope"):
        j2.delete("nope")
    j.close()
    j2.close()


def test_subscriber_ends_with_session_deleted(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 3)
    sub = j.subscribe("s1", idle_s=0.2)
    got = [next(sub).sequence for _ in range(3)]
    assert got == [1, 2, 3]
    j.delete("s1")
    with pytest.raises(SessionDeleted):
        next(sub)
    j.close()


def test_truncate_hides_history_and_compacts(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 10)
    _fill(j, "s1", 3, branch="alt")
    path = real_backend.root / "events" / "s1.jsonl"
    before = path.stat().st_size
    assert j.truncate_before("s1", "main", 7) == 7
    assert path.stat().st_size < before
    with pytest.raises(HistoryTruncated, match="must start at 7") as info:
        j.read("s1", "main", 1)
    assert info.value.first == 7
    assert [r.sequence for r in j.read("s1", "main", 7)] == [7, 8, 9, 10]
    assert [r.sequence for r in j.read("s1", "alt", 1)] == [1, 2, 3]
    assert j.head("s1") == 10
    _fill(j, "s1", 2, start=11)
    assert [r.sequence for r in j.read("s1", "main", 9)] == [9, 10, 11, 12]
    with pytest.raises(SequenceConflict):
        _fill(j, "s1", 1, start=3)
    # Redis lost: the rebuild knows the truncation point (fast path, then a lost index too).
    real_backend.restart_empty()
    j2 = real_backend.journal()
    assert j2.head("s1") == 12
    assert [r.sequence for r in j2.read("s1", "main", 7)] == [7, 8, 9, 10, 11, 12]
    shutil.rmtree(real_backend.root / "index")
    real_backend.restart_empty()
    j3 = real_backend.journal()
    assert j3.branches("s1") == {"main": 12, "alt": 3}
    assert [r.sequence for r in j3.read("s1", "main", 8)] == [8, 9, 10, 11, 12]
    _fill(j3, "s1", 1, start=13)
    assert [r.sequence for r in j3.read("s1", "main", 12)] == [12, 13]
    with pytest.raises(InvalidInput, match="its head is 13"):
        j3.truncate_before("s1", "main", 20)
    assert j3.truncate_before("s1", "main", 14) == 14  # everything: the branch is empty
    assert j3.read("s1", "main", 14) == []
    _fill(j3, "s1", 1, start=14)
    assert [r.sequence for r in j3.read("s1", "main", 14)] == [14]
    for x in (j, j2, j3):
        x.close()


def test_archive_reads_through_and_an_append_reopens(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 20)
    original = (real_backend.root / "events" / "s1.jsonl").read_bytes()
    assert j.archive("s1") is True
    assert j.archive("s1") is False
    root = real_backend.root
    assert not (root / "events" / "s1.jsonl").exists()
    assert archives.decompress(root / "archive" / "s1.jsonl.zst") == original
    assert [r.sequence for r in j.read("s1", "main", 15)] == [15, 16, 17, 18, 19, 20]
    assert j.head("s1") == 20
    sub = j.subscribe("s1", after_sequence=18)
    assert [next(sub).sequence for _ in range(2)] == [19, 20]
    sub.close()  # type: ignore[attr-defined]
    real_backend.restart_empty()
    j2 = real_backend.journal()
    assert j2.branches("s1") == {"main": 20}
    _fill(j2, "s1", 1, start=21)  # reopens
    assert (root / "events" / "s1.jsonl").read_bytes().startswith(original)
    assert not (root / "archive" / "s1.jsonl.zst").exists()
    assert [r.sequence for r in j2.read("s1", "main", 19)] == [19, 20, 21]
    j.close()
    j2.close()


class _OnceAt:
    """A fault hook that runs ``action`` the first time the code passes ``point``."""

    def __init__(self, point: str, action: Callable[[], object]) -> None:
        self.point, self.action, self.fired = point, action, False

    def wants(self, point: str) -> bool:
        return point == self.point

    def hit(self, point: str) -> None:
        if point == self.point and not self.fired:
            self.fired = True
            self.action()


class _EveryTime(_OnceAt):
    def hit(self, point: str) -> None:
        if point == self.point:
            self.action()


@pytest.mark.parametrize("api", ["read", "subscribe"])
def test_a_read_that_races_an_archive_reads_the_archive(real_backend: Backend,
                                                        api: str) -> None:
    # Found by the chaos run: a subscriber read the marks (not archived yet), an archive
    # saved its marks and removed the file, and the read reported the file missing
    # ("shorter than the committed length Redis holds") instead of reading the archive.
    j, other = real_backend.journal(), real_backend.journal()
    _fill(j, "s1", 12)
    hook = _OnceAt("read:after_marks", lambda: other.archive("s1"))
    _fault_hook.installed = hook
    try:
        if api == "read":
            got = [r.sequence for r in j.read("s1", "main", 3)]
        else:
            sub = j.subscribe("s1", after_sequence=2)
            got = [next(sub).sequence for _ in range(10)]
            sub.close()  # type: ignore[attr-defined]
    finally:
        _fault_hook.installed = None
    assert hook.fired
    assert not (real_backend.root / "events" / "s1.jsonl").exists()  # it did run first
    assert got == list(range(3, 13))
    for x in (j, other):
        x.close()


def test_a_rebuild_that_races_a_stale_compaction_reads_the_marks_again(
        real_backend: Backend) -> None:
    # Redis restarts while a truncate is at work. Its lease is gone, but its own clock
    # still trusts it, so it goes on and installs its compaction while a reader rebuilds
    # the state: the rebuild had read the marks and the hint from before, found the file
    # shorter than that hint, and refused with StorageError.
    j = real_backend.journal()
    _fill(j, "s1", 20)
    real_backend.restart_empty()
    other = real_backend.journal()
    store = other.core.store("s1")

    def stale_truncate() -> None:  # truncate_before's file steps, as a holder runs them
        marks = gate.marks(store)
        committed = store.size()
        floors = {"main": 11}
        new_len = compaction.prepare(store, floors, committed, {"main": 20})
        new = msgspec.structs.replace(marks, floors=floors,
                                      compaction=tombstone.Compaction(committed, new_len))
        tombstone.save(real_backend.root, "s1", new)
        compaction.finish(store, new, lambda: None)

    hook = _OnceAt("rebuild:after_hint", stale_truncate)
    reader = real_backend.journal(view_catch_up_s=0.2)
    _fault_hook.installed = hook
    try:
        assert reader.head("s1") == 20
    finally:
        _fault_hook.installed = None
    assert hook.fired
    assert [r.sequence for r in reader.read("s1", "main", 11)] == list(range(11, 21))
    with pytest.raises(HistoryTruncated):
        reader.read("s1", "main", 1)
    for x in (j, other, reader):
        x.close()


def _while_redis_restarts(real_backend: Backend, point: str,
                          op: Callable[[Journal], object]) -> tuple[object, list[Journal]]:
    """Fill s1 with 12 events and run ``op`` on that journal. When ``op`` passes ``point``,
    Redis restarts empty and another journal appends events 13..17 (acknowledged). Returns
    what ``op`` returned, and both journals."""
    j, writer = real_backend.journal(), real_backend.journal()
    _fill(j, "s1", 12)

    def restart_and_append() -> None:
        real_backend.restart_empty()
        _fill(writer, "s1", 5, start=13)

    hook = _OnceAt(point, restart_and_append)
    _fault_hook.installed = hook
    try:
        result = op(j)
    finally:
        _fault_hook.installed = None
    assert hook.fired
    return result, [j, writer]


def _read_after_another_restart(real_backend: Backend, first: int) -> list[int]:
    """Redis emptied once more: the sequences the files alone give from ``first`` on."""
    real_backend.restart_empty()
    with real_backend.journal() as fresh:
        assert fresh.head("s1") == 17
        return [r.sequence for r in fresh.read("s1", "main", first)]


@pytest.mark.parametrize("point", ["archive:after_write", "archive:after_marks"])
def test_an_archive_whose_lease_died_with_redis_keeps_what_was_appended_meanwhile(
        real_backend: Backend, point: str) -> None:
    # Redis restarts while an archive compresses the file (or just after it saved its
    # marks). A writer rebuilds the state, waiting out one hold window, and appends. The
    # archive, still trusting its own clock, went on to remove the file, and took the
    # writer's acknowledged events with it.
    done, (j, writer) = _while_redis_restarts(real_backend, point, lambda j: j.archive("s1"))
    assert done is True
    everything = list(range(1, 18))
    assert [r.sequence for r in writer.read("s1", "main", 1)] == everything
    # The archive that finally ran holds them too.
    assert not (real_backend.root / "events" / "s1.jsonl").exists()
    assert _read_after_another_restart(real_backend, 1) == everything
    for x in (j, writer):
        x.close()


@pytest.mark.parametrize("point", ["truncate:after_clear", "truncate:after_marks"])
def test_a_truncate_whose_lease_died_with_redis_keeps_what_was_appended_meanwhile(
        real_backend: Backend, point: str) -> None:
    # The same for a truncate: Redis restarts after it dropped the state, a writer rebuilds
    # and appends, and the truncate then goes on trusting its own clock. This one held
    # before the fence too (a rebuild finishes a pending compaction itself, and a file
    # that grew is never renamed over); the fence closes the window between that size
    # check and the rename, which a test cannot hit on purpose.
    first, (j, writer) = _while_redis_restarts(
        real_backend, point, lambda j: j.truncate_before("s1", "main", 5))
    assert first == 5
    kept = list(range(5, 18))
    assert [r.sequence for r in writer.read("s1", "main", 5)] == kept
    assert _read_after_another_restart(real_backend, 5) == kept
    with real_backend.journal() as fresh:
        with pytest.raises(HistoryTruncated):
            fresh.read("s1", "main", 1)
        _fill(fresh, "s1", 1, start=18)
        assert [r.sequence for r in fresh.read("s1", "main", 5)] == [*kept, 18]
    for x in (j, writer):
        x.close()


def test_a_reopen_whose_lease_died_with_redis_leaves_a_newer_archive_alone(
        real_backend: Backend) -> None:
    # An append reopens an archived session: it restores the file and renames it into
    # place, and stops there. Redis restarts; another writer rebuilds, appends event 13
    # (acknowledged) and archives the session again. The reopener, still trusting its own
    # clock, went on to clear the marks and remove "its" archive: the new one, with every
    # event in it.
    j, other = real_backend.journal(), real_backend.journal()
    _fill(j, "s1", 12)
    assert j.archive("s1") is True

    def restart_append_archive() -> None:
        real_backend.restart_empty()
        _fill(other, "s1", 1, start=13)
        assert other.archive("s1") is True

    hook = _OnceAt("reopen:after_rename", restart_append_archive)
    _fault_hook.installed = hook
    try:
        with pytest.raises(SequenceConflict):  # the reopener's own 13 lost the race
            _fill(j, "s1", 1, start=13)
    finally:
        _fault_hook.installed = None
    assert hook.fired
    real_backend.restart_empty()
    with real_backend.journal() as fresh:
        assert fresh.head("s1") == 13
        assert [r.sequence for r in fresh.read("s1", "main", 1)] == list(range(1, 14))
    for x in (j, other):
        x.close()


@pytest.mark.parametrize(("op", "point"), [("archive", "archive:after_write"),
                                           ("truncate", "truncate:after_prepare")])
def test_a_lifecycle_step_slower_than_its_lease_runs_again_with_the_longest(
        real_backend: Backend, op: str, point: str) -> None:
    # The lease of a life-cycle operation is sized by the file (2 s here); work that
    # outruns it (a slow disk, a slow compression) gives it back and runs again with
    # rebuild_lease_ms, instead of failing or repeating itself at the same length.
    j = real_backend.journal(lease_ms=300, rebuild_lease_ms=10_000)
    _fill(j, "s1", 12)
    stalls: list[float] = []

    def stall() -> None:  # the same slow step on the first two tries, then fast
        if len(stalls) < 2:
            time.sleep(2.3)
        stalls.append(2.3)

    hook = _EveryTime(point, stall)
    _fault_hook.installed = hook
    try:
        if op == "archive":
            assert j.archive("s1") is True
        else:
            assert j.truncate_before("s1", "main", 5) == 5
    finally:
        _fault_hook.installed = None
    # The second try held the longest lease and outlasted the stall: no third.
    assert len(stalls) == 2
    assert [r.sequence for r in j.read("s1", "main", 5)] == list(range(5, 13))
    j.close()


def test_a_file_missing_without_an_archive_is_still_reported(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 4)
    (real_backend.root / "events" / "s1.jsonl").unlink()
    with pytest.raises(StorageError, match=r"shorter than the committed length Redis holds \(0 <"):
        j.read("s1")
    j.close()


def test_a_damaged_archive_is_reported_not_served(real_backend: Backend) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 5)
    j.archive("s1")
    path = real_backend.root / "archive" / "s1.jsonl.zst"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="archive"):
        j.read("s1")
    j.close()


def test_a_root_that_no_longer_matches_its_redis(real_backend: Backend, tmp_path: Path) -> None:
    j = real_backend.journal()
    _fill(j, "s1", 5)
    j.close()
    shutil.rmtree(real_backend.root)
    j = real_backend.journal()
    for seq in (1, 6):
        with pytest.raises(StorageError) as info:
            _fill(j, "s1", 1, start=seq)
        message = str(info.value)
        assert "is shorter than the committed length Redis holds (0 <" in message
        assert "another journal root uses this Redis" in message
        assert "journal rebuild s1" in message and "key_prefix" in message
        assert not (real_backend.root / "events" / "s1.jsonl").exists()  # nothing written
    j.close()
