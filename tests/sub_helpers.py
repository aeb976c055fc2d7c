"""Helper processes for the multi-process subscription tests (run as a script, not imported
by pytest): ``write`` appends events to a session while other writers compete for it, and
``subscribe`` follows a session and reports what it got as JSON; ``firehose`` does the same
with ``subscribe_all`` over a session prefix until it has ``--total`` events.

    python tests/sub_helpers.py write --root R --url U --session s --count N --tag w1
    python tests/sub_helpers.py subscribe --root R --url U --session s --until N --out F
    python tests/sub_helpers.py firehose --root R --url U --session PREFIX --total N --out F

Both run until their work is done and then exit; the tests still kill and reap them in a
``finally`` in case something hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journal import AsyncJournal, EventRecord, Journal, JournalError, SequenceConflict
from journal._io.subscriptions import AsyncSubscription, SyncSubscription


def write(args: argparse.Namespace) -> None:
    """Append ``count`` events at the head of the branch, competing with other writers.

    A conflict means another writer took that sequence: read the head and try the next one.
    Any other journal error (Redis restarting, an unknown outcome) is retried with the very
    same record: the journal resolves such a retry idempotently by ``event_id``.
    """
    pad = "x" * args.size
    with Journal(args.root, args.url, durability=args.durability) as j:
        record: EventRecord | None = None
        done = 0
        while done < args.count:
            try:
                if record is None:
                    seq = j.head(args.session, args.branch) + 1
                    record = EventRecord.new(
                        args.session, args.branch, seq,
                        {"type": "UserMessage", "content": f"{args.tag}:{done}:{pad}"},
                    )
                j.append(record)
                done += 1
                record = None
                if args.pace:
                    time.sleep(args.pace)
            except SequenceConflict:
                record = None
            except JournalError:
                time.sleep(0.02)


def subscribe(args: argparse.Namespace) -> None:
    """Follow the session until sequence ``until`` arrives; write what came as JSON."""
    options: dict[str, Any] = {"idle_s": args.idle, "buffer_size": args.buffer_size}
    seqs: list[int] = []
    ids: list[str] = []

    def take(record: EventRecord) -> bool:
        seqs.append(record.sequence)
        ids.append(record.event_id)
        if len(seqs) == args.stall_after:
            print("stalling", flush=True)
            time.sleep(args.stall)
        elif args.sleep:
            time.sleep(args.sleep)
        return bool(record.sequence >= args.until)

    stats = _follow(args, lambda j: j.subscribe(args.session, args.branch, args.after,
                                                **options), take)
    maxrss_kb = _peak_rss_kb()
    Path(args.out).write_text(json.dumps(
        {"seqs": seqs, "ids": ids, "stats": stats, "maxrss_kb": maxrss_kb}
    ))


def _follow(args: argparse.Namespace, open_sub: Callable[[Any], Any],
            take: Callable[[EventRecord], bool]) -> dict[str, Any]:
    """Open ``open_sub(journal)`` with the asyncio (``--async``) or the blocking journal,
    print "started" once it listens, feed ``take`` until it says stop; its stats."""
    if args.use_async:
        async def run() -> dict[str, Any]:
            async with AsyncJournal(args.root, args.url) as j:
                sub = cast(AsyncSubscription, open_sub(j))
                async with sub:
                    print("started", flush=True)
                    async for record in sub:
                        if take(record):
                            break
                    return asdict(sub.stats)

        return asyncio.run(run())
    with Journal(args.root, args.url) as j:
        sync_sub = cast(SyncSubscription, open_sub(j))
        with sync_sub:
            print("started", flush=True)
            for record in sync_sub:
                if take(record):
                    break
        return asdict(sync_sub.stats)


def firehose(args: argparse.Namespace) -> None:
    """``subscribe_all(prefix)`` until ``total`` events; write them as JSON, per
    "session/branch", in the order they came. Prints "started" once it listens."""
    options: dict[str, Any] = {"idle_s": args.idle, "discover_s": args.discover}
    got: dict[str, list[list[Any]]] = {}

    def take(record: EventRecord) -> bool:
        got.setdefault(f"{record.session_id}/{record.branch_id}", []).append(
            [record.sequence, record.event_id])
        return sum(map(len, got.values())) >= args.total

    stats = _follow(args, lambda j: j.subscribe_all(args.session, **options), take)
    Path(args.out).write_text(json.dumps({"got": got, "stats": stats}))


def _peak_rss_kb() -> int:
    """This process's peak RSS. Not ``getrusage().ru_maxrss``: Linux carries that across
    exec, so a child forked from a large pytest process would report the parent's size.
    ``VmHWM`` belongs to the address space that exec replaced."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", required=True)
    common.add_argument("--url", required=True)
    common.add_argument("--session", required=True)
    common.add_argument("--branch", default="main")
    w = sub.add_parser("write", parents=[common])
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--tag", default="w")
    w.add_argument("--size", type=int, default=0)
    w.add_argument("--pace", type=float, default=0.0)
    w.add_argument("--durability", default="fsync")
    s = sub.add_parser("subscribe", parents=[common])
    s.add_argument("--until", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--after", type=int, default=0)
    s.add_argument("--idle", type=float, default=0.2)
    s.add_argument("--buffer-size", type=int, default=1000)
    s.add_argument("--sleep", type=float, default=0.0)
    s.add_argument("--stall-after", type=int, default=0)
    s.add_argument("--stall", type=float, default=0.0)
    s.add_argument("--async", dest="use_async", action="store_true")
    f = sub.add_parser("firehose", parents=[common])
    f.add_argument("--total", type=int, required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--idle", type=float, default=0.2)
    f.add_argument("--discover", type=float, default=0.3)
    f.add_argument("--async", dest="use_async", action="store_true")
    args = parser.parse_args()
    {"write": write, "subscribe": subscribe, "firehose": firehose}[args.cmd](args)


if __name__ == "__main__":
    main()
