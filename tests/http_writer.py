"""A writer process for the HTTP tests: appends events to one session with the aiOS loop
(read the head, append head + 1, retry on conflicts), riding out Redis outages, and logs
``sequence wall-time-when-acknowledged`` per event to an ack file.

    python tests/http_writer.py --root R --url U --session S --count N [--pause S] --acks F
"""

from __future__ import annotations

import argparse
import time

from journal import (
    AppendOutcomeUnknown,
    EventRecord,
    Journal,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--acks", required=True)
    p.add_argument("--name", default="w")
    p.add_argument("--pad", type=int, default=0, help="bytes of padding per event")
    a = p.parse_args()
    with Journal(a.root, a.url, lease_ms=2000) as j, open(a.acks, "a", buffering=1) as acks:
        done = 0
        record: EventRecord | None = None
        while done < a.count:
            try:
                if record is None:
                    seq = j.head(a.session) + 1
                    kind = {"type": "Message", "role": "assistant",
                            "content": f"{a.name} #{done} " + "x" * a.pad}
                    record = EventRecord.new(a.session, "main", seq, kind)
                stored = j.append(record)
            except SequenceConflict:
                record = None  # someone else took that sequence: read the head again
                continue
            except (RedisUnavailable, AppendOutcomeUnknown, LeaseTimeout):
                time.sleep(0.05)  # same record again: an unknown outcome resolves itself
                continue
            acks.write(f"{stored.sequence} {time.time():.6f}\n")
            record = None
            done += 1
            if a.pause:
                time.sleep(a.pause)


if __name__ == "__main__":
    main()
