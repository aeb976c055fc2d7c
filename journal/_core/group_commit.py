"""Per-session append queue, and group commit for ``durability="batch"``.

Concurrent appends to one session from the same process join a queue. One of them leads: it
takes the first queued request plus every request that continues it on the same branch,
appends them as one protocol round (one begin, one write, one fdatasync, one commit), and
hands each caller its slice. Every acknowledgement still follows the fdatasync, so the
guarantee is the one of ``fsync``; only the cost is shared.

The queue and the leader's loop (:func:`lead`, a protocol like the others) are pure and
shared by both journals; only waiting differs (a thread event or an asyncio future), and
that part lives in ``journal._io.journals``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from journal._core.append import append
from journal._core.ops import Steps
from journal._core.state import Core
from journal._model.records import EventRecord


@dataclass(eq=False, slots=True)
class Pending:
    records: list[EventRecord]
    data: bytes
    result: list[EventRecord] | None = None
    error: BaseException | None = None
    notify: Callable[[], None] = field(default=lambda: None)

    def outcome(self) -> list[EventRecord]:
        """The stored records, or the error of this request's round."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    @property
    def branch(self) -> str:
        return self.records[0].branch_id

    @property
    def first(self) -> int:
        return self.records[0].sequence

    @property
    def last(self) -> int:
        return self.records[-1].sequence


class GroupQueue:
    """The per-session queue. ``join`` says whether the caller must lead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Pending] = []
        self._leading = False

    def join(self, pending: Pending) -> bool:
        with self._lock:
            self._queue.append(pending)
            if self._leading:
                return False
            self._leading = True
            return True

    def next_round(self, merge: bool = True) -> list[Pending] | None:
        """The next chain of requests to append together, or None (leadership ends).
        Without ``merge`` a round is one request: appends of a session are still one at a
        time in this process, which the held lease relies on, but each has its own sync."""
        with self._lock:
            if not self._queue:
                self._leading = False
                return None
            if len(self._queue) == 1:
                return [self._queue.pop()]  # the common case (one writer): nothing to chain
            # Start at the lowest queued sequence of the oldest request's branch: callers
            # that raced to the queue out of order still chain.
            branch = self._queue[0].branch
            start = min((p for p in self._queue if p.branch == branch), key=lambda p: p.first)
            self._queue.remove(start)
            chain = [start]
            extended = merge
            while extended:
                extended = False
                for i, p in enumerate(self._queue):
                    if p.branch == chain[0].branch and p.first == chain[-1].last + 1:
                        chain.append(self._queue.pop(i))
                        extended = True
                        break
            return chain


def merge(chain: list[Pending]) -> tuple[list[EventRecord], bytes]:
    if len(chain) == 1:
        return chain[0].records, chain[0].data
    records = [r for p in chain for r in p.records]
    return records, b"".join(p.data for p in chain)


def settle(chain: list[Pending], stored: list[EventRecord]) -> None:
    """Hand each request its slice of a committed round."""
    i = 0
    for p in chain:
        p.result = stored[i : i + len(p.records)]
        i += len(p.records)


def lead(core: Core, queue: GroupQueue, merge_rounds: bool) -> Steps[None]:
    """The leader's loop: append round after round until the queue is empty, and wake each
    caller when its round is settled."""
    while (chain := queue.next_round(merge=merge_rounds)) is not None:
        try:
            settle(chain, (yield from append(core, *merge(chain))))
        except Exception as exc:
            if len(chain) == 1:
                chain[0].error = exc
            # Something in a merged chain failed: give every request its own round.
            for p in chain if len(chain) > 1 else []:
                try:
                    p.result = yield from append(core, p.records, p.data)
                except Exception as exc:
                    p.error = exc
        for p in chain:
            p.notify()
