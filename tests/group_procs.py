"""Writer and worker processes for the worker-group tests (run as scripts, not imported by
pytest).

``writer``: appends ``--count`` events to each of its sessions (branches ``main`` and, for
every third session, ``alt``), round-robin, retrying an unknown outcome with the same record;
one event can be made poison (content ``POISON``).

``worker``: joins ``--group`` and handles deliveries; every handler logs a ``start`` line, a
``done`` line when its work is done and an ``end`` line with whether the ack was accepted
(with the fence) to ``--log``; a SIGKILL between ``done`` and ``end`` leaves the ack's
outcome unknown. A ``POISON``
event always fails (nack). When ``--freeze`` exists the handler deletes it and stops its own
process (SIGSTOP) *inside* the handler: the test continues it after its claim expired.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


def _open(a: argparse.Namespace) -> Journal:
    j = Journal(a.root, a.url, lease_ms=1000, socket_timeout_s=2.0, lease_wait_s=60)
    while True:
        try:
            return j.open()
        except RedisUnavailable:
            time.sleep(0.05)


def writer(a: argparse.Namespace) -> None:
    j = _open(a)
    sessions = a.sessions.split(",")
    streams = [(s, "main") for s in sessions] + [(s, "alt") for s in sessions[::3]]
    for i in range(1, a.count + 1):
        for sid, branch in streams:
            content = "POISON" if f"{sid}/{branch}#{i}" == a.poison else f"e{i}"
            rec = EventRecord.new(sid, branch, i, {"type": "UserMessage", "content": content})
            while True:
                try:
                    j.append(rec)
                    break
                except SequenceConflict:
                    break  # an earlier unknown outcome did commit it
                except (AppendOutcomeUnknown, RedisUnavailable, LeaseTimeout):
                    time.sleep(0.05)
        time.sleep(a.pause)
    j.close()


def worker(a: argparse.Namespace) -> None:
    log = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(**fields: object) -> None:
        os.write(log, json.dumps({"w": a.name, "t": time.time(), **fields}).encode() + b"\n")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    j = _open(a)
    freeze = Path(a.freeze) if a.freeze else None
    opts = dict(claim_ms=a.claim_ms, scan_s=0.3, poll_s=0.05, flush_s=0.2, max_attempts=3,
                backoff_s=0.05)
    with j.consume(a.group, worker=a.name, **opts) as deliveries:  # type: ignore[arg-type]
        for d in deliveries:
            e = d.event
            pos = {"s": e.session_id, "b": e.branch_id, "q": e.sequence, "f": d.fence,
                   "a": d.attempt}
            note(op="start", **pos)
            if freeze is not None and freeze.exists():
                freeze.unlink()
                os.kill(os.getpid(), signal.SIGSTOP)  # a zombie: paused inside its handler
            time.sleep(a.work_s)
            poison = e.kind.get("content") == "POISON"
            note(op="done", nack=poison, **pos)  # the effect happened; the ack comes next
            ok = d.nack(error="poison content") if poison else d.ack()
            note(op="end", ok=ok, nack=poison, **pos)
    j.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["writer", "worker"])
    ap.add_argument("--root", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--sessions", default="")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--pause", type=float, default=0.01)
    ap.add_argument("--poison", default="")
    ap.add_argument("--group", default="g")
    ap.add_argument("--name", default="w")
    ap.add_argument("--log", default="")
    ap.add_argument("--claim-ms", type=int, default=1500)
    ap.add_argument("--work-s", type=float, default=0.002)
    ap.add_argument("--freeze", default="")
    a = ap.parse_args()
    writer(a) if a.role == "writer" else worker(a)


if __name__ == "__main__":
    main()
