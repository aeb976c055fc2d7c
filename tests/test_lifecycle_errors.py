"""A life-cycle operation that fails (a full disk) gives the session's lease back at once,
and a retry finishes it (issue 14). Found by scripts/chaos.py: a delete whose tombstone
write met ENOSPC kept the lease for rebuild_lease_ms (120 s), and every writer of the
session waited that long; a lifecycle waiter that gave up kept its place in line as long.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from journal import EventRecord, SessionDeleted
from journal._storage import compaction, tombstone

from .conftest import Backend

pytestmark = pytest.mark.timeout(60)


def ev(seq: int) -> EventRecord:
    return EventRecord.new("s1", "main", seq, {"type": "UserMessage", "content": f"m{seq}"})


def full_disk_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    real = getattr(module, name)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_a_delete_that_meets_a_full_disk_gives_the_lease_back(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = real_backend.journal()
    j.append(ev(1))
    full_disk_once(monkeypatch, tombstone, "save")
    with pytest.raises(OSError, match="No space left"):
        j.delete("s1")
    # The lease is free: a writer (that would give up after 5 s) appends at once.
    writer = real_backend.journal(lease_wait_s=5)
    writer.append(ev(2))
    j.delete("s1")  # the retry finishes it
    with pytest.raises(SessionDeleted):
        writer.head("s1")
    writer.close()
    j.close()


def test_a_truncate_that_meets_a_full_disk_gives_the_lease_back(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = real_backend.journal()
    j.append_batch([ev(q) for q in range(1, 6)])
    full_disk_once(monkeypatch, compaction, "prepare")
    with pytest.raises(OSError, match="No space left"):
        j.truncate_before("s1", "main", 3)
    writer = real_backend.journal(lease_wait_s=5)
    writer.append(ev(6))
    assert [r.sequence for r in writer.read("s1", "main", 1, 10)] == [1, 2, 3, 4, 5, 6]
    assert j.truncate_before("s1", "main", 3) == 3  # the retry finishes it
    assert [r.sequence for r in writer.read("s1", "main", 3, 10)] == [3, 4, 5, 6]
    writer.close()
    j.close()
