"""Bringing Redis back in line with the file: the rebuild of a lost session state, tail
recovery under a lease, and the roll-forward a reader triggers (docs/design.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from journal import _fault_hook as fault
from journal._core.keys import SessionKeys
from journal._core.ops import Blocking, Call, Collect, Lua, Sleep, Steps, text
from journal._core.state import (
    Backoff,
    Core,
    Fenced,
    Held,
    LeaseClock,
    LeaseLost,
    heads_of,
    pairs,
)
from journal._storage import gate
from journal._storage.session_file import SessionStore
from journal.errors import LeaseTimeout, RedisUnavailable

T = TypeVar("T")


def confirm(held: Held, session_id: str) -> Steps[bool]:
    """Read the reply of a pipelined commit. True while the lease is still ours."""
    if held.pending:
        reply = yield Collect(session_id)
        if reply is not None:
            held.reply, held.pending = reply, False
    return not held.pending and held.reply == 1


def settle_pending(core: Core, session_id: str) -> Steps[None]:
    """Before reading a session, make sure our own pipelined commit ran: read-your-writes."""
    held = core.held.get(session_id)
    if held is not None and held.pending and not (yield from confirm(held, session_id)):
        core.held.pop(session_id, None)


def release(keys: SessionKeys, token: str) -> Steps[None]:
    """Give the lease back, best effort: if Redis is gone the lease simply expires."""
    with contextlib.suppress(RedisUnavailable):
        yield Lua("release", [keys.lease], [token])


# Tries of a fenced step whose window ran out between Redis's answer and the step itself
# (a slow thread hop on a busy machine): each asks Redis again.
_FENCE_TRIES = 5


def fenced(core: Core, keys: SessionKeys, token: str, lease: LeaseClock,
           step: Callable[[Callable[[], None]], T]) -> Steps[T]:
    """Run ``step``, a blocking step that destroys bytes (a cut, an unlink, a rename over
    the file), only right after Redis confirmed that the lease is still ours. ``step`` gets
    a guard, and calls it right before it destroys anything.

    Our clock of the ``lease`` covers its expiry, but not a lease that died with Redis (a
    restart): that one still looks valid by our clock for its whole length, seconds for a
    life-cycle operation. A rebuild waits at least ``fence_ms`` before it lets any writer
    in, so the guard passes for ``fence_ms`` (less the clock's margin) from the question,
    never past ``lease``: the step starts before another writer can have written. Raises
    :class:`Fenced` when Redis says the lease is gone, ``LeaseLost`` when our clock of
    ``lease`` ran out."""
    for _try in range(_FENCE_TRIES):
        # Expired by our own clock: the work outran its lease (the caller may try again
        # with a longer one); not ours while our clock still trusts it: Redis lost it.
        lease.guard()
        window = core.lease_clock(core.settings.fence_ms)  # started before the question
        window.deadline = min(window.deadline, lease.deadline)
        owner = yield Call(("GET", keys.lease))
        if owner is None or text(owner) != token:
            raise Fenced("the lease is no longer ours in Redis (it restarted, or expired)")
        try:
            done: T = yield Blocking(partial(step, window.guard))
            return done
        except LeaseLost:
            if not lease.valid():
                raise
            # Only the fence's window ran out on the way here: ask Redis again.
    raise LeaseLost(f"a fenced step missed its window {_FENCE_TRIES} times in a row (fence_ms "
                    "too short for this machine?)")


def rebuild(core: Core, session_id: str, waiter: Backoff, full: bool = False) -> Steps[None]:
    """Re-create a session's Redis state from its file, under a create-only lease.
    ``full``: check every line (the operator's rebuild), not the index's fast path."""
    keys, store = core.keys(session_id), core.store(session_id)
    token = core.env.token()
    longest = core.settings.rebuild_lease_ms
    # A lease sized by the file, so that a rebuilder killed on the way (a writer of a fleet
    # just after Redis restarted) stops the session only briefly; the longest lease is for
    # the operator's full rebuild, and for a second try when the file read slower than that.
    size = yield Blocking(store.size)
    lease_ms = longest if full else core.work_lease_ms(size)
    while True:
        clock = core.lease_clock(lease_ms)
        reply = yield Lua("acquire_rebuild", [keys.state, keys.lease], [token, lease_ms])
        status = text(reply[0])
        if status == "exists":
            return
        if status == "busy":
            yield Sleep(waiter.next(int(reply[1])))
            return
        fault.hit("rebuild:after_lease")
        if size or (yield Blocking(partial(gate.exists, store))):  # (archived: no file)
            # Redis lost every lease, but a holder in another process may still trust its
            # own clock: a writer acknowledging within its hold window, or a life-cycle step
            # that Redis fenced just before (see fence). Let that window pass before
            # looking at the tail.
            yield Sleep(core.rebuild_wait_ms / 1000)
        try:
            # Writers that never sync may leave the hint past the data after a crash.
            unsynced = core.settings.durability == "none"
            found = yield Blocking(partial(gate.rebuild, store, clock.guard, full, unsynced))
            fault.hit("rebuild:after_scan")
            if found.truncated_from is not None:  # junk past the last good line: cut, fenced
                yield from fenced(core, keys, token, clock, partial(store.cut_tail, found))
        except Fenced:  # Redis lost our lease (it restarted again): start over
            continue
        except LeaseLost as exc:  # the guard refused a step: the work outran the lease
            yield from release(keys, token)
            if lease_ms >= longest:
                raise LeaseTimeout(
                    f"the rebuild of {session_id} outran even rebuild_lease_ms ({longest} ms): "
                    "raise it for a disk this slow") from exc
            lease_ms = longest
            continue
        except Exception:  # not GeneratorExit: a closed protocol must not yield again
            yield from release(keys, token)
            raise
        ok = yield Lua("commit", keys.all,
                       [token, "0", found.length, "replace", "", "", *pairs(found.heads)])
        if not ok and lease_ms < longest:
            # The read outran the lease without meeting a guard (it only guards a cut):
            # Redis refused the commit. The next try takes the longest lease.
            lease_ms = longest
            continue
        return


def recover(
    core: Core, keys: SessionKeys, token: str, clock: LeaseClock, store: SessionStore,
    committed: int,
) -> Steps[tuple[int, dict[str, int], list[str]]]:
    """Tail recovery under our lease; commits what it rolled forward. Returns the new
    committed length, the heads, and the event ids of the lines it kept."""
    flat = yield Lua("recover_state", [keys.state, keys.lease], [token])
    if not flat:
        raise LeaseLost("the lease is gone: Redis restarted or it expired")
    fields = {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    heads = heads_of(fields)
    # Recover from the committed length Redis holds under our lease: never from a length
    # we learnt earlier, which a restart and another writer's rebuild may have outdated.
    committed = int(fields.get("len", committed))
    found = yield Blocking(partial(store.scan_tail, committed, heads))
    fault.hit("recover:after_scan")
    settle = partial(store.settle_tail, found, heads)
    if found.truncated_from is not None:
        # Cutting destroys bytes: only right after Redis confirmed the lease, not on the
        # strength of our own clock, which may outlive a lease that died with Redis.
        yield from fenced(core, keys, token, clock, settle)
    else:
        yield Blocking(partial(settle, clock.guard))
    heads.update(found.heads)
    ok = yield Lua("commit", keys.all,
                   [token, core.settings.lease_ms, found.length, "update", "", "",
                    *pairs(found.heads)])
    # 1 only: 2 means the recovery committed but let the lease go to a waiting writer, and
    # an append that goes on without the lease could be cut by that writer's recovery.
    if ok != 1:
        raise LeaseLost("lost the lease during tail recovery")
    return found.length, heads, [line.event_id for line in found.kept]


def roll_forward(core: Core, session_id: str) -> Steps[bool]:
    """The file is longer than the committed length and nobody holds the lease: a writer
    died after its write, or Redis refused a pipelined commit. Those lines are committed by
    the roll-forward rule, so a reader makes them visible now instead of waiting for the
    next writer. True when it recovered (the caller reads the state again)."""
    keys, store = core.keys(session_id), core.store(session_id)
    token = core.env.token()
    clock = core.lease_clock(core.settings.lease_ms)
    reply = yield Lua("acquire", [keys.state, keys.lease], [token, core.settings.lease_ms])
    if text(reply[0]) != "ok":
        return False  # a writer is at work (it recovers the tail itself), or no state yet
    try:
        yield from recover(core, keys, token, clock, store, 0)
    except LeaseLost:
        return False
    except Exception:  # not GeneratorExit: a closed protocol must not yield again
        yield from release(keys, token)
        raise
    yield from release(keys, token)
    return True


def catch_up(core: Core, session_id: str, committed: int) -> Steps[bool]:
    """Roll forward when the file holds more than Redis says is committed. True when it
    recovered something (the caller reads the state again)."""
    if (yield Blocking(core.store(session_id).size)) <= committed:
        return False
    recovered: bool = yield from roll_forward(core, session_id)
    return recovered


def stale(core: Core, session_id: str) -> Steps[bool]:
    """An append ahead of Redis's head: that head may be stale (a failover to a replica
    that missed the last commits, a commit whose reply was lost) while the file holds the
    missing lines. Roll them forward before calling it a conflict: the retry of a committed
    event must resolve as stored, not as a conflict. True when it recovered."""
    raw = yield Call(("HGET", core.keys(session_id).state, "len"))
    if raw is None:
        return False
    recovered: bool = yield from catch_up(core, session_id, int(raw))
    return recovered
