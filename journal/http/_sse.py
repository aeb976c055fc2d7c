"""Server-Sent Event frames, and the loop that turns a subscription into them.

The subscription is iterated by one task that feeds a small bounded queue; the response
reads the queue. So nothing ever cancels the subscription's ``__anext__`` half way (a
timeout only ever cancels a ``queue.get``), a slow client backs the queue up into the
subscription, whose own bounded buffer then falls back to the file, and a disconnect ends
the one task and closes the subscription (and its Redis connection) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec

from journal import EventRecord

__all__ = ["event_frame", "frames", "retry_frame", "status_frame"]

_encode = msgspec.json.Encoder().encode
_DONE = object()


def event_frame(record: EventRecord, event_id: str) -> bytes:
    # Compact JSON never holds a raw newline, so the record is exactly one data line.
    head = b"id: " + event_id.encode() + b"\nevent: kernel.event\ndata: "
    return head + _encode(record) + b"\n\n"


def retry_frame(retry_ms: int) -> bytes:
    return f"retry: {retry_ms}\n\n".encode()


def status_frame(status: str, **fields: Any) -> bytes:
    data = json.dumps({"status": status, **fields}, separators=(",", ":"))
    return f"event: stream.status\ndata: {data}\n\n".encode()


class _Health:
    """Live or reconnecting, from the subscription's counters: a disconnect since the last
    look means reconnecting (each failed attempt counts one more), until a connect comes
    after it."""

    def __init__(self, subscription: Any) -> None:
        self._stats = getattr(subscription, "stats", None)
        self._disconnects = 0
        self._connects_then = 0
        self.down = False

    def status(self) -> str | None:
        stats = self._stats
        if stats is None or (stats.connects == 0 and stats.disconnects == 0):
            return None  # not listening yet: nothing to tell
        if stats.disconnects > self._disconnects:
            self._disconnects = stats.disconnects
            self._connects_then = stats.connects
            self.down = True
        elif self.down and stats.connects > self._connects_then:
            self.down = False
        return "reconnecting" if self.down else "live"


async def frames(
    subscription: AsyncIterator[EventRecord],
    event_id: Callable[[EventRecord], str],
    *,
    retry_ms: int,
    queue_size: int,
    status_every_s: float = 0.5,
    on_close: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """``retry:``, then one ``kernel.event`` frame per record, with ``stream.status``
    frames whenever the subscription loses or regains Redis."""
    queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)

    async def pump() -> None:
        try:
            async for record in subscription:
                await queue.put(record)
            await queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the response, which says so and ends
            await queue.put(exc)

    task = asyncio.create_task(pump())
    shown: str | None = None
    health = _Health(subscription)
    try:
        yield retry_frame(retry_ms)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=status_every_s)
            except TimeoutError:
                item = None
            status = health.status()
            if status is not None and status != shown:
                shown = status
                yield status_frame(status)
            if item is None:
                continue
            batch = [item]
            while not queue.empty() and len(batch) < 64:
                batch.append(queue.get_nowait())
            out: list[bytes] = []
            for entry in batch:
                if isinstance(entry, EventRecord):
                    out.append(event_frame(entry, event_id(entry)))
                    continue
                if out:
                    yield b"".join(out)
                if entry is _DONE:
                    return
                yield _error_frame(entry)
                return
            yield b"".join(out)
    finally:
        # The response is being torn down (disconnect, send timeout, shutdown): anyio
        # would cancel every await here again, so the cleanup runs shielded, bounded.
        with anyio.move_on_after(5, shield=True):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            aclose = getattr(subscription, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if on_close is not None:
            on_close()


def _error_frame(exc: BaseException) -> bytes:
    message = " ".join(str(exc).split()) or type(exc).__name__
    data = json.dumps({"error": message}, separators=(",", ":"))
    return f"event: stream.error\ndata: {data}\n\n".encode()
