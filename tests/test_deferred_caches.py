"""The deferred caches of the held-lease fast path (docs/design.md, I21): a steady single-line
append writes neither its index entry nor the hint; they are written together every
DEFER_LINES lines or DEFER_S, and when the lease is given back. Until then they lag the file,
never lie: readers scan past the index, the next writer catches it up by scanning only the
lines it lags by, and a rebuild after Redis lost everything stays exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from journal import EventRecord, Journal
from journal._storage import session_file
from journal._storage.session_file import HINT, INDEX_ENTRY
from journal.cli.verify import verify_report
from tests.backends import Backend

# The lease is held across appends for this long, so every append after the first takes
# the fast path even on a loaded machine.
HOLD_MS = 5000


def rec(seq: int, branch: str = "main") -> EventRecord:
    return EventRecord.new("s", branch, seq, {"type": "UserMessage", "content": f"m{seq}"})


def indexed(root: Path, branch: str = "main") -> int:
    path = root / "index" / "s" / f"{branch}.idx2"
    return path.stat().st_size // INDEX_ENTRY.size if path.exists() else 0


def hint(root: Path) -> int:
    committed, _pending = HINT.unpack((root / "index" / "s" / "committed").read_bytes())
    return int(committed)


def file_size(root: Path) -> int:
    return (root / "events" / "s.jsonl").stat().st_size


@pytest.fixture
def root(server_backend: Backend) -> Path:
    return server_backend.root


@pytest.fixture
def url(server_backend: Backend) -> str:
    assert server_backend.url is not None
    return server_backend.url


def fill(j: Journal, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        j.append(rec(seq))


@pytest.fixture
def no_timed_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_file, "DEFER_S", 3600.0)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_steady_appends_defer_their_caches_and_readers_scan_past_the_index(
    root: Path, url: str
) -> None:
    with Journal(root, url, durability="fsync", lease_hold_ms=HOLD_MS) as j:
        fill(j, 1, 20)
        # Only the first append (after `begin`) wrote its caches at once.
        assert indexed(root) == 1
        assert hint(root) < file_size(root)
        # Reads see every event all the same: partly through the index, partly past it, and
        # wholly past it; here and in another journal.
        assert [r.sequence for r in j.read("s", "main", 1, 100)] == list(range(1, 21))
        with Journal(root, url) as other:
            assert [r.sequence for r in other.read("s", "main", 15, 3)] == [15, 16, 17]
            assert [r.sequence for r in other.read("s", "main", 1, 100)] == list(range(1, 21))
            assert other.head("s", "main") == 20
        # Lagging caches are a note at most, never an error.
        assert not verify_report(root, ["s"]).errors
    # Given back with the lease: complete and exact.
    assert indexed(root) == 20
    assert hint(root) == file_size(root)
    assert verify_report(root, ["s"]).findings == []


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_deferred_caches_are_written_every_defer_lines(root: Path, url: str) -> None:
    total = 1 + 2 * session_file.DEFER_LINES + 5
    with Journal(root, url, lease_hold_ms=HOLD_MS) as j:
        fill(j, 1, total)
        assert indexed(root) == 1 + 2 * session_file.DEFER_LINES
        assert hint(root) < file_size(root)
    assert indexed(root) == total and hint(root) == file_size(root)


@pytest.mark.timeout(60)
def test_deferred_caches_are_written_after_defer_s(
    root: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_file, "DEFER_S", 0.0)  # every append is already late
    with Journal(root, url, lease_hold_ms=HOLD_MS) as j:
        for seq in range(1, 11):
            j.append(rec(seq))
            assert indexed(root) == seq
            assert hint(root) == file_size(root)


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from journal import EventRecord, Journal
    from journal._storage import session_file
    session_file.DEFER_S = 3600.0
    root, url, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    j = Journal(root, url, lease_hold_ms=300)
    for seq in range(first, first + count):
        j.append(EventRecord.new("s", "main", seq, {"type": "UserMessage", "content": "k"}))
    os.kill(os.getpid(), signal.SIGKILL)  # the deferred caches die with the process
""")


def kill_writer_after(root: Path, url: str, first: int, count: int) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), url, str(first),
                           str(count)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-500:]


@pytest.mark.timeout(90)
def test_the_next_writer_catches_up_the_index_a_killed_writer_left_behind(
    root: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kill_writer_after(root, url, 1, 10)
    # Its lease (held 300 ms) expires first: a writer that had to wait for it would hold
    # no lease itself (the adaptive hold) and so defer nothing.
    time.sleep(0.5)
    kill_writer_after(root, url, 11, 30)
    assert indexed(root) < 40  # what the killed writers deferred is gone
    # The catch-up scans from the index's last entry, never the whole file.
    def whole_file_scan(*args: object) -> None:
        raise AssertionError("the lagging index was rebuilt from a full scan")

    monkeypatch.setattr(session_file.SessionStore, "_scan_branch_offsets", whole_file_scan)
    with Journal(root, url) as j:
        assert j.head("s", "main") == 40
        j.append(rec(41))
        assert [r.sequence for r in j.read("s", "main", 1, 100)] == list(range(1, 42))
    assert indexed(root) == 41
    assert verify_report(root, ["s"]).findings == []


@pytest.mark.timeout(90)
def test_redis_lost_after_a_writer_died_with_deferred_caches(
    server_backend: Backend, root: Path, url: str
) -> None:
    """The hint and the index lag together, so a rebuild takes the indexed prefix and
    recovers the lines past it: every head is exact."""
    kill_writer_after(root, url, 1, 25)
    server_backend.flush()
    with Journal(root, url) as j:
        assert j.head("s", "main") == 25
        got = j.read("s", "main", 1, 100)
        assert [r.sequence for r in got] == list(range(1, 26))
        j.append(rec(26))
    assert verify_report(root, ["s"]).findings == []


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_a_batch_on_the_fast_path_writes_the_deferred_entries_and_its_intent(
    root: Path, url: str
) -> None:
    with Journal(root, url, lease_hold_ms=HOLD_MS) as j:
        fill(j, 1, 5)
        assert indexed(root) == 1
        j.append_batch([rec(seq) for seq in range(6, 9)])
        # The batch's own write intent went first (all or nothing), and its index entries
        # after the deferred ones.
        assert indexed(root) == 8
        assert hint(root) == file_size(root)
    assert verify_report(root, ["s"]).findings == []


def test_a_forked_child_forgets_the_parents_deferred_caches(tmp_path: Path) -> None:
    store = session_file.SessionStore(tmp_path, "s")
    store._deferred["main"] = [0, [(0, 10, 0)]]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        os._exit(0 if not store._deferred else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._deferred  # the parent's are its own


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_the_periodic_revalidation_writes_the_deferred_caches_instead_of_dropping_them(
    root: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Journal(root, url, lease_hold_ms=HOLD_MS) as j:
        fill(j, 1, 10)
        assert indexed(root) == 1
        # The next append re-checks the files against their paths; the lease never broke,
        # so what was deferred is still right and is written, not left to a catch-up scan.
        monkeypatch.setattr(session_file, "REVALIDATE_S", 0.0)

        def catch_up(*args: object) -> None:
            raise AssertionError("the deferred entries were dropped and scanned for")

        monkeypatch.setattr(session_file.SessionStore, "_rows_after_index", catch_up)
        j.append(rec(11))
        assert indexed(root) == 11
        assert hint(root) == file_size(root)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_a_writer_that_idles_past_its_hold_still_writes_its_caches_on_close(
    root: Path, url: str
) -> None:
    """The lease lapsed while the writer idled: close takes it back (nobody wrote since)
    and writes what was deferred, so a clean shutdown leaves a complete index."""
    with Journal(root, url, lease_hold_ms=200) as j:
        fill(j, 1, 10)
        assert indexed(root) == 1
        time.sleep(0.4)  # past the hold: the lease is gone in Redis too
    assert indexed(root) == 10
    assert hint(root) == file_size(root)
    assert verify_report(root, ["s"]).findings == []


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_close_leaves_the_caches_alone_when_another_writer_wrote_since(
    root: Path, url: str
) -> None:
    with Journal(root, url, lease_hold_ms=200) as first:
        fill(first, 1, 10)
        time.sleep(0.4)
        with Journal(root, url, lease_hold_ms=200) as second:
            second.append(rec(11))  # catches the index up from the file, then writes its own
    assert indexed(root) == 11
    assert verify_report(root, ["s"]).findings == []
    with Journal(root, url) as j:
        assert [r.sequence for r in j.read("s", "main", 1, 100)] == list(range(1, 12))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_timed_flush")
def test_a_new_branch_written_by_the_same_writer_keeps_the_deferred_caches(
    root: Path, url: str
) -> None:
    """A new branch goes through `begin` (its head is not known locally), under the lease
    this writer kept: nobody wrote since, so what was deferred is written, not dropped."""
    with Journal(root, url, lease_hold_ms=HOLD_MS) as j:
        fill(j, 1, 5)
        assert indexed(root) == 1
        j.append(rec(1, branch="alt"))
        assert indexed(root) == 5
        assert indexed(root, "alt") == 1
    assert verify_report(root, ["s"]).findings == []
