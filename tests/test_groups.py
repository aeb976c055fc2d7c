"""Worker groups: the Lua fencing (fakeredis and a real server), the pure parts of the
protocol, the durable checkpoint file, exactly-once effects with a SQLite tracking table,
the async shell, balance between workers, and the ``journal group`` command."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from journal import AsyncJournal, EventRecord, Journal
from journal._core.scripts import GROUP_SOURCES as LUA
from journal._groups.admin import status
from journal._groups.engine import ConsumeOptions, backoff, fair_share
from journal._groups.keys import registry_keys, session_group_keys
from journal._groups.store import Checkpoint, GroupStore
from journal.cli.main import main as cli
from journal.errors import InvalidInput
from journal.testing import RedisServer


def fill(j: Journal, sessions: int, events: int, branch: str = "main") -> None:
    for s in range(sessions):
        for i in range(1, events + 1):
            kind = {"type": "UserMessage", "content": f"{i}"}
            j.append(EventRecord.new(f"s{s}", branch, i, kind))


@dataclass
class Backend:
    """The data root and a private redis-server (this module's own, not conftest's)."""

    root: Path
    server: RedisServer

    @property
    def url(self) -> str:
        return self.server.url

    def journal(self) -> Journal:
        return Journal(self.root, self.url, lease_ms=2000).open()

    def async_journal(self) -> AsyncJournal:
        return AsyncJournal(self.root, self.url, lease_ms=2000)

    def sync_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def restart_empty(self) -> None:
        self.server.restart()


@pytest.fixture
def real_backend(tmp_path: Path) -> Iterator[Backend]:
    with RedisServer(dir=tmp_path / "redis") as server:
        yield Backend(tmp_path / "data", server)


FAST = dict(claim_ms=1000, scan_s=0.1, poll_s=0.02, flush_s=0.05, max_idle_s=1.0,
            backoff_s=0.01)


# ----- Lua fencing ---------------------------------------------------------------------------


@pytest.fixture
def lua() -> Any:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    scripts = {n: r.register_script(src) for n, src in LUA.items()}
    keys = session_group_keys("journal", "g", "s1")
    r.hset(keys.state, mapping={"len": 10, "h:main": 5})
    return r, scripts, keys


def test_claim_seeds_then_claims_only_with_work(lua: Any) -> None:
    r, sc, k = lua
    args = [k.group, k.claim, k.state]
    assert sc["claim"](keys=args, args=["w1", 1000, "0"]) == [b"seed"]
    assert sc["seed"](keys=[k.group], args=[7, "0", "", "main", 5]) == 1
    assert sc["seed"](keys=[k.group], args=[1, "0", "", "main", 0]) == 0  # first seed wins
    assert sc["claim"](keys=args, args=["w1", 1000, "0"]) == [b"idle"]  # caught up
    r.hset(k.state, "h:main", 6)
    status, token, _ = sc["claim"](keys=args, args=["w1", 1000, "0"])
    assert (status, token) == (b"ok", b"8:w1")  # fences continue from the file's
    assert sc["claim"](keys=args, args=["w2", 1000, "0"])[0] == b"busy"


def test_zombie_can_neither_ack_nor_move_back(lua: Any) -> None:
    r, sc, k = lua
    sc["seed"](keys=[k.group], args=[0, "0", ""])
    old = sc["claim"](keys=[k.group, k.claim, k.state], args=["w1", 1000, "0"])[1]
    assert sc["step"](keys=[k.group, k.claim], args=[old, 1000, "main", 4, "", "main", 3]) == [1, 1]
    r.delete(k.claim)  # the claim expired
    new = sc["claim"](keys=[k.group, k.claim, k.state], args=["w2", 1000, "0"])[1]
    # the crashed delivery of 4 comes back as attempt 2 to the new holder
    assert sc["step"](keys=[k.group, k.claim], args=[new, 1000, "main", 4, ""]) == [1, 2]
    assert sc["step"](keys=[k.group, k.claim], args=[new, 1000, "", 0, "", "main", 4]) == [1, 0]
    for late in ([old, 1000, "", 0, "", "main", 5], [old, 1000, "", 0, "", "main", 1]):
        assert sc["step"](keys=[k.group, k.claim], args=late) == [0]
    assert r.hget(k.group, "c:main") == b"4"
    assert sc["release"](keys=[k.claim], args=[old]) == 0
    # a reset takes a new fence and ends the current claim
    assert sc["reset"](keys=[k.group, k.claim], args=["main", 1]) == 3
    assert sc["step"](keys=[k.group, k.claim], args=[new, 1000, "", 0, "", "main", 5]) == [0]
    assert r.hget(k.group, "c:main") == b"1"


def test_batched_acks_keep_the_mark_of_a_later_event(lua: Any) -> None:
    """One step commits several acks; the attempt mark of an event after them (a nacked
    one) survives, so its redelivery counts on."""
    r, sc, k = lua
    sc["seed"](keys=[k.group], args=[0, "0", ""])
    tok = sc["claim"](keys=[k.group, k.claim, k.state], args=["w1", 1000, "0"])[1]
    step = sc["step"]
    assert step(keys=[k.group, k.claim], args=[tok, 1000, "main", 1, ""]) == [1, 1]
    # 1 and 2 acked locally, 3 delivered by the run and nacked: the nack marks 3
    assert step(keys=[k.group, k.claim], args=[tok, 1000, "main", 3, "", "main", 2]) == [1, 1]
    assert step(keys=[k.group, k.claim], args=[tok, 1000, "main", 3, ""]) == [1, 2]
    assert r.hget(k.group, "c:main") == b"2"
    assert step(keys=[k.group, k.claim], args=[tok, 1000, "", 0, "", "main", 3]) == [1, 0]
    assert r.hget(k.group, "a:main") is None


def test_a_halted_session_is_not_claimed_until_reset(lua: Any) -> None:
    _, sc, k = lua
    args = [k.group, k.claim, k.state]
    sc["seed"](keys=[k.group], args=[0, "0", "main#3", "main", 2])  # halted, from the file
    assert sc["claim"](keys=args, args=["w1", 1000, "0"]) == [b"halted"]
    sc["reset"](keys=[k.group, k.claim], args=["main", 2])
    tok = sc["claim"](keys=args, args=["w1", 1000, "0"])[1]
    assert sc["halt"](keys=[k.group, k.claim], args=["1:zombie", "main#3"]) == 0  # fenced
    assert sc["halt"](keys=[k.group, k.claim], args=[tok, "main#3"]) == 1
    sc["release"](keys=[k.claim], args=[tok])
    assert sc["claim"](keys=args, args=["w2", 1000, "0"]) == [b"halted"]


def test_registry_counts_live_workers(lua: Any) -> None:
    _, sc, _ = lua
    reg = registry_keys("journal", "g")
    assert sc["heartbeat"](keys=[reg.workers, reg.load], args=["w1", 60_000, 3, "0"]) == 1
    assert sc["heartbeat"](keys=[reg.workers, reg.load], args=["w2", 60_000, 0, "0"]) == 2
    assert sc["heartbeat"](keys=[reg.workers, reg.load], args=["w2", 60_000, 0, "1"]) == 1
    assert reg.workers.startswith("journal:{grp:g}")


# ----- pure parts ----------------------------------------------------------------------------


def test_fair_share_and_backoff() -> None:
    assert [fair_share(40, n) for n in (1, 3, 4, 0)] == [40, 14, 10, 40]
    opts = ConsumeOptions(backoff_s=0.5, backoff_max_s=3)
    assert [backoff(opts, a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    with pytest.raises(InvalidInput):
        ConsumeOptions.parse({"start": "middle"})
    with pytest.raises(InvalidInput):
        ConsumeOptions.parse({"bogus": 1})
    for bad in ({"on_poison": "drop"}, {"commit_every": 0}):
        with pytest.raises(InvalidInput):
            ConsumeOptions.parse(bad)


def test_checkpoint_file_is_fenced(tmp_path: Path) -> None:
    store = GroupStore(tmp_path, "g")
    assert store.write("s1", Checkpoint(5, {"main": 10}, "5:w1"))
    assert not store.write("s1", Checkpoint(4, {"main": 20}, "4:w0"))  # older fence
    assert not store.write("s1", Checkpoint(5, {"main": 20}, "5:w9"))  # same fence, not ours
    assert store.write("s1", Checkpoint(5, {"main": 11}, "5:w1"))
    assert store.write("s1", Checkpoint(6, {"main": 2}, "6:reset"))  # newer fence may go back
    assert store.read("s1") == Checkpoint(6, {"main": 2}, "6:reset")
    assert not list((tmp_path / "groups" / "g" / "ckpt").glob("*.tmp"))
    with pytest.raises(InvalidInput):
        GroupStore(tmp_path, "../x")


# ----- with a real redis-server ----------------------------------------------------------------


def test_consume_delivers_in_order_and_survives_empty_redis(real_backend: Backend) -> None:
    j = real_backend.journal()
    fill(j, 3, 10)
    fill(j, 1, 4, branch="alt")
    seen: list[tuple[str, str, int]] = []
    with j.consume("g", worker="w1", **FAST) as ds:
        for d in ds:
            seen.append((d.event.session_id, d.event.branch_id, d.event.sequence))
            assert d.attempt == 1 and d.fence >= 1
            assert d.ack()
    for key in {(s, b) for s, b, _ in seen}:
        last = 10 if key[1] == "main" else 4
        assert [q for s, b, q in seen if (s, b) == key] == list(range(1, last + 1))
    real_backend.restart_empty()
    fill_more = Journal(real_backend.root, real_backend.url).open()
    fill_more.append(EventRecord.new("s0", "main", 11, {"type": "UserMessage", "content": "x"}))
    with j.consume("g", worker="w1", **FAST) as ds:  # from the files: only the new event
        assert [(d.event.session_id, d.event.sequence, d.ack()) for d in ds] == [("s0", 11, True)]
    fill_more.close()
    j.close()


@pytest.mark.parametrize("commit_every", [1, 100])
def test_exactly_once_effects_with_a_sqlite_tracking_table(real_backend: Backend,
                                                          tmp_path: Path,
                                                          commit_every: int) -> None:
    """The handler stores its effect and the position in one SQLite transaction, fenced:
    a redelivery (here: the claim is lost before the ack, twice) changes nothing. Acked
    one by one, the ack itself is refused; committed in batches, the commit after it is,
    and the uncommitted acks come back too."""
    j = real_backend.journal()
    fill(j, 2, 20)
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("create table tracking (session text, branch text, seq int, fence int,"
               " primary key (session, branch))")
    db.execute("create table counts (session text primary key, n int)")
    lost = {("s0", 7), ("s1", 13)}
    deliveries = 0
    batch = {"commit_every": commit_every, "commit_s": 10.0}  # commits are deterministic
    with j.consume("g", worker="w1", **batch, **FAST) as ds:  # type: ignore[arg-type]
        for d in ds:
            deliveries += 1
            e = d.event
            with db:  # one transaction: the effect and the position
                row = db.execute("select seq, fence from tracking where session=? and branch=?",
                                 (e.session_id, e.branch_id)).fetchone()
                if row is not None and (row[0] >= e.sequence or row[1] > d.fence):
                    pass  # already applied, or a newer holder fenced us out
                else:
                    db.execute("insert into counts values (?, 1) on conflict(session) do "
                               "update set n = n + 1", (e.session_id,))
                    db.execute("insert or replace into tracking values (?, ?, ?, ?)",
                               (e.session_id, e.branch_id, e.sequence, d.fence))
            if (e.session_id, e.sequence) in lost:
                lost.discard((e.session_id, e.sequence))
                real_backend.sync_client().delete(
                    session_group_keys("journal", "g", e.session_id).claim)
                acked = d.ack()
                assert acked is (commit_every > 1)  # one by one: refused at once
                continue
            d.ack()
        assert ds.stats["refused"] == 2
    assert deliveries > 40, "the lost claims redelivered events"
    assert dict(db.execute("select session, n from counts")) == {"s0": 20, "s1": 20}
    j.close()


def test_nack_backoff_then_park_then_replay(real_backend: Backend) -> None:
    j = real_backend.journal()
    fill(j, 1, 3)
    attempts: list[int] = []
    with j.consume("g", worker="w1", max_attempts=3, **FAST) as ds:
        for d in ds:
            if d.event.sequence == 2 and not d.replay:
                attempts.append(d.attempt)
                assert d.nack(error="bad event")
            else:
                d.ack()
    assert attempts == [1, 2, 3]
    store = GroupStore(real_backend.root, "g")
    assert [(p.sequence, p.state, p.error) for p in store.parked()] == [(2, "parked", "bad event")]
    assert cli(["--root", str(real_backend.root), "--redis-url", real_backend.url or "",
                "group", "replay-parked", "g"]) == 0
    with j.consume("g", worker="w1", **FAST) as ds:
        replayed = [(d.event.sequence, d.replay, d.ack()) for d in ds]
    assert replayed == [(2, True, True)]
    assert [p.state for p in store.parked()] == ["replayed"]
    j.close()


def test_on_poison_halt_stops_only_that_session_until_replay(real_backend: Backend) -> None:
    """With ``on_poison="halt"``, the failing event halts its session (durably: a Redis
    restarted empty keeps the halt) while the other sessions go on; ``replay-parked``
    resumes it from the halted event."""
    j = real_backend.journal()
    fill(j, 2, 4)
    opts = {**FAST, "max_attempts": 2, "on_poison": "halt"}
    seen: list[tuple[str, int, int]] = []
    with j.consume("g", worker="w1", **opts) as ds:  # type: ignore[arg-type]
        for d in ds:
            seen.append((d.event.session_id, d.event.sequence, d.attempt))
            assert d.nack(error="boom") if (d.event.session_id, d.event.sequence) == (
                "s0", 2) else d.ack()
        assert ds.stats["halted"] == 1
    assert [x for x in seen if x[0] == "s0"] == [("s0", 1, 1), ("s0", 2, 1), ("s0", 2, 2)]
    assert [q for s, q, _ in seen if s == "s1"] == [1, 2, 3, 4]
    store = GroupStore(real_backend.root, "g")
    assert [(p.session_id, p.sequence, p.state) for p in store.parked()] == [("s0", 2, "halted")]
    base = ["--root", str(real_backend.root), "--redis-url", real_backend.url, "group"]
    real_backend.restart_empty()  # the halt survives: it is seeded from the parked log
    j.append(EventRecord.new("s0", "main", 5, {"type": "UserMessage", "content": "5"}))
    with j.consume("g", worker="w1", **opts) as ds:  # type: ignore[arg-type]
        assert [(d.event.session_id, d.ack()) for d in ds] == []
    st = status(j, "g")
    assert {s["session"]: s["halted"] for s in st["sessions"]} == {"s0": "main#2", "s1": None}
    assert st["lag"] == 4  # s0: 2..5
    assert cli([*base, "replay-parked", "g"]) == 0
    with j.consume("g", worker="w1", **opts) as ds:  # type: ignore[arg-type]
        resumed = [(d.event.sequence, d.attempt, d.ack()) for d in ds]
    assert resumed == [(2, 1, True), (3, 1, True), (4, 1, True), (5, 1, True)]
    assert [p.state for p in store.parked()] == ["resumed"]
    assert status(j, "g")["lag"] == 0
    j.close()


def test_a_worker_dying_inside_a_batch_makes_the_next_holder_go_event_by_event(
        real_backend: Backend) -> None:
    """Acks are committed in batches, so a worker that dies mid-batch leaves only the start
    of its run marked. The next holder redelivers the run one event at a time (each one
    marked), so an event that kills every worker that runs it still counts its attempts and
    is parked after ``max_attempts``, and the session goes on."""
    j = real_backend.journal()
    fill(j, 1, 10)
    claim = session_group_keys("journal", "g", "s0").claim
    opts = {**FAST, "commit_every": 100, "commit_s": 10.0, "max_attempts": 2}
    seen: list[tuple[str, int, int]] = []
    for worker in ("a", "b", "c", "d"):
        ds = j.consume("g", worker=worker, **opts)  # type: ignore[arg-type]
        with ds:
            for d in ds:
                seen.append((worker, d.event.sequence, d.attempt))
                if d.event.sequence == 5:  # the handler kills its worker: no ack, no close
                    real_backend.sync_client().delete(claim)  # ... and its claim expires
                    ds.worker.closed = True
                    break
                d.ack()
    assert seen == [("a", 1, 1), ("a", 2, 1), ("a", 3, 1), ("a", 4, 1), ("a", 5, 1),
                    ("b", 1, 2), ("b", 2, 1), ("b", 3, 1), ("b", 4, 1), ("b", 5, 1),
                    ("c", 5, 2),
                    ("d", 6, 1), ("d", 7, 1), ("d", 8, 1), ("d", 9, 1), ("d", 10, 1)]
    parked = GroupStore(real_backend.root, "g").parked()
    assert [(p.sequence, p.attempts, p.error) for p in parked] == [
        (5, 2, "worker lost mid-handler")]
    j.close()


def test_async_consume(real_backend: Backend) -> None:
    fill(real_backend.journal(), 2, 5)

    async def run() -> list[int]:
        j = real_backend.async_journal()
        async with j, j.consume("g", worker="a1", **FAST) as ds:
            return [d.event.sequence async for d in ds if await d.ack()]

    assert sorted(asyncio.run(run())) == sorted(list(range(1, 6)) * 2)


def test_start_latest_and_reset(real_backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    j = real_backend.journal()
    fill(j, 1, 5)
    with j.consume("g", worker="w1", start="latest", **FAST) as ds:
        assert list(ds) == []
    base = ["--root", str(real_backend.root), "--redis-url", real_backend.url or "", "group"]
    assert cli([*base, "reset", "g", "--session", "s0", "--to", "3"]) == 0
    with j.consume("g", worker="w1", **FAST) as ds:
        assert [(d.event.sequence, d.ack()) for d in ds] == [(4, True), (5, True)]
    assert cli([*base, "reset", "g", "--session", "s0", "--to", "9"]) == 2
    assert cli([*base, "status", "nosuchgroup"]) == 2
    assert "beyond the head" in capsys.readouterr().err
    assert cli([*base, "status", "g"]) == 0
    assert "total lag 0" in capsys.readouterr().out
    j.close()


def test_a_joining_worker_gets_work_and_balance_holds(real_backend: Backend) -> None:
    """Two workers in threads (each with its own journal): the second one joins while the
    first holds every session, and gets a share within a few seconds."""
    j = real_backend.journal()
    fill(j, 8, 1)
    stop = threading.Event()
    holders: dict[str, set[str]] = {"w1": set(), "w2": set()}
    joined: list[float] = []

    def work(name: str) -> None:
        jw = Journal(real_backend.root, real_backend.url).open()
        opts = {**FAST, "max_idle_s": None}
        with jw.consume("g", worker=name, **opts) as ds:
            for d in ds:
                holders[name].add(d.event.session_id)
                d.ack()
                if stop.is_set():
                    break
        jw.close()

    t1 = threading.Thread(target=work, args=("w1",))
    t1.start()
    deadline = time.monotonic() + 10
    while len(holders["w1"]) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    t2 = threading.Thread(target=work, args=("w2",))
    t2.start()
    joined.append(time.monotonic())
    deadline = time.monotonic() + 10
    n = 2
    while not holders["w2"] and time.monotonic() < deadline:  # keep events coming
        for s in range(8):
            j.append(EventRecord.new(f"s{s}", "main", n, {"type": "UserMessage", "content": "x"}))
        n += 1
        time.sleep(0.1)
    stop.set()
    for s in range(8):  # wake both so they see the stop flag
        j.append(EventRecord.new(f"s{s}", "main", n, {"type": "UserMessage", "content": "x"}))
    t1.join(timeout=20)
    t2.join(timeout=20)
    assert not t1.is_alive() and not t2.is_alive()
    assert holders["w2"], "the joining worker got sessions"
    j.close()
