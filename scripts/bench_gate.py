#!/usr/bin/env python3
"""What honouring the life marks costs a read (issue 14): ``gate.read`` against the plain
``SessionStore.read``, side by side in one run, on one file (no Redis: the file-level step
that every read runs in its blocking operation).

    .venv/bin/python scripts/bench_gate.py [--events 1000] [--rounds 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journal._model.records import EventRecord, encode_line
from journal._storage import gate
from journal._storage.session_file import SessionStore, line_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SessionStore(Path(tmp), "s")
        data = b"".join(encode_line(EventRecord.new("s", "main", i, {"type": "UserMessage",
                                                                    "content": "x" * 100}))
                        for i in range(1, a.events + 1))
        store.append(data, sync=False, committed=0)
        store.index_append("main", 0, line_rows(data, 0), 0)
        results: dict[str, float] = {}
        for _pass in range(5):  # alternating passes, best of each: the machine is shared
            for name, fn in (("plain", store.read), ("gate", lambda *x: gate.read(store, *x))):
                start = time.perf_counter()
                for i in range(a.rounds):
                    seq = 1 + i % a.events
                    fn("main", seq, seq, len(data))
                took = (time.perf_counter() - start) / a.rounds * 1e6
                results[name] = min(results.get(name, took), took)
        print(f"read of one event: plain {results['plain']:.1f} us, with the life gate "
              f"{results['gate']:.1f} us ({results['gate'] / results['plain']:.2f}x, "
              f"+{results['gate'] - results['plain']:.1f} us)")


if __name__ == "__main__":
    main()
