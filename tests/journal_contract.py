"""The journal's contract: what every backend and both APIs must do (run by the
``TestJournal*`` classes of tests/test_journal.py, one per backend and API)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from journal import (
    CorruptLine,
    EventRecord,
    InvalidId,
    InvalidInput,
    InvalidRecord,
    SequenceConflict,
)
from journal._model.records import encode_line
from journal.kinds import PhaseEntered
from tests.backends import Backend
from tests.contract import Contract
from tests.support import sample_path


def ev(seq: int, session: str = "s1", branch: str = "main", **kw: object) -> EventRecord:
    return EventRecord.new(session, branch, seq, {"type": "UserMessage", "content": f"m{seq}"},
                           **kw)


def file_of(backend: Backend, session: str = "s1") -> Path:
    return backend.root / "events" / f"{session}.jsonl"


class JournalContract(Contract):
    """Append, read, head, branches, recovery and rebuild, on one backend and API."""

    def test_append_read_head(self) -> None:
        j = self.make_journal()
        assert j.head("s1") == 0
        assert j.read("s1") == []
        first = j.append(EventRecord.new("s1", "main", 1, PhaseEntered(phase="perceive")))
        assert first.sequence == 1
        j.append_batch([ev(2), ev(3), ev(4)])
        assert j.head("s1", "main") == 4
        assert [r.sequence for r in j.read("s1", "main")] == [1, 2, 3, 4]
        assert [r.sequence for r in j.read("s1", "main", from_sequence=2, limit=2)] == [2, 3]
        assert j.read("s1", "main", from_sequence=5) == []
        assert j.read("s1", "main", limit=0) == []
        assert j.read("s1", "main", from_sequence=0, limit=1)[0].sequence == 1
        assert j.read("s1")[0] == first
        j.close()

    def test_branches_have_their_own_sequences(self) -> None:
        j = self.make_journal()
        j.append(ev(1))
        j.append(ev(2))
        j.append(ev(1, branch="alt"))
        assert j.head("s1", "alt") == 1
        assert j.branches("s1") == {"main": 2, "alt": 1}
        assert [r.branch_id for r in j.read("s1", "alt")] == ["alt"]
        assert [r.sequence for r in j.read("s1", "main")] == [1, 2]
        j.close()

    def test_conflicts_name_expected_and_actual(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(i) for i in range(1, 6)])
        with pytest.raises(SequenceConflict, match="expected 6, got 9") as info:
            j.append(ev(9))
        assert (info.value.expected, info.value.actual) == (6, 9)
        with pytest.raises(SequenceConflict, match="expected 6, got 3"):
            j.append(ev(3))
        with pytest.raises(SequenceConflict, match="expected 1, got 2"):
            j.append(ev(2, branch="new"))
        assert j.head("s1") == 5
        j.close()

    def test_retry_with_the_same_event_id_is_idempotent(self) -> None:
        j = self.make_journal()
        one = j.append(ev(1))
        assert j.append(one) == one
        batch = [ev(2), ev(3)]
        stored = j.append_batch(batch)
        assert j.append_batch(batch) == stored
        assert j.head("s1") == 3
        assert len(file_of(self.backend).read_bytes().splitlines()) == 3
        # a different event at a taken sequence is a conflict, not a silent success
        with pytest.raises(SequenceConflict):
            j.append(ev(1))
        j.close()

    def test_bad_input_writes_nothing(self) -> None:
        j = self.make_journal()
        with pytest.raises(InvalidRecord):
            j.append(EventRecord.new("s1", "main", 1, {"type": "UserMessage"}))  # no content
        with pytest.raises(InvalidRecord):
            j.append_batch([ev(1), ev(3)])
        with pytest.raises(InvalidInput):
            j.read("s1", "main", from_sequence=-1)
        assert not (self.backend.root / "events").exists()
        j.append(ev(1))
        size = file_of(self.backend).stat().st_size
        with pytest.raises(InvalidRecord):
            j.append_batch([ev(2), ev(3, session="s2")])
        assert file_of(self.backend).stat().st_size == size
        j.close()

    @pytest.mark.parametrize("bad", ["../x", "a/b", "", "a\x00b", "x" * 200, "..", "."])
    def test_hostile_ids_touch_nothing(self, tmp_path: Path, bad: str) -> None:
        j = self.make_journal()
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(InvalidId):
            j.append(ev(1, session=bad))
        with pytest.raises(InvalidId):
            j.read(bad)
        with pytest.raises(InvalidId):
            j.head("s1", bad)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        assert not (self.backend.root / "events").exists()
        j.close()

    def test_redis_losing_everything_rebuilds_from_the_file(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(i) for i in range(1, 8)])
        j.append_batch([ev(i, branch="alt") for i in range(1, 3)])
        self.backend.restart_empty()
        j2 = self.make_journal()
        assert j2.head("s1") == 7
        assert j2.head("s1", "alt") == 2
        with pytest.raises(SequenceConflict, match="expected 8, got 7"):
            j2.append(ev(7))
        j2.append(ev(8))
        assert [r.sequence for r in j2.read("s1")] == list(range(1, 9))
        j.close()
        j2.close()

    def test_a_torn_tail_is_cut_and_readers_never_see_it(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(1), ev(2)])
        good = file_of(self.backend).read_bytes()
        with open(file_of(self.backend), "ab") as f:
            f.write(encode_line(ev(3))[:40])  # a writer died halfway through its line
        assert [r.sequence for r in j.read("s1")] == [1, 2]
        assert j.head("s1") == 2
        j.append(ev(3))
        data = file_of(self.backend).read_bytes()
        assert data.startswith(good) and data.count(b"\n") == 3
        assert [r.sequence for r in j.read("s1")] == [1, 2, 3]
        j.close()

    def test_a_complete_line_past_the_commit_is_rolled_forward(self) -> None:
        """A writer that died after its write but before its commit: its line is committed,
        and the next writer recovers it."""
        j = self.make_journal()
        j.append(ev(1))
        orphan = ev(2)
        with open(file_of(self.backend), "ab") as f:
            f.write(encode_line(orphan))
        with pytest.raises(SequenceConflict, match="expected 3, got 2"):
            j.append(ev(2))
        assert j.head("s1") == 2
        assert j.append(orphan).event_id == orphan.event_id  # its retry resolves as success
        j.append(ev(3))
        assert [r.sequence for r in j.read("s1")] == [1, 2, 3]
        j.close()

    def test_stale_non_continuing_lines_are_cut(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(1), ev(2)])
        with open(file_of(self.backend), "ab") as f:
            f.write(encode_line(ev(2)))  # a zombie writer's duplicate of sequence 2
            f.write(encode_line(ev(3)))  # and whatever follows it
        j.append(ev(3))
        records = j.read("s1")
        assert [r.sequence for r in records] == [1, 2, 3]
        assert file_of(self.backend).read_bytes().count(b"\n") == 3
        j.close()

    def test_tail_recovery_after_redis_loss_too(self) -> None:
        j = self.make_journal()
        j.append(ev(1))
        with open(file_of(self.backend), "ab") as f:
            f.write(encode_line(ev(2)) + encode_line(ev(3))[:30])
        self.backend.restart_empty()
        j2 = self.make_journal()
        assert j2.head("s1") == 2
        j2.append(ev(3))
        assert [r.sequence for r in j2.read("s1")] == [1, 2, 3]
        j.close()
        j2.close()

    def test_corrupt_committed_line_names_file_and_line(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(i) for i in range(1, 5)])
        path = file_of(self.backend)
        lines = path.read_bytes().splitlines(keepends=True)
        lines[1] = b"{not json at all" + b" " * (len(lines[1]) - 17) + b"\n"
        path.write_bytes(b"".join(lines))
        with pytest.raises(CorruptLine) as info:
            j.read("s1")
        assert info.value.line == 2 and info.value.path == str(path)
        assert f"{path}:2:" in str(info.value)
        assert [r.sequence for r in j.read("s1", from_sequence=3)] == [3, 4]
        # After Redis lost everything, the rebuild trusts the proven index: the head is right,
        # nothing is cut, and reads still report the damaged line.
        self.backend.restart_empty()
        j2 = self.make_journal()
        assert j2.head("s1") == 4
        with pytest.raises(CorruptLine, match=":2:"):
            j2.read("s1")
        assert path.read_bytes().count(b"\n") == 4
        # Without hint and index the rebuild scans every line, and refuses to take a damaged
        # line that good lines follow for a torn tail.
        import shutil

        shutil.rmtree(self.backend.root / "index")
        self.backend.restart_empty()
        j3 = self.make_journal()
        with pytest.raises(CorruptLine, match=":2:"):
            j3.head("s1")
        assert path.read_bytes().count(b"\n") == 4
        j.close()
        j2.close()
        j3.close()

    def test_reads_survive_a_lost_index_and_the_next_writer_repairs_it(self) -> None:
        j = self.make_journal()
        j.append_batch([ev(i) for i in range(1, 21)])
        j.append_batch([ev(i, branch="alt") for i in range(1, 4)])
        index = self.backend.root / "index" / "s1" / "main.idx2"
        index.unlink()
        assert [r.sequence for r in j.read("s1", from_sequence=15, limit=3)] == [15, 16, 17]
        j.append(ev(21))
        assert index.stat().st_size == 21 * 16
        # an index that points at the wrong lines is detected, not trusted
        index.write_bytes(index.read_bytes()[12:] + index.read_bytes()[:12])
        assert [r.sequence for r in j.read("s1", from_sequence=1, limit=3)] == [1, 2, 3]
        j.close()

    def test_the_aios_sample_is_served_and_written_back_unchanged(self) -> None:
        sample = sample_path().read_bytes()
        sid = "7f3c9a52-1d2e-4b8a-9c0f-2a6b1e4d8c11"
        events = self.backend.root / "events"
        events.mkdir(parents=True)
        (events / f"{sid}.jsonl").write_bytes(sample)
        j = self.make_journal()
        assert j.head(sid, "main") == 9
        assert j.head(sid, "alt") == 2
        records = j.read(sid, "main")
        assert [r.sequence for r in records] == list(range(1, 10))
        # written back into another session file, byte for byte the same lines
        other = self.backend.root / "copy"
        j2 = self.make_journal(root=other, key_prefix="copy")
        for r in j.read(sid, "main") + j.read(sid, "alt"):
            j2.append(r)
        copied = (other / "events" / f"{sid}.jsonl").read_bytes().splitlines()
        assert sorted(copied) == sorted(line for line in sample.splitlines() if line.strip())
        j.close()
        j2.close()

    @pytest.mark.parametrize("durability", ["fsync", "batch", "none"])
    def test_every_durability_setting_appends(self, durability: str) -> None:
        j = self.make_journal(durability=durability)
        j.append_batch([ev(1), ev(2)])
        assert j.head("s1") == 2
        j.close()

    async def test_async_journal_has_the_same_contract(self) -> None:
        async with self.make_async_journal() as j:
            assert await j.head("s1") == 0
            await j.append(ev(1))
            await j.append_batch([ev(2), ev(3)])
            assert await j.head("s1") == 3
            assert [r.sequence for r in await j.read("s1", "main", 2, 5)] == [2, 3]
            with pytest.raises(SequenceConflict, match="expected 4, got 7"):
                await j.append(ev(7))
            assert await j.branches("s1") == {"main": 3}
        self.backend.restart_empty()
        async with self.make_async_journal() as j:
            assert await j.head("s1") == 3

    def test_file_is_fsynced_in_a_new_directory(self) -> None:
        j = self.make_journal()
        j.append(ev(1, session="fresh"))
        st = os.stat(file_of(self.backend, "fresh"))
        assert st.st_size > 0
        j.close()

    async def test_group_commit_shares_rounds_between_concurrent_tasks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """durability="batch": concurrent appends in one process share protocol rounds (and so
        their fdatasync), each caller gets its own records back, and conflicts stay per caller."""
        import asyncio

        from journal._core.group_commit import GroupQueue, Pending

        rounds = 0
        real_next_round = GroupQueue.next_round

        def counting(self: GroupQueue, merge: bool = True) -> list[Pending] | None:
            nonlocal rounds
            chain = real_next_round(self, merge)
            rounds += chain is not None
            return chain

        async with self.make_async_journal(durability="batch") as j:
            monkeypatch.setattr(GroupQueue, "next_round", counting)  # count rounds only
            results = await asyncio.gather(*(j.append(ev(i)) for i in range(1, 41)))
            with pytest.raises(SequenceConflict):
                await asyncio.gather(j.append(ev(41)), j.append(ev(41)))
            monkeypatch.undo()
            assert [r.sequence for r in results] == list(range(1, 41))
            assert await j.head("s1") == 41
            stored = await j.read("s1", limit=40)
            assert [r.event_id for r in stored] == [r.event_id for r in results]
        assert rounds < 20, f"{rounds} rounds for 42 appends: nothing was grouped"

    def test_group_commit_in_threads(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        j = self.make_journal(durability="batch")

        def writer(k: int) -> list[int]:
            return [j.append(ev(i, branch=f"b{k}")).sequence for i in range(1, 6)]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(writer, range(8)))
        assert results == [[1, 2, 3, 4, 5]] * 8
        assert j.branches("s1") == {f"b{k}": 5 for k in range(8)}
        j.close()

    def test_a_file_truncated_behind_the_journals_back_is_an_error_not_a_loop(self) -> None:
        from journal import StorageError

        j = self.make_journal()
        j.append_batch([ev(1), ev(2)])
        path = file_of(self.backend)
        path.write_bytes(path.read_bytes()[:10])
        with pytest.raises(StorageError, match="outside the journal"):
            j.append(ev(3))
        j.close()

    def test_the_whole_index_folder_may_be_deleted_by_hand(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import shutil

        from journal._storage import session_file

        j = self.make_journal()
        j.append_batch([ev(1), ev(2)])
        shutil.rmtree(self.backend.root / "index")
        j.append(ev(3))
        assert [r.sequence for r in j.read("s1")] == [1, 2, 3]  # without an index: a scan
        # A writer that keeps its lease keeps its index files open, and checks them against
        # their paths every REVALIDATE_S (not on every append): then it repairs the index.
        monkeypatch.setattr(session_file, "REVALIDATE_S", 0.0)
        j.append(ev(4))
        assert [r.sequence for r in j.read("s1")] == [1, 2, 3, 4]
        assert (self.backend.root / "index" / "s1" / "main.idx2").stat().st_size == 4 * 16
        j.close()

    def test_a_process_reads_its_own_writes_with_pipelined_commits(self) -> None:
        j = self.make_journal()
        for seq in range(1, 101):
            j.append(ev(seq))
            assert j.head("s1") == seq  # the pending commit is read before the head
        assert [r.sequence for r in j.read("s1")] == list(range(1, 101))
        j.close()
        other = self.make_journal()  # closing settled every pending commit
        assert other.head("s1") == 100
        other.close()

    def test_redis_restarting_under_a_held_lease_loses_nothing(self) -> None:
        j = self.make_journal()
        stored = [j.append(ev(seq)) for seq in range(1, 31)]
        self.backend.restart_empty()  # lease, heads and the pipelined commit's script are gone
        stored.append(j.append(ev(31)))
        assert j.head("s1") == 31
        assert [r.event_id for r in j.read("s1")] == [r.event_id for r in stored]
        j.close()

    async def test_async_pipelined_commits_and_restart(self) -> None:
        async with self.make_async_journal() as j:
            stored = [await j.append(ev(seq)) for seq in range(1, 21)]
            assert await j.head("s1") == 20
            # In a thread, so the event loop goes on, as a live application's would: a
            # loop blocked across the restart would not see its sockets close, and hand the
            # next command a dead connection.
            await asyncio.to_thread(self.backend.restart_empty)
            stored.append(await j.append(ev(21)))
            assert [r.event_id for r in await j.read("s1")] == [r.event_id for r in stored]

    @pytest.mark.parametrize("damage",
                             ["none", "index-lost-branch", "index-short", "bad-last-entry"])
    def test_rebuild_trusts_the_index_only_when_it_proves_the_prefix(
        self, damage: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from journal._storage.session_file import SessionStore

        scans = 0
        full_scan = SessionStore._rebuild_scan

        def counting(self: SessionStore, *args: object) -> object:
            nonlocal scans
            scans += 1
            return full_scan(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(SessionStore, "_rebuild_scan", counting)
        j = self.make_journal()
        j.append_batch([ev(i) for i in range(1, 11)])
        j.append_batch([ev(i, branch="alt") for i in range(1, 6)])
        j.append_batch([ev(i) for i in range(11, 16)])
        index = self.backend.root / "index" / "s1"
        if damage == "index-lost-branch":
            (index / "alt.idx2").unlink()  # its lines would be missed: the sums disagree
        elif damage == "index-short":
            raw = (index / "main.idx2").read_bytes()
            (index / "main.idx2").write_bytes(raw[:-32])
        elif damage == "bad-last-entry":
            raw = bytearray((index / "main.idx2").read_bytes())
            raw[-16:] = raw[-32:-16]  # the last entry points at the line before it
            (index / "main.idx2").write_bytes(bytes(raw))
        j.close()
        scans = 0  # (the session's first append rebuilt its empty state too)
        self.backend.restart_empty()
        j2 = self.make_journal()
        assert j2.branches("s1") == {"main": 15, "alt": 5}
        assert scans == (0 if damage == "none" else 1), "the wrong rebuild path ran"
        assert [r.sequence for r in j2.read("s1", "main", 9, 10)] == list(range(9, 16))
        j2.append(ev(16))
        assert (index / "main.idx2").stat().st_size == 16 * 16
        j2.close()

    def test_readers_make_rolled_forward_lines_visible_without_a_writer(self) -> None:
        """Lines past the committed length that continue their branch are committed by rule;
        a reader that finds the lease free recovers them, so they show without a next append."""
        j = self.make_journal(lease_hold_ms=0)
        j.append(ev(1))
        orphans = [ev(2), ev(3)]
        with open(file_of(self.backend), "ab") as f:
            f.write(b"".join(encode_line(r) for r in orphans) + encode_line(ev(4))[:25])
        other = self.make_journal(lease_hold_ms=0)
        assert other.head("s1") == 3
        assert [r.event_id for r in other.read("s1", from_sequence=2)] == [
            r.event_id for r in orphans
        ]
        assert file_of(self.backend).read_bytes().count(b"\n") == 3  # the torn piece is gone
        j.close()
        other.close()
