"""Subscriptions as objects with a life cycle (issue 15, items 4 to 6): closing from any
thread or task at any moment, waits cut short, idle timeouts, and listening from the
moment the call returns. Every test runs against a private redis-server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journal import (
    AsyncJournal,
    AsyncSubscription,
    EventRecord,
    Journal,
    SubscriptionIdle,
    SyncSubscription,
)
from journal.testing import RedisServer

pytestmark = pytest.mark.timeout(60)

# Long waits on the socket: a close that only took effect at the next wake-up would show.
SLOW: dict[str, Any] = {"idle_s": 10.0, "health_timeout_s": 20.0}


def ev(seq: int, session: str = "s1") -> EventRecord:
    return EventRecord.new(session, "main", seq, {"type": "UserMessage", "content": f"m{seq}"})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(dir=tmp_path / "redis") as server:
        yield server


def test_close_from_another_thread_wakes_a_blocked_next(
    tmp_path: Path, server: RedisServer
) -> None:
    with Journal(tmp_path, server.url) as j:
        j.append(ev(1))
        sub = j.subscribe("s1", after_sequence=1, **SLOW)
        assert isinstance(sub, SyncSubscription)
        outcome: list[Any] = []

        def consume() -> None:
            try:
                outcome.append(next(sub, "ended"))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.5)  # blocked in next(), waiting on the socket
        assert thread.is_alive()
        started = time.monotonic()
        sub.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert time.monotonic() - started < 1.0
        assert outcome == ["ended"]
        assert sub.closed and next(sub, "ended") == "ended"
        sub.close()  # idempotent


def test_sync_idle_timeout_raises_and_keeps_the_subscription(
    tmp_path: Path, server: RedisServer
) -> None:
    with Journal(tmp_path, server.url) as j, j.subscribe(
        "s1", idle_timeout_s=0.3, idle_s=0.1
    ) as sub:
        started = time.monotonic()
        with pytest.raises(SubscriptionIdle):
            next(sub)
        assert 0.25 < time.monotonic() - started < 3
        j.append(ev(1))
        assert next(sub).sequence == 1


def test_subscribe_all_listens_from_the_moment_the_call_returns(
    tmp_path: Path, server: RedisServer
) -> None:
    with Journal(tmp_path, server.url) as j, Journal(tmp_path, server.url) as writer:
        with j.subscribe_all(idle_timeout_s=10) as sub:
            writer.append(ev(1, "fresh"))  # between the call and the first next()
            got = next(sub)
        assert (got.session_id, got.sequence) == ("fresh", 1)


async def test_subscribe_all_async_listens_once_ready(
    tmp_path: Path, server: RedisServer
) -> None:
    async with AsyncJournal(tmp_path, server.url) as j:
        async with j.subscribe_all(idle_timeout_s=10) as sub:  # entering waits for Redis
            await j.append(ev(1, "fresh"))
            got = await anext(sub)
        assert (got.session_id, got.sequence) == ("fresh", 1)
        sub2 = await j.subscribe_all().ready()
        await j.append(ev(1, "other"))
        assert (await anext(sub2)).session_id == "other"
        await sub2.aclose()


async def test_a_timed_out_wait_leaves_the_subscription_usable(
    tmp_path: Path, server: RedisServer
) -> None:
    async with AsyncJournal(tmp_path, server.url) as j:
        sub = j.subscribe("s1", idle_s=0.2)
        assert isinstance(sub, AsyncSubscription)
        got: list[int] = []
        for seq in range(1, 6):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(sub), 0.3)
            await j.append(ev(seq))
            if seq % 2:
                # Cut short anywhere: while the event is on its way, or read but not handed
                # out (then it must come with the next call, not be lost).
                try:
                    got.append((await asyncio.wait_for(anext(sub), 0.0001)).sequence)
                    continue
                except TimeoutError:
                    pass
            got.append((await asyncio.wait_for(anext(sub), 10)).sequence)
        assert got == [1, 2, 3, 4, 5]
        await sub.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(sub)


async def test_cancel_then_aclose_is_clean(tmp_path: Path, server: RedisServer) -> None:
    async with AsyncJournal(tmp_path, server.url) as j:
        sub = j.subscribe("s1", **SLOW)

        async def consume() -> None:
            async for _record in sub:
                raise AssertionError("nothing was appended")

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sub.aclose()
        await sub.aclose()  # idempotent


async def test_aclose_from_another_task_ends_a_waiting_anext(
    tmp_path: Path, server: RedisServer
) -> None:
    async with AsyncJournal(tmp_path, server.url) as j:
        sub = j.subscribe("s1", **SLOW)
        waiting = asyncio.create_task(anext(sub, "ended"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await sub.aclose()
        assert await asyncio.wait_for(waiting, 1.0) == "ended"
        assert time.monotonic() - started < 1.0


async def test_async_idle_timeout(tmp_path: Path, server: RedisServer) -> None:
    async with AsyncJournal(tmp_path, server.url) as j:
        sub = j.subscribe("s1", idle_timeout_s=0.3, idle_s=0.1)
        async with sub:
            with pytest.raises(SubscriptionIdle):
                await anext(sub)
            await j.append(ev(1))
            assert (await anext(sub)).sequence == 1
