"""The demo's subscriber process: ``python -m journal.cli.demo.subscriber SPEC.json``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from journal._io.journals import AsyncJournal
from journal.cli.demo.fleet import BRANCHES
from journal.cli.demo.progress import Progress
from journal.errors import (
    JournalError,
)


async def _subscriber(spec: dict[str, Any]) -> int:
    url = os.environ.get("JOURNAL_REDIS_URL") or None
    journal = AsyncJournal(spec["root"], url)
    await journal.open()
    progress = Progress(sys.stdout, sys.stdout.isatty())
    seen: list[tuple[str, str, str, int, float]] = []
    last: dict[tuple[str, str], int] = {}

    async def follow(session: str, branch: str) -> None:
        async for record in journal.subscribe(session, branch, after_sequence=0):
            seen.append((record.event_id, session, branch, record.sequence, time.time()))
            last[(session, branch)] = record.sequence
            progress.event(record)

    tasks = [
        asyncio.create_task(follow(session, branch), name=f"{session}/{branch}")
        for session in spec["sessions"]
        for branch in BRANCHES
    ]
    # Let every subscription reach its listening state before the workers are let go.
    await asyncio.sleep(0.2)
    Path(spec["ready"]).write_text("ready\n")
    expect: dict[tuple[str, str], int] | None = None
    give_up = time.monotonic() + spec["timeout"]
    status = 0
    try:
        while True:
            await asyncio.sleep(0.05)
            progress.tick()
            failed = [t for t in tasks if t.done()]
            if failed:
                exc = failed[0].exception()
                print(f"subscriber: {failed[0].get_name()} ended: {exc!r}", file=sys.stderr)
                status = 1
                break
            if expect is None and os.path.exists(spec["expect"]):
                raw = json.loads(Path(spec["expect"]).read_text())
                expect = {(s, b): h for s, heads in raw.items() for b, h in heads.items()}
                give_up = min(give_up, time.monotonic() + spec["grace"])
            if expect is not None and all(last.get(k, 0) >= h for k, h in expect.items()):
                break
            if time.monotonic() >= give_up:
                print("subscriber: gave up waiting for the rest of the feed", file=sys.stderr)
                status = 1
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await journal.close()
        progress.finish()
        with open(spec["seen"], "w", encoding="utf-8") as out:
            for event_id, session, branch, sequence, at in seen:
                out.write(json.dumps({"event_id": event_id, "session_id": session,
                                      "branch_id": branch, "sequence": sequence,
                                      "seen_at": at}) + "\n")
    return status


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def subscriber_main(argv: list[str]) -> int:
    """``python -m journal.cli.demo.subscriber SPEC``: the demo's live subscriber process."""
    if len(argv) != 1:
        print("usage: python -m journal.cli.demo.subscriber SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(_subscriber(spec))
    except KeyboardInterrupt:
        return 130
    except JournalError as exc:
        print(f"subscriber: error: {exc}", file=sys.stderr)
        return 1




if __name__ == "__main__":
    sys.exit(subscriber_main(sys.argv[1:]))
