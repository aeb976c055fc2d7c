"""The subscription contract: what every backend must do for live subscriptions (run by
the ``TestSubscriptions*`` classes of tests/test_subscription.py, one per backend). Each
test names its API (``_sync`` / ``_async``), so the classes are per backend only.

A cluster publishes sharded only, so the "lost messages" test (which loses every message by
publishing on the other kind) skips there. The firehose tests run everywhere: on a cluster
(sharded pub/sub, no patterns) the firehose discovers the sessions from the root's files.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from journal import AsyncJournal, EventRecord, InvalidId, InvalidInput, Journal
from journal._io.subscriptions import AsyncSubscription, SyncSubscription
from tests.contract import Contract

FAST: dict[str, Any] = {"idle_s": 0.2, "health_timeout_s": 2.0}


def ev(seq: int, session: str = "s1", branch: str = "main", size: int = 0) -> EventRecord:
    return EventRecord.new(
        session, branch, seq, {"type": "UserMessage", "content": f"m{seq}" + "x" * size}
    )


def sync_sub(journal: Journal, *args: Any, **options: Any) -> SyncSubscription:
    return cast(SyncSubscription, journal.subscribe(*args, **{**FAST, **options}))


def async_sub(journal: AsyncJournal, *args: Any, **options: Any) -> AsyncSubscription:
    return cast(AsyncSubscription, journal.subscribe(*args, **{**FAST, **options}))


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ids_of(records: list[EventRecord]) -> list[str]:
    return [r.event_id for r in records]


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


class SubscriptionContract(Contract):
    """Replay then live, exactly once and in order, on one backend."""

    def needs_plain_pubsub(self) -> None:
        if self.backend.sharded_only:
            pytest.skip(f"{self.backend.name} publishes sharded only: no way to lose a "
                        "message by publishing on the other kind")

    @pytest.mark.timeout(30)
    def test_replay_then_live_sync(self) -> None:
        j, writer = self.backend.journal(), self.backend.journal()
        for i in range(1, 6):
            j.append(ev(i))
        j.append(ev(1, branch="other"))

        def write_more() -> None:
            for i in range(6, 41):
                writer.append(ev(i))
                writer.append(ev(i - 4, branch="other"))  # another branch: never ours

        thread = threading.Thread(target=write_more)
        got: list[EventRecord] = []
        with sync_sub(j, "s1", "main", 0) as sub:
            for record in sub:
                got.append(record)
                if record.sequence == 5:
                    thread.start()  # we are listening and have replayed: the rest is live
                if record.sequence == 40:
                    break
        thread.join(timeout=20)
        assert [r.sequence for r in got] == list(range(1, 41))
        assert ids_of(got) == ids_of(j.read("s1", "main", 1, 100))
        assert sub.stats.file_events >= 5 and sub.stats.live_events > 0

    @pytest.mark.timeout(30)
    async def test_replay_then_live_async(self) -> None:
        async with self.backend.async_journal() as j, self.backend.async_journal() as writer:
            for i in range(1, 6):
                await j.append(ev(i))
            got: list[EventRecord] = []
            started = asyncio.Event()

            async def consume() -> None:
                async with async_sub(j, "s1", "main", 2) as sub:
                    async for record in sub:
                        got.append(record)
                        if record.sequence == 5:
                            started.set()
                        if record.sequence == 30:
                            break
                    assert sub.stats.live_events > 0

            task = asyncio.create_task(consume())
            await asyncio.wait_for(started.wait(), 10)
            for i in range(6, 31):
                await writer.append(ev(i))
            await asyncio.wait_for(task, 10)
            assert [r.sequence for r in got] == list(range(3, 31))
            assert ids_of(got) == ids_of(await j.read("s1", "main", 3, 100))

    @pytest.mark.timeout(30)
    def test_large_records_travel_through_the_file(self) -> None:
        """Over ``inline_message_max`` a message carries positions only: read from the file."""
        j, writer = self.backend.journal(), self.backend.journal(inline_message_max=600)
        j.append(ev(1))

        def write_more() -> None:
            for i in range(2, 21):
                writer.append(ev(i, size=2000 if i % 2 else 0))  # odd: too large for a message

        thread = threading.Thread(target=write_more)
        got: list[EventRecord] = []
        with sync_sub(j, "s1") as sub:
            for record in sub:
                got.append(record)
                if record.sequence == 1:
                    thread.start()  # listening: the rest arrives live
                if record.sequence == 20:
                    break
        thread.join(timeout=20)
        assert [r.sequence for r in got] == list(range(1, 21))
        assert ids_of(got) == ids_of(j.read("s1", "main", 1, 100))
        assert len(got[2].kind["content"]) > 2000
        assert sub.stats.file_events >= 10 and sub.stats.live_events > 0

    @pytest.mark.timeout(30)
    def test_lost_messages_are_caught_by_the_idle_head_check(self) -> None:
        """Pub/sub is at-most-once. Here every message is lost (the writer publishes with
        SPUBLISH, the subscriber listens with SUBSCRIBE): the idle check still finds them all."""
        self.needs_plain_pubsub()
        j = self.backend.journal()
        deaf_writer = self.backend.journal(sharded_pubsub=True)
        got: list[EventRecord] = []
        with sync_sub(j, "s1", idle_s=0.1) as sub:
            for i in range(1, 4):
                deaf_writer.append(ev(i))
            for record in sub:
                got.append(record)
                if record.sequence == 3:
                    deaf_writer.append(ev(4))  # after the first catch-up: needs another check
                if record.sequence == 4:
                    break
        assert [r.sequence for r in got] == [1, 2, 3, 4]
        assert sub.stats.live_events == 0 and sub.stats.head_checks >= 2

    @pytest.mark.timeout(30)
    def test_firehose_follows_every_matching_session_in_order(self) -> None:
        j, writer = self.backend.journal(), self.backend.journal()
        for i in range(1, 4):
            j.append(ev(i, session="fh-a"))  # before the firehose starts: not "now"
        expected = {("fh-a", "main"): list(range(4, 11)), ("fh-b", "main"): list(range(1, 6)),
                    ("fh-b", "br2"): list(range(1, 4))}
        got: dict[tuple[str, str], list[int]] = {}
        everything: dict[tuple[str, str], list[int]] = {}
        replayer = self.backend.journal()
        subs = [cast(SyncSubscription, j.subscribe_all("fh-", **FAST)),
                cast(SyncSubscription, replayer.subscribe_all("fh-", from_start=True, **FAST))]

        def consume(
            sub: SyncSubscription, into: dict[tuple[str, str], list[int]], total: int
        ) -> None:
            for n, record in enumerate(sub, 1):
                into.setdefault((record.session_id, record.branch_id), []).append(record.sequence)
                if n == total:
                    break
            sub.close()

        threads = [threading.Thread(target=consume, args=(subs[0], got, 15)),
                   threading.Thread(target=consume, args=(subs[1], everything, 18))]
        for t in threads:
            t.start()
        wait_until(lambda: all(s.stats.connects >= 1 for s in subs), 10, "the firehoses to listen")
        seq = {"fh-a": 3, "fh-b": 0, "other": 0}
        for i in range(7):
            for session, branch, upto in (("fh-a", "main", 10), ("fh-b", "main", 5),
                                          ("other", "main", 3)):
                if seq[session] < upto:
                    seq[session] += 1
                    writer.append(ev(seq[session], session=session, branch=branch))
            if i < 3:
                writer.append(ev(i + 1, session="fh-b", branch="br2"))
        for t in threads:
            t.join(timeout=20)
        assert got == expected
        assert everything == {**expected, ("fh-a", "main"): list(range(1, 11))}

    @pytest.mark.timeout(30)
    async def test_async_firehose(self) -> None:
        async with self.backend.async_journal() as j:
            sub = cast(AsyncSubscription, j.subscribe_all("", **FAST))
            got: list[tuple[str, int]] = []

            async def consume() -> None:
                async with sub:
                    async for record in sub:
                        got.append((record.session_id, record.sequence))
                        if len(got) == 6:
                            break

            task = asyncio.create_task(consume())
            await asyncio.wait_for(_until(lambda: sub.stats.connects >= 1), 10)
            for i in range(1, 4):
                await j.append(ev(i, session="a"))
                await j.append(ev(i, session="b"))
            await asyncio.wait_for(task, 10)
            assert sorted(got) == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]

    @pytest.mark.timeout(10)
    def test_bad_arguments_are_clear_errors(self) -> None:
        j = self.backend.journal()
        with pytest.raises(InvalidInput, match="unknown subscribe option"):
            j.subscribe("s1", bogus=1)
        with pytest.raises(InvalidInput, match="from_start"):
            j.subscribe("s1", from_start=True)  # a firehose option
        with pytest.raises(InvalidInput, match="after_sequence"):
            j.subscribe("s1", "main", -1)
        with pytest.raises(InvalidInput, match="buffer_size"):
            j.subscribe("s1", buffer_size=0)
        with pytest.raises(InvalidId):
            j.subscribe_all("a*")
        with pytest.raises(InvalidInput, match="discover_s"):
            j.subscribe_all(discover_s=0)
        with pytest.raises(InvalidInput, match="unknown subscribe option"):
            j.subscribe("s1", discover_s=1.0)  # a firehose option
