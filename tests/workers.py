"""A writer process for the multi-process tests (run as a script, not imported by pytest).

It appends ``--count`` events to one (session, branch) the way an aiOS runtime does: read the
head, append at head + 1, and on a conflict read the head again. An append whose outcome is
unknown (lease lost, Redis gone) is retried with the *same* record until it resolves. Every
acknowledged event id is appended to ``--acks`` before the next append.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journal import (
    AppendOutcomeUnknown,
    EventRecord,
    Journal,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
)
from journal.testing import faults


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--branch", default="main")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--acks", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--lease-ms", type=int, default=500)
    ap.add_argument("--durability", default="fsync")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    ap.add_argument("--stats", help="write JSON counters here at exit (tail recoveries)")
    a = ap.parse_args()
    stats = _count_recoveries() if a.stats else {}
    acks = os.open(a.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    j = Journal(a.root, a.url, lease_ms=a.lease_ms, durability=a.durability,
                socket_timeout_s=2.0, lease_wait_s=60)
    while True:  # the test may be restarting Redis right now
        try:
            j.open()
            break
        except RedisUnavailable:
            time.sleep(0.05)
    done = 0
    i = 0
    stop_at = time.monotonic() + a.duration if a.duration else float("inf")
    while done < a.count and time.monotonic() < stop_at:
        try:
            head = j.head(a.session, a.branch)
        except RedisUnavailable:
            time.sleep(0.05)
            continue
        n = min(a.batch, a.count - done)
        batch = [
            EventRecord.new(a.session, a.branch, head + 1 + k,
                            {"type": "UserMessage", "content": f"{a.name}-{i + k}"})
            for k in range(n)
        ]
        while True:  # resolve this batch: committed, or definitely not
            try:
                j.append_batch(batch)
            except SequenceConflict:
                break
            except (AppendOutcomeUnknown, RedisUnavailable, LeaseTimeout):
                time.sleep(0.02)
                continue
            os.write(acks, b"".join(r.event_id.encode() + b"\n" for r in batch))
            done += n
            i += n
            break
    j.close()
    if a.stats:
        Path(a.stats).write_text(json.dumps(stats))


def _count_recoveries() -> dict[str, int]:
    """Count the tail recoveries that rolled lines forward: lines on disk that Redis did not
    know as committed (a dead writer's tail, or a head that went stale in Redis)."""
    from journal._storage.session_file import SessionStore

    stats = {"recoveries": 0, "rolled_forward": 0}
    original = SessionStore.scan_tail

    def counted(self: SessionStore, *args: object, **kwargs: object) -> object:
        found = original(self, *args, **kwargs)  # type: ignore[arg-type]
        if found.kept:
            stats["recoveries"] += 1
            stats["rolled_forward"] += len(found.kept)
        return found

    SessionStore.scan_tail = counted  # type: ignore[assignment,method-assign]
    return stats


if __name__ == "__main__":
    faults.configure_from_env()
    main()
