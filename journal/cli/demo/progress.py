"""The demo's live feed line: one updating line on a terminal, periodic lines otherwise."""

from __future__ import annotations

import collections
import shutil
import time
from typing import TextIO

from journal._model.records import EventRecord

# ----- the subscriber process ----------------------------------------------------------------


class Progress:
    """The live display: one updating line on a terminal (``\\r``), periodic lines otherwise.
    Session and branch openings are printed as lines of their own as they happen."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.count = 0
        self.started = time.monotonic()
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.last = ""
        self.drawn = 0.0
        self.printed = -1
        self.streams: set[tuple[str, str]] = set()

    def event(self, record: EventRecord) -> None:
        self.count += 1
        self.streams.add((record.session_id, record.branch_id))
        self.last = f"{record.session_id}/{record.branch_id}#{record.sequence} {record.kind_type}"
        kind = record.kind
        who = record.actor.component or record.actor.type
        if record.kind_type == "SessionCreated":
            self.line(f"  + {record.session_id}: SessionCreated by {who}")
        elif record.kind_type == "BranchCreated":
            self.line(f"  + {record.session_id}: BranchCreated {kind.get('new_branch_id')} "
                      f"at main#{kind.get('fork_point_seq')} by {who}")

    def rate(self) -> float:
        now = time.monotonic()
        self.window.append((now, self.count))
        # Keep the newest sample that is at least a second old: the rate of the last second
        # whether we are asked every 0.1 s (terminal) or every second (log).
        while len(self.window) > 2 and now - self.window[1][0] >= 1.0:
            self.window.popleft()
        span = now - self.window[0][0]
        return (self.count - self.window[0][1]) / span if span > 0.05 else 0.0

    def text(self) -> str:
        return (f"  feed: {self.count:>6} events  {self.rate():>6.0f}/s  "
                f"{len(self.streams)} branches  last {self.last or '-'}")

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
            self.drawn = 0.0  # redraw the progress line below it
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def tick(self) -> None:
        now = time.monotonic()
        if self.tty and now - self.drawn >= 0.1:
            width = shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\r\x1b[K" + self.text()[: width - 1])
            self.stream.flush()
            self.drawn = now
        elif not self.tty and now - self.drawn >= 1.0 and self.count != self.printed:
            # A log gets a line a second, and only when something happened.
            self.printed = self.count
            self.stream.write(self.text() + "\n")
            self.stream.flush()
            self.drawn = now

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        text = f"  feed: {self.count} events in {elapsed:.1f} s, last {self.last or '-'}"
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


