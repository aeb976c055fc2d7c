"""Live subscriptions: docs/design.md, "The subscription protocol".

The contract (tests/subscription_contract.py) runs on every backend: fakeredis, a real
redis-server, a container when Docker answers, the 3+3 cluster and Sentinel. Claims about
processes, kills, restarts and Redis cutting off a slow client run real processes
(``tests/sub_helpers.py``) against a real redis-server; every process a
test starts is killed and reaped by the ``procs`` fixture, even when the test fails. The
state machine itself is also driven by hand, without any I/O, for the cases that are hard to
provoke on a live server (a lost pong, giving up, an exact overflow).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from journal import EventRecord, Journal, JournalError
from journal._io import connect
from journal._io.subscriptions import (
    Check,
    Connect,
    Disconnect,
    Discover,
    Emit,
    Follower,
    Listen,
    Ping,
    Read,
    Sleep,
    Subscribe,
    SubscribeOptions,
    SyncSubscription,
)
from journal._model.announcement import decode_announcement, encode_announcement
from journal._model.records import encode_line
from journal.errors import RedisUnavailable
from journal.settings import JournalSettings
from journal.testing import RedisServer
from tests.backends import Backend
from tests.contract import OnCluster, OnContainer, OnFakeredis, OnRedisServer, OnSentinel
from tests.subscription_contract import (
    FAST,
    SubscriptionContract,
    async_sub,
    ev,
    ids_of,
    sync_sub,
    wait_until,
)
from tests.support import Procs

pytestmark = pytest.mark.timeout(60)  # a ceiling; every test also names its own

def admin(backend: Backend) -> redis.Redis:
    assert backend.url is not None
    client = redis.Redis.from_url(backend.url, socket_timeout=5)
    backend._closers.append(client.close)
    return client


def numsub(client: redis.Redis, channel: str) -> int:
    return int(client.pubsub_numsub(channel)[0][1])


def wait_listening(backend: Backend, journal: Journal, count: int, timeout: float) -> None:
    client = admin(backend)
    channel = journal.core.keys("s1").channel
    wait_until(lambda: numsub(client, channel) >= count, timeout,
               f"{count} subscriber(s) to listen")


# ----- helper processes ------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


def result(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def assert_matches_file(got: dict[str, Any], journal: Journal, count: int) -> None:
    """Exactly once, in order, and the very events of the file."""
    assert got["seqs"] == list(range(1, count + 1))
    assert got["ids"] == ids_of(journal.read("s1", "main", 1, count + 10))


# ----- the contract (tests/subscription_contract.py), on every backend ---------------------


class TestSubscriptionsOnFakeredis(OnFakeredis, SubscriptionContract):
    pass


class TestSubscriptionsOnRedisServer(OnRedisServer, SubscriptionContract):
    pass


class TestSubscriptionsOnContainer(OnContainer, SubscriptionContract):
    pass


class TestSubscriptionsOnCluster(OnCluster, SubscriptionContract):
    pass


class TestSubscriptionsOnSentinel(OnSentinel, SubscriptionContract):
    pass



async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


# ----- real processes, a real server -------------------------------------------------------


@pytest.mark.timeout(40)
def test_two_writer_processes_and_a_subscriber_process(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    j = real_backend.journal()
    out = tmp_path / "sub.json"
    sub = procs.subscriber(real_backend, out, 300)
    wait_listening(real_backend, j, 1, 15)
    writers = [procs.writer(real_backend, 150, f"w{n}") for n in (1, 2)]
    for w in writers:
        w.finish(30)
    sub.finish(30)
    got = result(out)
    assert_matches_file(got, j, 300)
    contents = [r.kind["content"].split(":")[0] for r in j.read("s1", "main", 1, 400)]
    assert contents.count("w1") == 150 and contents.count("w2") == 150
    assert got["stats"]["live_events"] > 0


@pytest.mark.timeout(30)
def test_a_late_subscriber_replays_page_by_page_then_goes_live(real_backend: Backend) -> None:
    j, writer = real_backend.journal(), real_backend.journal()
    for start in range(1, 61, 20):
        j.append_batch([ev(i) for i in range(start, start + 20)])
    got: list[int] = []
    thread = threading.Thread(target=lambda: [writer.append(ev(i)) for i in range(61, 81)])
    with sync_sub(j, "s1", "main", 25, page_size=10) as sub:
        for record in sub:
            got.append(record.sequence)
            if record.sequence == 60:
                thread.start()
            if record.sequence == 80:
                break
    thread.join(timeout=20)
    assert got == list(range(26, 81))
    assert sub.stats.file_events >= 35 and sub.stats.file_reads >= 4
    assert sub.stats.live_events > 0


class _FeedUnderFaults:
    """A sync and an async subscriber process listening to ``s1``, and a writer process
    appending ``total`` events to it, paced, while a test breaks Redis."""

    def __init__(self, backend: Backend, procs: Procs, tmp_path: Path, total: int) -> None:
        assert backend.server is not None
        self.server, self.total = backend.server, total
        self.j = backend.journal()
        self.outs = [tmp_path / "sync.json", tmp_path / "async.json"]
        self.subs = [procs.subscriber(backend, self.outs[0], total),
                     procs.subscriber(backend, self.outs[1], total, "--async")]
        wait_listening(backend, self.j, 2, 15)
        self.writer = procs.writer(backend, total, "w", "--pace", "0.004")

    def head(self) -> int:
        try:
            return self.j.head("s1")
        except JournalError:
            return 0

    def wait_for(self, events: int) -> None:
        wait_until(lambda: self.head() >= events, 20, f"{events} events")

    def finish(self, sub_timeout: float) -> list[dict[str, Any]]:
        """Every process done; each subscriber got exactly what the file holds."""
        self.writer.finish(30)
        for sub in self.subs:
            sub.finish(sub_timeout)
        results = [result(out) for out in self.outs]
        for got in results:
            assert_matches_file(got, self.j, self.total)
        return results


@pytest.mark.timeout(50)
def test_pubsub_kill_and_an_empty_redis_restart_lose_and_duplicate_nothing(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    feed = _FeedUnderFaults(real_backend, procs, tmp_path, 400)
    feed.wait_for(100)
    killed = admin(real_backend).client_kill_filter(_type="pubsub")
    assert int(killed) >= 2
    feed.wait_for(200)
    feed.server.restart()  # SIGKILL, then a fresh server on the same port: memory is empty
    for got in feed.finish(20):
        assert got["stats"]["connects"] >= 3  # the first, after the kill, after the restart


@pytest.mark.timeout(60)
def test_two_quick_redis_restarts_and_a_kill_leave_no_subscriber_behind(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    # Faults in quick succession land while a subscriber is still reconnecting (or has just
    # subscribed again on a fresh connection): each must still end in a subscription that
    # hears the rest, not one that waits forever on a dead or half-set-up connection.
    feed = _FeedUnderFaults(real_backend, procs, tmp_path, 500)
    feed.wait_for(100)
    for gap in (0.3, 0.05):
        feed.server.restart()
        time.sleep(gap)
    feed.server.restart()
    with contextlib.suppress(redis.RedisError):
        admin(real_backend).client_kill_filter(_type="pubsub")
    feed.finish(25)


@pytest.mark.timeout(40)
def test_a_slow_consumer_cut_off_by_redis_catches_up_from_the_file(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    server = real_backend.server
    assert server is not None and server.log_path is not None
    client = admin(real_backend)
    client.config_set("client-output-buffer-limit", "pubsub 32kb 16kb 1")
    j = real_backend.journal(durability="none")
    out = tmp_path / "slow.json"
    total = 1 + 150 * 20
    sub = procs.subscriber(real_backend, out, total, "--buffer-size", "20",
                           "--stall-after", "1", "--stall", "2.5")
    wait_listening(real_backend, j, 1, 15)
    j.append(ev(1))
    sub.expect("stalling", 10)
    # ~3 MB while the subscriber reads nothing: far past its 32 kB output buffer limit.
    for start in range(2, total + 1, 20):
        j.append_batch([ev(i, size=1000) for i in range(start, start + 20)])
    sub.finish(30)
    got = result(out)
    assert_matches_file(got, j, total)
    assert "output buffer" in server.log_path.read_text(errors="replace")
    stats = got["stats"]
    assert stats["connects"] >= 2  # Redis dropped it; it listened again
    assert stats["buffer_peak"] <= 20  # our own buffer stayed within its bound
    assert stats["file_events"] > 1000  # the backlog came from the file
    assert got["maxrss_kb"] < 200_000


@pytest.mark.timeout(50)
def test_sixteen_subscriber_processes_all_get_everything(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    j = real_backend.journal()
    outs = [tmp_path / f"sub{n}.json" for n in range(16)]
    subs = [procs.subscriber(real_backend, out, 200, *(["--async"] if n % 2 else []))
            for n, out in enumerate(outs)]
    wait_listening(real_backend, j, 16, 30)
    for start in range(1, 201, 2):
        j.append_batch([ev(start), ev(start + 1)])
    for sub in subs:
        sub.finish(30)
    for out in outs:
        got = result(out)
        assert_matches_file(got, j, 200)
        assert got["stats"]["live_events"] > 0


def _clients(client: redis.Redis) -> tuple[int, int]:
    """(every client but this one, pub/sub clients)."""
    listing = client.client_list()
    return len(listing) - 1, sum(1 for c in listing if "P" in c["flags"])


@pytest.mark.timeout(30)
def test_closing_a_sync_subscription_closes_its_connection(real_backend: Backend) -> None:
    client = admin(real_backend)
    # No held lease: its pipelined commits keep a connection of their own out of the pool,
    # and the pool would then open one more for the subscription's reads. Counting clients
    # exactly needs a journal whose connections do not change under the test.
    j = real_backend.journal(lease_hold_ms=0)
    for i in range(1, 4):
        j.append(ev(i))
    baseline = _clients(client)
    assert baseline[1] == 0

    def first_of(iterator: Any) -> None:
        for _record in iterator:
            assert _clients(client)[1] == 1
            break

    def closed() -> bool:
        return _clients(client) == baseline

    first_of(j.subscribe("s1", **FAST))  # dropped after break: closed at once
    wait_until(closed, 5, "the connection to close")
    with sync_sub(j, "s1") as sub:
        next(sub)
    wait_until(closed, 5, "the connection to close")
    sub = sync_sub(j, "s1", "main", 3)  # nothing to yield: blocks in the live loop
    thread = threading.Thread(target=lambda: next(sub, None))
    thread.start()
    wait_until(lambda: _clients(client)[1] == 1, 10, "the subscription to listen")
    # Another writer, closed at once: an append through ``j`` while the thread reads through
    # it would grow j's pool by one connection, and the exact count would no longer tell.
    with real_backend.journal(lease_hold_ms=0) as writer:
        writer.append(ev(4))
    thread.join(timeout=10)
    assert not thread.is_alive()
    sub.close()
    wait_until(closed, 5, "the connection to close")


@pytest.mark.timeout(30)
async def test_closing_an_async_subscription_closes_its_connection(
    real_backend: Backend,
) -> None:
    client = admin(real_backend)
    async with real_backend.async_journal(lease_hold_ms=0) as j:  # as in the sync test
        for i in range(1, 4):
            await j.append(ev(i))
        baseline = await asyncio.to_thread(_clients, client)

        async def pubsub_clients() -> int:
            return (await asyncio.to_thread(_clients, client))[1]

        async def settle() -> tuple[int, int]:
            for _ in range(100):
                now = await asyncio.to_thread(_clients, client)
                if now == baseline:
                    break
                gc.collect()
                await asyncio.sleep(0.02)
            return now

        async for _record in j.subscribe("s1", **FAST):  # break: the loop's finalizer closes it
            assert await pubsub_clients() == 1
            break
        assert await settle() == baseline

        sub = async_sub(j, "s1")
        await sub.__anext__()
        await sub.aclose()
        assert await settle() == baseline

        async def wait_forever() -> None:
            async for _record in async_sub(j, "s1", "main", 3):
                raise AssertionError("nothing was appended")

        task = asyncio.create_task(wait_forever())
        await asyncio.wait_for(_until_async(pubsub_clients, 1), 10)
        await asyncio.sleep(0.3)  # idle checks and pings go on meanwhile
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await settle() == baseline


async def _until_async(probe: Callable[[], Any], value: int) -> None:
    while await probe() != value:
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
def test_sharded_pubsub_subscriptions_are_live(real_backend: Backend) -> None:
    j = real_backend.journal(sharded_pubsub=True)
    client = admin(real_backend)
    channel = j.core.keys("s1").channel
    got: list[int] = []
    with sync_sub(j, "s1") as sub:
        thread = threading.Thread(target=lambda: got.extend(r.sequence for r in _take(sub, 10)))
        thread.start()
        wait_until(lambda: int(client.pubsub_shardnumsub(channel)[0][1]) == 1, 10, "SSUBSCRIBE")
        for i in range(1, 11):
            j.append(ev(i))
        thread.join(timeout=10)
    assert got == list(range(1, 11))
    assert sub.stats.live_events > 0


@pytest.mark.timeout(30)
def test_sharded_pubsub_firehose_on_one_server(real_backend: Backend) -> None:
    """With sharded_pubsub=True there are no patterns even on one server: the firehose
    discovers the sessions (one connection, one SSUBSCRIBE per session)."""
    j = real_backend.journal(sharded_pubsub=True)
    j.append(ev(1, session="a"))  # before the firehose: not "now"
    with j.subscribe_all("", discover_s=0.1, **FAST) as sub:
        for i in range(2, 4):
            j.append(ev(i, session="a"))
        j.append_batch([ev(1, session="b"), ev(2, session="b")])  # created since: all of it
        got = [(r.session_id, r.sequence) for r in _take(sub, 4)]
    assert sorted(got) == [("a", 2), ("a", 3), ("b", 1), ("b", 2)]
    assert sub.stats.connects == 1


def _take(sub: SyncSubscription, n: int) -> list[EventRecord]:
    out: list[EventRecord] = []
    for record in sub:
        out.append(record)
        if len(out) == n:
            break
    return out


# ----- the state machine, driven by hand (no I/O) ------------------------------------------


def _message(records: list[EventRecord], inline: bool = True) -> bytes:
    first, last = records[0], records[-1]
    lines = b"".join(encode_line(r) for r in records)
    return encode_announcement(first.session_id, first.branch_id, first.sequence,
                               last.sequence, 0, 0, lines if inline else None)


def _listening(f: Follower, now: float = 0.0) -> None:
    assert isinstance(f.next_action(now), Connect)
    assert isinstance(f.next_action(now), Listen)
    f.on_pubsub("subscribe", 1, now)


@pytest.mark.timeout(5)
def test_machine_listens_first_then_replays_then_goes_live() -> None:
    f = Follower(SubscribeOptions(page_size=2), session_id="s1", after_sequence=0)
    recs = [ev(i) for i in range(1, 10)]
    _listening(f)
    assert f.next_action(0.0) == Check("s1", "main")  # the head only after the confirmation
    f.on_heads("s1", {"main": 3}, 0.0)
    assert f.next_action(0.0) == Read("s1", "main", 1, 2)  # page by page
    f.on_read(Read("s1", "main", 1, 2), recs[0:2], 0.0)
    assert f.next_action(0.0) == Emit(recs[0:2])
    assert isinstance(f.next_action(0.0), Listen)  # drains between pages
    f.on_pubsub("message", _message(recs[2:4]), 0.0)  # 3..4: overlaps the replay
    f.on_pubsub("message", _message(recs[1:2]), 0.0)  # 2: stale
    f.on_pubsub("message", _message(recs[6:7]), 0.0)  # 7: a jump over 5..6
    f.on_pubsub("message", _message(recs[7:8], inline=False), 0.0)  # 8: too large
    f.on_pubsub("message", _message(recs[8:9]), 0.0)  # 9
    f.on_drained(False)
    assert f.next_action(0.0) == Emit(recs[2:4])
    f.next_action(0.0)  # a drain
    assert f.next_action(0.0) == Read("s1", "main", 5, 2)
    f.on_read(Read("s1", "main", 5, 2), recs[4:6], 0.0)
    assert f.next_action(0.0) == Emit(recs[4:6])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[6:7])
    f.next_action(0.0)
    assert f.next_action(0.0) == Read("s1", "main", 8, 1)
    f.on_read(Read("s1", "main", 8, 1), recs[7:8], 0.0)
    assert f.next_action(0.0) == Emit(recs[7:8])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[8:9])
    f.next_action(0.0)
    assert isinstance(f.next_action(0.0), Listen)  # nothing left to do
    assert f.stats.stale_messages == 1


@pytest.mark.timeout(5)
def test_machine_overflow_drops_the_buffer_and_reads_the_file() -> None:
    f = Follower(SubscribeOptions(buffer_size=3, page_size=100), session_id="s1")
    recs = [ev(i) for i in range(1, 9)]
    _listening(f)
    f.next_action(0.0)
    f.on_heads("s1", {"main": 0}, 0.0)
    for r in recs:
        f.on_pubsub("message", _message([r]), 0.0)
    assert f.stats.overflows == 2 and f.stats.buffer_peak == 3
    # 1 went straight through (nothing else waited); 2..7 were dropped with the buffer
    # (their heads were kept); 8 is still held.
    assert f.next_action(0.0) == Emit(recs[:1])
    f.next_action(0.0)
    assert f.next_action(0.0) == Read("s1", "main", 2, 6)
    f.on_read(Read("s1", "main", 2, 6), recs[1:7], 0.0)
    assert f.next_action(0.0) == Emit(recs[1:7])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[7:8])
    f.next_action(0.0)
    f.on_drained(False)
    assert isinstance(f.next_action(0.0), Listen)  # nothing left to do


@pytest.mark.timeout(5)
def test_machine_live_message_goes_straight_through_only_when_nothing_waits() -> None:
    """The live path skips the buffer when the message continues its stream and nothing
    else waits; behind anything not yet handed out (an emit, a file read to come) it is
    buffered, so the order never changes."""
    f = Follower(SubscribeOptions(page_size=10), session_id="s1")
    recs = [ev(i) for i in range(1, 8)]
    _listening(f)
    assert f.next_action(0.0) == Check("s1", "main")
    f.on_heads("s1", {"main": 0}, 0.0)
    f.on_pubsub("message", _message(recs[0:1]), 0.0)
    assert f.stats.live_events == 1 and f.stats.buffer_peak == 0  # not buffered
    f.on_pubsub("message", _message(recs[1:2]), 0.0)  # behind an emit not handed out yet
    assert f.stats.buffer_peak == 1
    f.on_drained(False)
    assert f.next_action(0.0) == Emit(recs[0:1])
    assert f.next_action(0.0) == Listen(0.0, 1000)  # work waits: a drain first
    f.on_drained(False)
    assert f.next_action(0.0) == Emit(recs[1:2])
    assert f.next_action(0.0) == Listen(0.0, 1000)
    f.on_drained(False)
    wait = f.next_action(0.0)  # nothing left: wait for the next message
    assert isinstance(wait, Listen) and wait.timeout > 0
    # A head check finds 3..4 that no message announced: 5 must wait behind their read.
    f.on_heads("s1", {"main": 4}, 0.0)
    f.on_pubsub("message", _message(recs[4:5]), 0.0)
    assert f.next_action(0.0) == Read("s1", "main", 3, 2)
    f.on_read(Read("s1", "main", 3, 2), recs[2:4], 0.0)
    assert f.next_action(0.0) == Emit(recs[2:4])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[4:5])
    f.next_action(0.0)
    f.on_drained(False)
    assert isinstance(f.next_action(0.0), Listen)
    # A message that overlaps what was yielded goes through with only what is new; a
    # stale one is dropped. With nothing else due, no empty drain comes before the wait
    # (the wait drains anyway).
    f.on_pubsub("message", _message(recs[4:6]), 0.0)
    f.on_pubsub("message", _message(recs[5:6]), 0.0)
    f.on_drained(False)
    assert f.next_action(0.0) == Emit(recs[5:6])
    wait = f.next_action(0.0)
    assert isinstance(wait, Listen) and wait.timeout > 0
    # Back after idle_s (a slow consumer): the drain comes before the head check, so a
    # connection Redis cut meanwhile is noticed first.
    f.on_pubsub("message", _message(recs[6:7]), 0.0)
    f.on_drained(False)
    assert f.next_action(0.0) == Emit(recs[6:7])
    assert f.next_action(5.0) == Listen(0.0, 1000)
    f.on_drained(False)
    assert f.next_action(5.0) == Check("s1", "main")
    assert f.stats.stale_messages == 1
    assert (f.stats.live_events, f.stats.file_events) == (5, 2)


@pytest.mark.timeout(5)
def test_machine_idle_check_ping_and_reconnect_with_backoff() -> None:
    opts = SubscribeOptions(idle_s=1.0, health_timeout_s=2.0, backoff_min_s=0.5,
                            backoff_max_s=1.0, give_up_after_s=5.0)
    f = Follower(opts, session_id="s1")
    _listening(f)
    f.next_action(0.0)
    f.on_heads("s1", {"main": 0}, 0.0)
    wait = f.next_action(0.0)
    assert isinstance(wait, Listen) and wait.timeout == pytest.approx(1.0)
    assert f.next_action(1.0) == Check("s1", "main")  # quiet for idle_s: compare heads
    f.on_heads("s1", {"main": 0}, 1.0)
    assert isinstance(f.next_action(1.0), Ping)  # and check the connection itself
    f.on_drained(False)
    assert isinstance(f.next_action(2.0), Check)
    f.on_heads("s1", {"main": 0}, 2.0)
    assert isinstance(f.next_action(3.1), Disconnect)  # no pong in 2 s: a dead connection
    sleep = f.next_action(3.1)
    assert isinstance(sleep, Sleep) and 0.25 <= sleep.seconds <= 0.5
    assert isinstance(f.next_action(3.6), Connect)
    f.lost(3.6, "refused")
    assert isinstance(f.next_action(3.6), Disconnect)
    sleep = f.next_action(3.6)
    assert isinstance(sleep, Sleep) and 0.5 <= sleep.seconds <= 1.0  # doubled, capped
    with pytest.raises(RedisUnavailable, match="giving up"):
        f.next_action(8.2)


@pytest.mark.timeout(5)
def test_machine_reconnect_catches_up_from_the_last_yielded() -> None:
    f = Follower(SubscribeOptions(), session_id="s1", after_sequence=10)
    _listening(f)
    f.next_action(0.0)
    f.on_heads("s1", {"main": 10}, 0.0)
    f.lost(0.5, "connection reset")
    assert isinstance(f.next_action(0.5), Disconnect)
    assert isinstance(f.next_action(1.0), Connect)
    f.on_pubsub("subscribe", 1, 1.0)
    assert f.next_action(1.0) == Check("s1", "main")  # again: listen, then the head
    f.on_heads("s1", {"main": 14}, 1.0)
    assert f.next_action(1.0) == Read("s1", "main", 11, 4)


@pytest.mark.timeout(5)
def test_machine_firehose_starts_now_per_branch() -> None:
    f = Follower(SubscribeOptions())
    _listening(f)
    a5 = ev(5, session="a")
    f.on_pubsub("pmessage", _message([a5]), 0.0)
    assert f.next_action(0.0) == Emit([a5])  # first heard of at 5: 5 is where it starts
    f.next_action(0.0)
    f.on_pubsub("pmessage", _message([ev(8, session="a")]), 0.0)
    assert f.next_action(0.0) == Read("a", "main", 6, 2)  # a gap after that is filled
    f2 = Follower(SubscribeOptions(from_start=True))
    _listening(f2)
    f2.on_pubsub("pmessage", _message([a5]), 0.0)
    assert f2.next_action(0.0) == Read("a", "main", 1, 4)


@pytest.mark.timeout(5)
def test_machine_sharded_firehose_discovers_sessions() -> None:
    """Sharded pub/sub has no patterns: the firehose lists the root, takes the heads of the
    sessions that exist before it listens (where "now" starts), SSUBSCRIBEs each one's
    channel, and follows a session found later from its first event."""
    f = Follower(SubscribeOptions(discover_s=5.0, idle_s=100.0), discover="fh-")
    assert f.next_action(0.0) == Discover()
    f.on_sessions(["fh-a", "other", "fh-b"], 0.0)
    assert f.next_action(0.0) == Check("fh-a", None)  # before listening: the snapshot
    f.on_heads("fh-a", {"main": 3}, 0.0)
    assert f.next_action(0.0) == Check("fh-b", None)
    f.on_heads("fh-b", {"main": 1}, 0.0)
    assert f.next_action(0.0) == Connect(("fh-a", "fh-b"))
    assert isinstance(f.next_action(0.0), Listen)
    f.on_pubsub("ssubscribe", 1, 0.0, session="fh-a")
    assert not f.listening  # one channel of two
    f.on_pubsub("ssubscribe", 2, 0.0, session="fh-b")
    assert f.listening and f.stats.connects == 1
    f.on_drained(False)
    checks = {f.next_action(0.0), f.next_action(0.0)}  # both due once listening
    assert checks == {Check("fh-a", None), Check("fh-b", None)}
    f.on_heads("fh-a", {"main": 5}, 0.0)  # grew between the snapshot and the confirmation
    f.on_heads("fh-b", {"main": 1}, 0.0)
    assert f.next_action(0.0) == Read("fh-a", "main", 4, 2)  # from the snapshot on
    a45 = [ev(4, "fh-a"), ev(5, "fh-a")]
    f.on_read(Read("fh-a", "main", 4, 2), a45, 0.0)
    assert f.next_action(0.0) == Emit(a45)
    assert isinstance(f.next_action(1.0), Listen)  # nothing else until the next listing
    assert f.next_action(5.0) == Discover()
    f.on_sessions(["fh-a", "fh-b", "fh-c"], 5.0)
    f.on_drained(False)
    assert f.next_action(5.0) == Subscribe(("fh-c",))
    f.on_pubsub("ssubscribe", 3, 5.0, session="fh-c")
    c2 = ev(2, "fh-c")
    f.on_pubsub("smessage", _message([c2]), 5.0)
    f.on_drained(False)
    assert f.next_action(5.0) == Read("fh-c", "main", 1, 1)  # created since: from 1


@pytest.mark.timeout(5)
def test_machine_sharded_firehose_with_nothing_to_listen_to() -> None:
    f = Follower(SubscribeOptions(), discover="")
    assert f.next_action(0.0) == Discover()
    f.on_sessions([], 0.0)
    assert f.next_action(0.0) == Connect(())
    assert f.listening  # no channel: nothing to confirm, and no ping on no connection
    assert isinstance(f.next_action(30.0), Discover)


@pytest.mark.timeout(5)
def test_machine_survives_malformed_messages() -> None:
    f = Follower(SubscribeOptions(), session_id="s1")
    _listening(f)
    f.next_action(0.0)
    f.on_heads("s1", {"main": 0}, 0.0)
    f.on_pubsub("message", b"not json", 0.0)
    assert f.stats.bad_messages == 1
    # Positions fine, records broken: the positions alone send us to the file.
    bad = b'{"s":"s1","b":"main","f":1,"l":2,"o":0,"n":9,"e":[{"bogus":1}]}'
    f.on_pubsub("message", bad, 0.0)
    assert f.next_action(0.0) == Read("s1", "main", 1, 2)
    # Records that do not match their positions are not trusted either.
    f2 = Follower(SubscribeOptions(), session_id="s1")
    _listening(f2)
    f2.next_action(0.0)
    f2.on_heads("s1", {"main": 0}, 0.0)
    f2.on_pubsub("message", encode_announcement("s1", "main", 1, 1, 0, 0, encode_line(ev(2))), 0.0)
    assert f2.next_action(0.0) == Read("s1", "main", 1, 1)


@pytest.mark.timeout(5)
def test_machine_treats_an_unexpected_unsubscribe_as_a_lost_connection() -> None:
    f = Follower(SubscribeOptions(), session_id="s1")
    _listening(f)
    f.on_pubsub("unsubscribe", 0, 0.0)
    assert f.stats.disconnects == 1
    assert isinstance(f.next_action(0.0), Disconnect)


@pytest.mark.parametrize("lines", [None, b"", "two"])
def test_an_announcement_is_the_json_its_decoder_reads(lines: bytes | str | None) -> None:
    # The head is formatted by hand (ids need no escaping): every character an id may hold
    # must come back, and the records spliced in must decode as records.
    records = [EventRecord.new("a.b:c-d_E9", "br.1:x-y_Z", seq, {"type": "UserMessage",
                                                                "content": f"m{seq}"})
               for seq in (7, 8)]
    data = b"".join(encode_line(r) for r in records) if lines == "two" else lines
    assert not isinstance(data, str)
    raw = encode_announcement("a.b:c-d_E9", "br.1:x-y_Z", 7, 8, 123, 4567,
                              data if data else None)
    decoded = decode_announcement(raw)
    assert (decoded.session_id, decoded.branch_id, decoded.first, decoded.last,
            decoded.offset, decoded.committed) == ("a.b:c-d_E9", "br.1:x-y_Z", 7, 8, 123, 4567)
    assert json.loads(raw)["n"] == 4567
    assert decoded.records == (records if data else None)


def _drain(receive: Callable[[float], dict[str, Any] | None], count: int,
           timeout_s: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        message = receive(0.5)
        if message is not None:
            got.append(message)
    return got


def test_the_lean_receive_reads_what_get_message_reads(redis_server: RedisServer,
                                                       tmp_path: Path) -> None:
    # sync_receive reads the socket itself (one poll, one read) instead of redis-py's
    # get_message: the messages must be the same, confirmations, pongs, patterns and a
    # message far larger than one read included, and get_message must not be what ran.
    settings = JournalSettings(root=tmp_path, redis_url=redis_server.url)
    client = connect.sync_client(settings)
    lean, plain = client.pubsub(), client.pubsub()  # type: ignore[no-untyped-call]
    try:
        for pubsub in (lean, plain):
            pubsub.subscribe("ch")
            pubsub.psubscribe("p*")
        confirmations = _drain(lambda t: plain.get_message(timeout=t), 2)
        assert _drain(lambda t: connect.sync_receive(lean, t), 2) == confirmations
        assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"]

        def not_this(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("get_message ran: the lean receive did not apply")

        lean.get_message = not_this  # type: ignore[method-assign]
        payloads = [b"small", b"x" * 300_000, b"", b"\r\n$5\r\nfake\r\n"]
        for data in payloads:
            client.publish("ch", data)
            client.publish("pattern-1", data)
        lean.ping("token-1")
        plain.ping("token-1")
        want = _drain(lambda t: plain.get_message(timeout=t), 2 * len(payloads) + 1)
        assert [m["data"] for m in want if m["type"] == "pmessage"] == payloads
        got = _drain(lambda t: connect.sync_receive(lean, t), 2 * len(payloads) + 1)
        assert len(want) == 2 * len(payloads) + 1
        assert got == want
        # redis-py's own health check (a PING when the connection was quiet for its
        # interval) is sent and its reply swallowed, as get_message does.
        assert lean.connection is not None
        lean.connection.next_health_check = 0
        client.publish("ch", b"after the check")
        got = _drain(lambda t: connect.sync_receive(lean, t), 1)
        assert [m["data"] for m in got] == [b"after the check"]
        assert [m["data"] for m in _drain(lambda t: plain.get_message(timeout=t), 1)] == [
            b"after the check"]
        assert lean.health_check_response_counter == 1  # its PING went out
        assert connect.sync_receive(lean, 5.0) is None  # the reply is read, not handed out
        assert lean.health_check_response_counter == 0
        started = time.monotonic()
        assert connect.sync_receive(lean, 0.2) is None  # nothing more: None after the wait
        assert 0.15 <= time.monotonic() - started < 5
        # An error reply (a command not allowed while subscribed) raises from both.
        for pubsub, receive in ((plain, lambda t: plain.get_message(timeout=t)),
                                (lean, lambda t: connect.sync_receive(lean, t))):
            pubsub.execute_command("GET", "x")
            with pytest.raises(redis.exceptions.ResponseError, match="allowed in this context"):
                _drain(receive, 1)
    finally:
        for pubsub in (lean, plain):
            with contextlib.suppress(Exception):
                pubsub.close()
        client.close()


def test_the_lean_receive_reports_a_dead_server(redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    # A server that goes away must raise, as get_message does, not look like silence.
    settings = JournalSettings(root=tmp_path, redis_url=redis_server.url)
    client = connect.sync_client(settings)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe("ch")
        assert _drain(lambda t: connect.sync_receive(pubsub, t), 1)
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            while time.monotonic() - started < 10:
                connect.sync_receive(pubsub, 0.5)
        assert time.monotonic() - started < 5
    finally:
        with contextlib.suppress(Exception):
            pubsub.close()
        client.close()
