"""The append protocol driven directly, with scripted Redis replies and a fake clock
(``journal.testing.fake_driver``): every lease-loss window, deterministically.

Redis is a script here; the file work is real (on the test's directory), so each test also
checks what the file holds after the window.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from journal import (
    AppendOutcomeUnknown,
    EventRecord,
    LeaseTimeout,
    RedisUnavailable,
    StorageError,
)
from journal._core import append as append_protocol
from journal._core.ops import Lua, Send
from journal._core.pipeline import (
    Connect,
    Disconnect,
    NoScript,
    Pipeline,
    ReadReply,
    Release,
    WireFailed,
    Write,
)
from journal._core.state import Core
from journal._model.records import decode_line, prepare_for_write
from journal.testing.fake_driver import FakeClock, FakeDriver, fake_core

pytestmark = pytest.mark.timeout(30)

HOLD_S = 0.1  # lease_hold_ms=100: a held lease is trusted for 60 ms of the fake clock


def batch(*seqs: int) -> tuple[list[EventRecord], bytes]:
    return prepare_for_write(
        [EventRecord.new("s1", "main", s, {"type": "UserMessage", "content": f"m{s}"})
         for s in seqs],
        max_record_bytes=1 << 20, max_id_length=128,
    )


def append(core: Core, driver: FakeDriver, *seqs: int) -> list[EventRecord]:
    return driver.run(append_protocol.append(core, *batch(*seqs)))


def lines(root: Path) -> list[int]:
    path = root / "events" / "s1.jsonl"
    if not path.exists():
        return []
    return [decode_line(line).sequence for line in path.read_bytes().splitlines()]


def size(core: Core) -> int:
    return (core.root / "events" / "s1.jsonl").stat().st_size


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(tmp_path: Path, clock: FakeClock) -> Core:
    return fake_core(tmp_path, clock, lease_ms=2000, lease_hold_ms=100, lease_wait_s=0.05)


def begun(committed: int = 0, head: int = 0) -> tuple[str, list[object]]:
    return ("begin", [b"ok", committed, head])


def test_a_round_is_begin_write_commit_and_keeps_the_lease(core: Core, clock: FakeClock) -> None:
    d = FakeDriver(clock, [begun(), ("commit", 1)])
    stored = append(core, d, 1)
    assert [r.sequence for r in stored] == [1]
    assert d.seen == ["begin", "file:_write_if_committed", "commit"]
    assert lines(core.root) == [1]
    assert core.held["s1"].token == "tok-1" and core.held["s1"].heads == {"main": 1}


def test_lease_expired_by_the_clock_before_the_write_writes_nothing_and_begins_again(
    core: Core, clock: FakeClock
) -> None:
    """Our clock passes the lease's safe deadline between begin and write: the write's
    guard refuses, nothing of ours reaches the file, and the append starts over."""
    d = FakeDriver(clock, [begun(), begun(), ("commit", 1)],
                   before_file={"_write_if_committed": lambda: clock.advance(2.0)})
    assert [r.sequence for r in append(core, d, 1)] == [1]
    assert d.seen == ["begin", "file:_write_if_committed",  # refused: nothing written
                      "begin", "file:_write_if_committed", "commit"]
    assert lines(core.root) == [1]


def test_lease_lost_in_redis_after_begin_is_resolved_by_another_round(
    core: Core, clock: FakeClock
) -> None:
    """Redis dropped the lease after our begin (it expired there, or Redis restarted): the
    commit refuses (0). Our line is synced at the committed length, so the roll-forward
    rule has committed it: another round finds it (here a writer that took the lease since
    rolled it forward) and the append succeeds, instead of reporting "unknown"."""
    d = FakeDriver(clock, [begun(), ("commit", 0), ("release", 0), ("begin", [b"conflict", 1]),
                           ("HMGET", lambda op: [size(core), 1])])
    stored = append(core, d, 1)
    assert [r.sequence for r in stored] == [1]
    assert d.seen[:4] == ["begin", "file:_write_if_committed", "commit", "release"]
    assert lines(core.root) == [1]
    assert "s1" not in core.held


def test_a_final_error_after_a_refused_commit_is_an_unknown_outcome(
    core: Core, clock: FakeClock
) -> None:
    """After a refused commit our synced line is committed by the roll-forward rule, so an
    error of the round after it (here a storage error) must not tell the caller "not
    stored": it is reported as an unknown outcome, with the error it met."""
    d = FakeDriver(clock, [begun(), ("commit", 0), ("release", 0),
                           ("begin", StorageError("the disk went away"))])
    with pytest.raises(AppendOutcomeUnknown, match=r"ran out before the commit.*disk went away"):
        append(core, d, 1)
    assert lines(core.root) == [1]
    d2 = FakeDriver(clock, [("begin", StorageError("the disk went away"))])
    with pytest.raises(StorageError):  # without a refused commit before it: as it is
        append(core, d2, 2)


def test_redis_gone_after_the_write_is_an_unknown_outcome(core: Core, clock: FakeClock) -> None:
    gone = RedisUnavailable("connection reset")
    d = FakeDriver(clock, [begun(), ("commit", gone), ("release", gone)])  # best effort
    with pytest.raises(AppendOutcomeUnknown, match="did not get an answer"):
        append(core, d, 1)
    assert lines(core.root) == [1]
    assert "s1" not in core.held


def test_lease_lost_before_commit_under_a_held_lease(core: Core, clock: FakeClock) -> None:
    """The held lease still looks valid to us, but its pipelined commit's reply says Redis
    took it away (a waiter got it): the next append goes through begin again."""
    d = FakeDriver(clock, [begun(), ("commit", 1)])
    append(core, d, 1)
    # Fast path: no begin; the commit is pipelined (sent, reply read later).
    d.expect(("send:commit", None))
    append(core, d, 2)
    assert d.seen[-2:] == ["file:_write_if_committed", "send:commit"]
    assert core.held["s1"].pending
    # The reply says the lease is gone (2: handed to a waiter), so: begin again.
    d.expect(("collect", 2), begun(size(core), 2), ("commit", 1))
    append(core, d, 3)
    assert d.seen[-4:] == ["collect", "begin", "file:_write_if_committed", "commit"]
    assert lines(core.root) == [1, 2, 3]


def test_lost_reply_of_a_pipelined_commit(core: Core, clock: FakeClock) -> None:
    """The connection dropped before the pipelined commit's reply was read (the driver
    reports 0): the events are on disk at the committed length, so they stay acknowledged;
    the lease is not trusted any more and the next append begins again."""
    d = FakeDriver(clock, [begun(), ("commit", 1), ("send:commit", None)])
    append(core, d, 1)
    assert [r.sequence for r in append(core, d, 2)] == [2]
    d.expect(("collect", 0), begun(size(core), 2), ("commit", 1))
    append(core, d, 3)
    assert d.seen[-4:] == ["collect", "begin", "file:_write_if_committed", "commit"]
    assert lines(core.root) == [1, 2, 3]


def test_a_held_lease_expired_by_the_clock_is_not_used(core: Core, clock: FakeClock) -> None:
    d = FakeDriver(clock, [begun(), ("commit", 1)])
    append(core, d, 1)
    clock.advance(HOLD_S)  # past the held lease's safe deadline
    d.expect(begun(size(core), 1), ("commit", 1))
    append(core, d, 2)
    assert d.seen[3:] == ["begin", "file:_write_if_committed", "commit"]


def test_a_young_hold_is_kept_as_it_is_and_renewed_past_its_middle(
    core: Core, clock: FakeClock
) -> None:
    """A commit on a held lease whose hold has more than half its trust left (30 of 60 ms
    here) leaves the lease's expiry alone (hold "") and the writer keeps the hold's clock:
    that clock started before the commit that set the expiry. Past the middle, the commit
    renews the hold, from a new clock."""
    holds: list[object] = []

    def committed(op: Lua) -> int:
        holds.append(op.args[1])
        return 1

    def sent(op: Send) -> None:
        holds.append(op.lua.args[1])

    d = FakeDriver(clock, [begun(), ("commit", committed)])
    append(core, d, 1)
    first = core.held["s1"].clock
    clock.advance(0.02)
    d.expect(("send:commit", sent))
    append(core, d, 2)
    assert holds == [100, ""]
    assert core.held["s1"].clock is first  # still trusted until the first hold's deadline
    clock.advance(0.015)  # 35 ms into a 60 ms trust: less than half is left
    d.expect(("collect", 1), ("send:commit", sent))
    append(core, d, 3)
    assert holds == [100, "", 100]
    assert core.held["s1"].clock.deadline == pytest.approx(clock.now() + 0.06)
    assert lines(core.root) == [1, 2, 3]


def test_a_hold_is_renewed_after_a_recovery_on_the_held_path(
    core: Core, clock: FakeClock
) -> None:
    """A stale writer's line landed at the committed length just before ours: the append
    on the held lease recovers the tail, and that recovery commits with the full lease
    (lease_ms). The append's own commit must then renew the hold, young as it is, or the
    lease would stay with us for lease_ms after we go idle."""
    holds: list[object] = []

    def committed(op: Lua) -> int:
        holds.append(op.args[1])
        return 1

    d = FakeDriver(clock, [begun(), ("commit", 1)])
    append(core, d, 1)
    length = size(core)
    _, stale = prepare_for_write(  # another branch: our line still continues ours
        [EventRecord.new("s1", "alt", 1, {"type": "UserMessage", "content": "stale"})],
        max_record_bytes=1 << 20, max_id_length=128)
    with (core.root / "events" / "s1.jsonl").open("ab") as f:
        f.write(stale)
    clock.advance(0.005)
    d.expect(("recover_state", [b"len", str(length).encode(), b"h:main", b"1"]),
             ("commit", 1), ("commit", committed))
    append(core, d, 2)
    assert d.seen[-6:] == ["file:_write_if_committed", "recover_state", "file:scan_tail",
                           "file:settle_tail", "commit", "commit"]
    assert holds == [100]
    assert core.held["s1"].clock.deadline == pytest.approx(clock.now() + 0.06)
    assert lines(core.root) == [1, 1, 2]


def test_read_your_writes_settles_the_pipelined_commit_first(
    core: Core, clock: FakeClock
) -> None:
    from journal._core.read import head

    d = FakeDriver(clock, [begun(), ("commit", 1), ("send:commit", None)])
    append(core, d, 1)
    append(core, d, 2)
    d.expect(("collect", 1), ("HMGET", [str(size(core)).encode(), b"2"]))
    assert d.run(head(core, "s1", "main")) == 2
    assert d.seen[-3:] == ["collect", "HMGET", "file:size"]


def test_a_busy_lease_backs_off_on_the_injected_clock_then_times_out(
    core: Core, clock: FakeClock
) -> None:
    d = FakeDriver(clock, [("begin", [b"busy", 500])] * 7)
    with pytest.raises(LeaseTimeout):
        append(core, d, 1)
    sleeps = [name for name in d.seen if name.startswith("sleep:")]
    # jitter picks the longest delay: 1, 2, 4, ... ms until lease_wait_s (50 ms) is spent
    assert sleeps == ["sleep:0.001", "sleep:0.002", "sleep:0.004", "sleep:0.008",
                      "sleep:0.016", "sleep:0.032"]
    assert lines(core.root) == []
    assert core.hold_ms("s1") == 0  # met another writer: do not hold the lease for a while
    clock.advance(1.0)
    assert core.hold_ms("s1") == 100


def test_a_lost_state_is_rebuilt_from_the_file_first(core: Core, clock: FakeClock) -> None:
    d = FakeDriver(clock, [begun(), ("commit", 1)])
    append(core, d, 1)
    core.held.clear()
    d.expect(("begin", [b"rebuild"]), ("acquire_rebuild", [b"ok"]), ("commit", 1),
             begun(size(core), 1), ("commit", 1))
    append(core, d, 2)
    assert d.seen[3:] == ["begin", "file:size", "acquire_rebuild", "sleep:0.1",
                          "file:rebuild", "commit", "begin", "file:_write_if_committed",
                          "commit"]
    assert lines(core.root) == [1, 2]


# ----- the pipelined-commit bookkeeping, on its own ------------------------------------------


def drive(steps: object, replies: list[object]) -> tuple[list[object], object]:
    """Run a pipeline generator: each reply answers one wire op (an exception is thrown)."""
    gen = steps  # type: ignore[assignment]
    seen: list[object] = []
    result: object = None
    error: BaseException | None = None
    queue = list(replies)
    while True:
        try:
            op = gen.throw(error) if error is not None else gen.send(result)  # type: ignore[attr-defined]
        except StopIteration as stop:
            return seen, stop.value
        seen.append(op)
        reply = queue.pop(0)
        result, error = (None, reply) if isinstance(reply, BaseException) else (reply, None)


COMMIT = Lua("commit", ["k"], ["tok", 100])


def test_pipeline_sends_then_collects_in_order() -> None:
    p = Pipeline(enabled=True, shas={"commit": "abc"})
    seen, _ = drive(p.send("s1", COMMIT), ["conn", None])
    assert isinstance(seen[0], Connect) and isinstance(seen[1], Write)
    assert b"EVALSHA" in seen[1].data and seen[1].conn == "conn"  # type: ignore[attr-defined]
    drive(p.send("s2", COMMIT), [None])  # the connection is open: one write
    # Collecting s2 reads s1's reply first and keeps it for s1.
    seen, reply = drive(p.collect("s2"), [1, 2])
    assert [type(op) for op in seen] == [ReadReply, ReadReply] and reply == 2
    assert drive(p.collect("s1"), [])[1] == 1
    assert drive(p.collect("s1"), [])[1] is None  # nothing pending any more


def test_pipeline_noscript_runs_the_commit_now() -> None:
    p = Pipeline(enabled=True, shas={"commit": "abc"})
    drive(p.send("s1", COMMIT), ["conn", None])
    seen, reply = drive(p.collect("s1"), [NoScript("NOSCRIPT"), 1])
    assert seen[1] == COMMIT and reply == 1


def test_pipeline_a_broken_connection_loses_every_waiting_reply() -> None:
    p = Pipeline(enabled=True, shas={"commit": "abc"})
    drive(p.send("s1", COMMIT), ["conn", None])
    drive(p.send("s2", COMMIT), [None])
    seen, reply = drive(p.collect("s1"), [WireFailed("reset"), None, None])
    assert [type(op) for op in seen] == [ReadReply, Disconnect, Release] and reply == 0
    assert drive(p.collect("s2"), [])[1] == 0  # unknown: the roll-forward decides
    seen, _ = drive(p.send("s3", COMMIT), ["conn2", None])
    assert isinstance(seen[0], Connect)  # a new connection


def test_pipeline_off_or_a_failed_send_commits_at_once() -> None:
    off = Pipeline(enabled=False, shas={"commit": "abc"})
    seen, _ = drive(off.send("s1", COMMIT), [1])
    assert seen == [COMMIT] and drive(off.collect("s1"), [])[1] == 1
    on = Pipeline(enabled=True, shas={"commit": "abc"})
    seen, _ = drive(on.send("s1", COMMIT), [WireFailed("refused"), WireFailed("down")])
    assert seen == [Connect(), COMMIT]  # connecting failed, then the commit failed too
    assert drive(on.collect("s1"), [])[1] == 0
