"""Runs one lifecycle operation in a child process (for the kill-at-every-step tests).

Usage: lifecycle_worker.py ROOT URL OP SESSION [--default-leases], OP one of delete,
truncate:N (main branch), archive, append:N (one event at sequence N, which reopens an
archived session), head (which rebuilds a state Redis lost). ``JOURNAL_FAULTS`` picks the step
to die at (journal.testing.faults). Leases are short (600 ms) unless ``--default-leases``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journal import EventRecord, Journal
from journal.testing import faults


def main() -> None:
    root, url, op, session = sys.argv[1:5]
    faults.configure_from_env()
    leases = {} if "--default-leases" in sys.argv[5:] else {"rebuild_lease_ms": 600,
                                                             "lease_ms": 600}
    with Journal(root, url, **leases) as j:
        name, _, arg = op.partition(":")
        if name == "delete":
            j.delete(session)
        elif name == "truncate":
            j.truncate_before(session, "main", int(arg))
        elif name == "archive":
            j.archive(session)
        elif name == "head":
            j.head(session)
        elif name == "append":
            j.append(EventRecord.new(session, "main", int(arg),
                                     {"type": "UserMessage", "content": "after"}))


if __name__ == "__main__":
    main()
