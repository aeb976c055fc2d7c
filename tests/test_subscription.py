"""Live subscriptions: docs/design.md, "The subscription protocol".

The contract runs over every backend (fakeredis, a real redis-server, a container when
Docker answers). Claims about processes, kills, restarts and Redis cutting off a slow client
run real processes (``tests/sub_helpers.py``) against a real redis-server; every process a
test starts is killed and reaped by the ``procs`` fixture, even when the test fails. The
state machine itself is also driven by hand, without any I/O, for the cases that are hard to
provoke on a live server (a lost pong, giving up, an exact overflow).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from journal import AsyncJournal, EventRecord, InvalidId, InvalidInput, Journal, JournalError
from journal._io.subscriptions import (
    AsyncSubscription,
    Check,
    Connect,
    Disconnect,
    Emit,
    Follower,
    Listen,
    Ping,
    Read,
    Sleep,
    SubscribeOptions,
    SyncSubscription,
)
from journal._model.announcement import encode_announcement
from journal._model.records import encode_line
from journal.errors import RedisUnavailable
from tests.conftest import Backend

pytestmark = pytest.mark.timeout(60)  # a ceiling; every test also names its own

HELPER = Path(__file__).resolve().parent / "sub_helpers.py"
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


class Proc:
    """One helper process; its stdout lines are collected by a thread."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.err = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode().strip())

    def expect(self, line: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"helper never printed {line!r}: {self.stderr()}") from None
            if got == line:
                return

    def finish(self, timeout: float) -> None:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"helper still running after {timeout}s: {self.stderr()}") \
                from None
        assert code == 0, f"helper exited with {code}: {self.stderr()}"

    def stderr(self) -> str:
        self.err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self.reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.err.close()


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[Proc] = []

    def start(self, *args: str) -> Proc:
        proc = Proc(list(args), self.tmp / f"helper-{len(self.all)}.log")
        self.all.append(proc)
        return proc

    def subscriber(self, backend: Backend, out: Path, until: int, *extra: str) -> Proc:
        assert backend.url is not None
        return self.start("subscribe", "--root", str(backend.root), "--url", backend.url,
                          "--session", "s1", "--until", str(until), "--out", str(out), *extra)

    def writer(self, backend: Backend, count: int, tag: str, *extra: str) -> Proc:
        assert backend.url is not None
        return self.start("write", "--root", str(backend.root), "--url", backend.url,
                          "--session", "s1", "--count", str(count), "--tag", tag, *extra)

    def kill_all(self) -> None:
        for proc in self.all:
            proc.kill()


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


# ----- the contract, on every backend ------------------------------------------------------


@pytest.mark.timeout(30)
def test_replay_then_live_sync(backend: Backend) -> None:
    j, writer = backend.journal(), backend.journal()
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
async def test_replay_then_live_async(backend: Backend) -> None:
    async with backend.async_journal() as j, backend.async_journal() as writer:
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
def test_large_records_travel_through_the_file(backend: Backend) -> None:
    """Over ``inline_message_max`` a message carries positions only: read from the file."""
    j, writer = backend.journal(), backend.journal(inline_message_max=600)
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
def test_lost_messages_are_caught_by_the_idle_head_check(backend: Backend) -> None:
    """Pub/sub is at-most-once. Here every message is lost (the writer publishes with
    SPUBLISH, the subscriber listens with SUBSCRIBE): the idle check still finds them all."""
    j = backend.journal()
    deaf_writer = backend.journal(sharded_pubsub=True)
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
def test_firehose_follows_every_matching_session_in_order(backend: Backend) -> None:
    j, writer = backend.journal(), backend.journal()
    for i in range(1, 4):
        j.append(ev(i, session="fh-a"))  # before the firehose starts: not "now"
    expected = {("fh-a", "main"): list(range(4, 11)), ("fh-b", "main"): list(range(1, 6)),
                ("fh-b", "br2"): list(range(1, 4))}
    got: dict[tuple[str, str], list[int]] = {}
    everything: dict[tuple[str, str], list[int]] = {}
    subs = [cast(SyncSubscription, j.subscribe_all("fh-", **FAST)),
            cast(SyncSubscription, backend.journal().subscribe_all("fh-", from_start=True, **FAST))]

    def consume(sub: SyncSubscription, into: dict[tuple[str, str], list[int]], total: int) -> None:
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
async def test_async_firehose(backend: Backend) -> None:
    async with backend.async_journal() as j:
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


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)


@pytest.mark.timeout(10)
def test_bad_arguments_are_clear_errors(backend: Backend) -> None:
    j = backend.journal()
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
    with pytest.raises(JournalError, match="sharded"):
        backend.journal(sharded_pubsub=True).subscribe_all()


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


@pytest.mark.timeout(50)
def test_pubsub_kill_and_an_empty_redis_restart_lose_and_duplicate_nothing(
    real_backend: Backend, procs: Procs, tmp_path: Path
) -> None:
    server = real_backend.server
    assert server is not None
    j = real_backend.journal()
    outs = [tmp_path / "sync.json", tmp_path / "async.json"]
    subs = [procs.subscriber(real_backend, outs[0], 400),
            procs.subscriber(real_backend, outs[1], 400, "--async")]
    wait_listening(real_backend, j, 2, 15)
    writer = procs.writer(real_backend, 400, "w", "--pace", "0.004")

    def head() -> int:
        try:
            return j.head("s1")
        except JournalError:
            return 0

    wait_until(lambda: head() >= 100, 20, "100 events")
    killed = admin(real_backend).client_kill_filter(_type="pubsub")
    assert int(killed) >= 2
    wait_until(lambda: head() >= 200, 20, "200 events")
    server.restart()  # SIGKILL, then a fresh server on the same port: memory is empty
    writer.finish(30)
    for sub in subs:
        sub.finish(20)
    for out in outs:
        got = result(out)
        assert_matches_file(got, j, 400)
        assert got["stats"]["connects"] >= 3  # the first, after the kill, after the restart


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
    j.append(ev(4))
    thread.join(timeout=10)
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
    # 1..6 were dropped with the buffer (their heads were kept); 7 and 8 are still held.
    assert f.next_action(0.0) == Read("s1", "main", 1, 6)
    f.on_read(Read("s1", "main", 1, 6), recs[:6], 0.0)
    assert f.next_action(0.0) == Emit(recs[:6])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[6:7])
    f.next_action(0.0)
    assert f.next_action(0.0) == Emit(recs[7:8])


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
