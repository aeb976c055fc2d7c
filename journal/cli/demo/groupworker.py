"""The demo's worker-group process: ``python -m journal.cli.demo.groupworker SPEC NAME``.

One worker of the demo's group: it handles every delivery (a no-op that logs the event, its
attempt and fence to ``<work>/group-NAME.jsonl``) until the demo stops it with SIGTERM, which
leaves the group cleanly (commits, writes the checkpoints down, gives the claims back).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from journal._io.journals import Journal
from journal.errors import JournalError

# Short timings: the demo runs for a few seconds.
OPTIONS: dict[str, Any] = {"claim_ms": 2000, "scan_s": 0.2, "poll_s": 0.05, "flush_s": 0.5}


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def groupworker_main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m journal.cli.demo.groupworker SPEC.json NAME", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    name = argv[1]
    signal.signal(signal.SIGTERM, _stop)
    log = os.open(Path(spec["work"]) / f"group-{name}.jsonl",
                  os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with Journal(spec["root"], os.environ.get("JOURNAL_REDIS_URL") or None) as j, \
                j.consume(spec["group"], worker=name, **OPTIONS) as deliveries:
            Path(spec["work"], f"group-{name}.ready").write_text("ready\n")
            for d in deliveries:
                e = d.event
                line = {"e": e.event_id, "s": e.session_id, "b": e.branch_id, "q": e.sequence,
                        "a": d.attempt, "f": d.fence}
                os.write(log, json.dumps(line).encode() + b"\n")
                d.ack()
    except JournalError as exc:
        print(f"group worker {name}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(log)
    return 0


if __name__ == "__main__":
    sys.exit(groupworker_main(sys.argv[1:]))
