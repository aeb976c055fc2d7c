"""Subscribers and worker groups on a session that is deleted or truncated while they follow
it (issue 14): a clear end for that session, and the rest goes on.

- the firehose (``subscribe_all``) ends a deleted session's streams and keeps delivering the
  other sessions; a stream below a truncation point goes on from the point, counted;
- a single-session subscription ends with ``SessionDeleted`` (tests/test_lifecycle.py);
- a worker group stops delivering a deleted session and gives its claim back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from journal import EventRecord, Journal
from journal._groups.keys import session_group_keys

from .conftest import Backend

pytestmark = pytest.mark.timeout(60)

FAST: dict[str, Any] = dict(claim_ms=1000, scan_s=0.1, poll_s=0.02, flush_s=0.05,
                            max_idle_s=1.5, backoff_s=0.01)


def ev(session: str, seq: int, branch: str = "main") -> EventRecord:
    return EventRecord.new(session, branch, seq, {"type": "UserMessage", "content": f"m{seq}"})


def fill(j: Journal, session: str, first: int, last: int) -> None:
    j.append_batch([ev(session, q) for q in range(first, last + 1)])


def test_the_firehose_ends_a_deleted_session_and_goes_on(real_backend: Backend) -> None:
    j = real_backend.journal()
    sub = j.subscribe_all(from_start=True, idle_s=0.2).ready()
    fill(j, "a", 1, 3)
    fill(j, "b", 1, 3)
    got: list[tuple[str, int]] = []
    while len(got) < 6:
        r = next(sub)
        got.append((r.session_id, r.sequence))
    j.delete("a")
    fill(j, "b", 4, 5)
    while len(got) < 8:  # without the fix, SessionDeleted ended the whole firehose here
        r = next(sub)
        got.append((r.session_id, r.sequence))
    assert sorted(got) == [("a", 1), ("a", 2), ("a", 3)] + [("b", q) for q in range(1, 6)]
    deadline = time.monotonic() + 10
    while sub.stats.sessions_ended == 0 and time.monotonic() < deadline:
        fill(j, "b", j.head("b") + 1, j.head("b") + 1)
        r = next(sub)
        assert r.session_id == "b"
    assert sub.stats.sessions_ended == 1  # the head check of "a" said deleted: it ended
    sub.close()
    j.close()


def test_a_firehose_from_the_start_goes_on_from_a_truncation_point(
    real_backend: Backend,
) -> None:
    j = real_backend.journal()
    fill(j, "t", 1, 10)
    j.truncate_before("t", "main", 6)
    sub = j.subscribe_all(from_start=True, idle_s=0.2).ready()
    fill(j, "t", 11, 11)  # heard of live: from_start replays the branch from 1
    fill(j, "u", 1, 2)
    got: list[tuple[str, int]] = []
    while len(got) < 8:
        r = next(sub)
        got.append((r.session_id, r.sequence))
    assert sorted(got) == [("t", q) for q in range(6, 12)] + [("u", 1), ("u", 2)]
    assert sub.stats.truncated_skips == 1  # counted (and logged), never silent
    sub.close()
    j.close()


def test_a_worker_group_stops_delivering_a_deleted_session_and_drops_its_claim(
    real_backend: Backend,
) -> None:
    j = real_backend.journal()
    fill(j, "d", 1, 10)
    fill(j, "k", 1, 10)
    other = real_backend.journal()
    seen: list[tuple[str, int]] = []
    deleted = threading.Event()
    with j.consume("g", worker="w1", **FAST) as ds:
        for d in ds:
            seen.append((d.event.session_id, d.event.sequence))
            assert d.ack()
            if d.event.session_id == "d" and d.event.sequence == 3 and not deleted.is_set():
                other.delete("d")  # while the worker holds its claim, mid-stream
                deleted.set()
        stats = ds.stats
    assert deleted.is_set()
    after = seen[seen.index(("d", 3)) + 1:]
    assert all(s != "d" for s, _ in after), after  # nothing of "d" after the delete
    assert [q for s, q in seen if s == "k"] == list(range(1, 11))  # the other goes on
    assert stats["deleted"] >= 1, stats
    claim = session_group_keys("journal", "g", "d").claim
    assert real_backend.sync_client().get(claim) is None  # the claim was given back
    other.close()
    j.close()
