"""The append protocol (docs/design.md, "The append protocol"): begin under a lease (or
reuse a held one), write and fdatasync under it, commit, and the windows in between where
the lease may be lost. Also the give-back of held leases on close."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from journal import _fault_hook as fault
from journal import _observe
from journal._core.keys import SessionKeys
from journal._core.ops import Blocking, Lua, Send, Sleep, Steps, text
from journal._core.read import read
from journal._core.rebuild import confirm, fenced, rebuild, recover, release, stale
from journal._core.state import Core, Held, LeaseClock, LeaseLost
from journal._model.announcement import encode_announcement
from journal._model.records import EventRecord
from journal._storage import gate
from journal._storage.session_file import SessionStore
from journal.errors import (
    AppendOutcomeUnknown,
    HistoryTruncated,
    JournalError,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
    SessionDeleted,
    StorageError,
)

_RETRY = object()
# A commit refused after our lines were synced at the committed length: another round
# finds them, and an error it meets then no longer means "not stored" (see append).
_REFUSED = object()
# What a later round may raise that would tell the caller "not stored"; after _REFUSED the
# truth is "unknown" (our lines were committed by the roll-forward rule, then perhaps hidden
# by a truncate or cut on purpose by a delete).
_FINAL = (SequenceConflict, StorageError, HistoryTruncated, SessionDeleted)
# Rounds an append may start over (lease lost before writing, or its lines were cut after a
# stale writer's bytes landed first). Busy waits are bounded by lease_wait_s instead.
_MAX_ROUNDS = 1000
# A wait for a busy lease at least this long is worth a log line (contention, or a writer
# that holds the lease while it stalls).
LEASE_WAIT_LOG_S = 0.5
_log = logging.getLogger("journal.append")


def append(core: Core, records: list[EventRecord], data: bytes) -> Steps[list[EventRecord]]:
    """Append a checked, contiguous batch (``data`` is its encoded lines)."""
    refused: list[bool] = []
    try:
        return (yield from _rounds(core, records, data, refused))
    except _FINAL as exc:
        if not refused:
            raise
        first, last = records[0], records[-1]
        raise AppendOutcomeUnknown(
            f"the writer lease for {first.session_id} ran out before the commit of "
            f"{first.branch_id} {first.sequence}..{last.sequence}, and the round after it "
            f"met: {exc}; retry the same records to resolve it"
        ) from exc


def _rounds(core: Core, records: list[EventRecord], data: bytes,
            refused: list[bool]) -> Steps[list[EventRecord]]:
    first = records[0]
    keys = core.keys(first.session_id)
    lease_ms = core.settings.lease_ms
    waiter = core.backoff()
    waited = 0.0
    # Taken out while we work: whatever goes wrong, no stale lease state stays behind.
    held = core.held.pop(first.session_id, None)
    token = held.token if held is not None else core.env.token()
    if held is not None and not (yield from confirm(held, first.session_id)):
        held = None  # our last commit found the lease gone, or handed it to a waiter
    for _attempt in range(_MAX_ROUNDS):
        known: dict[str, int] = {}
        fast = False
        if held is not None and held.clock.valid() and first.branch_id in held.heads:
            clock, committed, known = held.clock, held.committed, held.heads
            head_now = known[first.branch_id]
            if head_now + 1 != first.sequence:
                core.held[first.session_id] = held  # we keep holding; nothing was written
                return (yield from _resolve_conflict(core, records, head_now))
            held = None  # one fast attempt; any retry goes through begin
            fast = True
        else:
            held = None
            clock = core.lease_clock(lease_ms)
            reply = yield Lua("begin", [keys.state, keys.lease, keys.want],
                              [token, lease_ms, first.branch_id, first.sequence])
            status = text(reply[0])
            if status == "rebuild":
                yield from rebuild(core, first.session_id, waiter)
                continue
            if status == "busy":
                core.contended(first.session_id)
                delay = waiter.next(int(reply[1]))
                _observe.emit("lease_wait", seconds=delay, session_id=first.session_id)
                waited += delay
                yield Sleep(delay)
                continue
            if status == "conflict":
                top = int(reply[1])
                if first.sequence > top + 1 and (yield from stale(core, first.session_id)):
                    continue  # Redis's head was stale: the file had more; look again
                return (yield from _resolve_conflict(core, records, top))
            committed, head_now = int(reply[1]), int(reply[2])
            if waited >= LEASE_WAIT_LOG_S:
                _log.info("%s: waited %.2f s for the writer lease", first.session_id, waited,
                          extra={"event": "lease_wait", "session_id": first.session_id,
                                 "waited_s": round(waited, 3)})
            waited = 0.0
        fault.hit("after_begin")
        try:
            outcome = yield from _under_lease(
                core, keys, token, clock, records, data, committed, head_now, fast
            )
        except LeaseLost:
            # We lost the lease before our bytes reached the file: nothing of ours is there.
            continue
        except OSError as exc:
            yield from release(keys, token)
            raise StorageError(f"writing {core.store(first.session_id).path}: {exc}") from exc
        except (SequenceConflict, JournalError):
            yield from release(keys, token)
            raise
        if outcome is _RETRY or outcome is _REFUSED:
            if outcome is _REFUSED:
                refused.append(True)
            yield from release(keys, token)
            continue
        stored, kept = outcome
        if kept is not None:
            kept.heads = {**known, **kept.heads}
            core.held[first.session_id] = kept
        result: list[EventRecord] = stored
        return result
    raise LeaseTimeout(
        f"append to {first.session_id}/{first.branch_id} lost its lease {_MAX_ROUNDS} times in "
        "a row (lease_ms too short for this disk?)"
    )


def release_held(core: Core) -> Steps[None]:
    """Give back every lease this process still holds (on close), so others need not wait
    for them to expire."""
    while core.held:
        session_id, held = core.held.popitem()
        if not (yield from confirm(held, session_id)):
            continue
        keys, store = core.keys(session_id), core.store(session_id)
        # The deferred caches are written under the lease only: the held one while our
        # clock trusts it, else the lease taken back, if nobody wrote since our commit.
        if not held.clock.valid() and store.deferred():
            clock = core.lease_clock(core.settings.lease_ms)
            reply = yield Lua("reclaim", [keys.state, keys.lease],
                              [held.token, core.settings.lease_ms])
            if text(reply[0]) != "ok":
                continue  # another writer holds it (or Redis lost the state): its business
            if int(reply[1]) != held.committed:
                # Someone wrote since our commit: our entries may not describe the file any
                # more. The next writer catches the index up from the file itself.
                yield from release(keys, held.token)
                continue
            held.clock = clock
        if store.deferred():
            yield Blocking(partial(store.flush, held.clock.guard))
        yield from release(keys, held.token)


def _under_lease(
    core: Core, keys: SessionKeys, token: str, clock: LeaseClock,
    records: list[EventRecord], data: bytes, committed: int, head_now: int, fast: bool = False,
) -> Steps[Any]:
    first, last = records[0], records[-1]
    branch = first.branch_id
    store = core.store(first.session_id)
    sync = core.settings.durability != "none"
    # The common case is one blocking step (one thread hop in the async shell): the file
    # holds exactly the committed length, so the write follows the size check at once.
    outcome = yield from _written(core, keys, token, clock, store, committed, partial(
        _write_if_committed, store, fast, clock, core.env.now, data, sync, committed, branch,
        head_now))
    # Whether the write landed on its first try, on the held lease: no recovery or reopen
    # ran in this append (a recovery commits with the full lease_ms, which only a renewed
    # hold shortens again).
    steady = fast
    if isinstance(outcome, int):
        steady = False
        size = outcome
        if size < committed:
            # Another host's committed bytes may not be visible here yet (a shared mount's
            # cache): wait for them, bounded. An archived session reopens; anything else is
            # refused. Never write, recover or truncate on a short view; the lease clock
            # guards whatever follows the wait.
            found = yield Blocking(partial(gate.short_file, store, size, committed))
            if isinstance(found, gate.Restored):
                size = yield from _reopen(core, keys, token, clock, store, found)
            else:
                size = found
        if size > committed:
            # A writer died after or during its write: roll its tail forward or cut it first.
            committed, heads, _ = yield from recover(core, keys, token, clock, store, committed)
            head_now = heads.get(branch, 0)
            if head_now + 1 != first.sequence:
                yield from release(keys, token)
                return (yield from _resolve_conflict(core, records, head_now)), None
        outcome = yield from _written(core, keys, token, clock, store, committed, partial(
            _write, store, clock, core.env.now, data, sync, committed, branch, head_now))
    start, end, synced_at = outcome
    if start != committed:
        # A stale writer's bytes landed before ours. Recover everything past the committed
        # length: our lines are kept if they still continue their branch, or cut.
        steady = False
        committed, heads, survivors = yield from recover(
            core, keys, token, clock, store, committed
        )
        ours = {r.event_id for r in records}
        if not ours.issubset(survivors):
            return _RETRY
        start, end = committed - len(data), committed
    fault.hit("before_commit")
    inline = len(data) <= core.settings.inline_message_max
    message = encode_announcement(first.session_id, branch, first.sequence, last.sequence,
                                  start, end, data if inline else None)
    hold_ms = core.hold_ms(first.session_id)
    hold: int | str = hold_ms
    if steady and hold_ms and core.keeps_hold(clock, hold_ms):
        # The hold our last commits set is still young: this commit leaves its expiry as it
        # is (one Redis call less), and we go on trusting the clock that hold started.
        hold, hold_clock = "", clock
    else:
        hold_clock = core.lease_clock(hold_ms)  # started before the commit is sent
    commit = Lua("commit", keys.all,
                 [token, hold, end, "update", core.publish, message, branch, last.sequence])
    if fast and hold_ms and synced_at < clock.deadline and start == committed:
        # Pipelined commit. Our lines are synced at the committed length, inside the hold
        # a commit Redis confirmed set: by the roll-forward rule they are committed
        # now, whatever happens to the commit we send. Its reply is read before our next
        # operation on this session.
        yield Send(first.session_id, commit)
        fault.hit("after_commit")
        return records, Held(token, hold_clock, end, {branch: last.sequence}, pending=True,
                             reply=None)
    try:
        ok = yield commit
    except RedisUnavailable as exc:
        raise AppendOutcomeUnknown(
            f"commit of {first.session_id}/{branch} {first.sequence}..{last.sequence} "
            f"did not get an answer ({exc}); retry the same records to resolve it"
        ) from exc
    if not ok and start == committed:
        # The lease ran out while we wrote (a slow fsync past a short hold), but our lines
        # are synced at the committed length: by the roll-forward rule they are committed
        # already. Another round finds them (its recovery commits them, or a writer that
        # took the lease since did) and answers as the file says.
        return _REFUSED
    if not ok:
        raise AppendOutcomeUnknown(
            f"the writer lease for {first.session_id} expired before commit of "
            f"{branch} {first.sequence}..{last.sequence}; retry the same records to resolve it"
        )
    fault.hit("after_commit")
    # 1: we still hold the lease; 2: another writer waits, so the script let it go.
    if ok == 2:
        core.contended(first.session_id)
    kept = Held(token, hold_clock, end, {branch: last.sequence}) if ok == 1 and hold_ms else None
    return records, kept


def _reopen(core: Core, keys: SessionKeys, token: str, clock: LeaseClock, store: SessionStore,
            restored: gate.Restored) -> Steps[int]:
    """Install an archived session's restored file, then forget the archive: each step
    fenced (rebuild.fenced), since a lease that died with Redis could otherwise rename over
    a file someone appended to since, or clear the marks of a newer archive and remove it.
    Returns the file's size."""
    yield from fenced(core, keys, token, clock, partial(gate.reopen, store))
    yield from fenced(core, keys, token, clock, partial(gate.forget_archive, store, restored))
    return restored.length


def _write_if_committed(
    store: SessionStore, trusted: bool, clock: LeaseClock, now: Callable[[], float], data: bytes,
    sync: bool, committed: int, branch: str, head_now: int,
) -> tuple[int, int, float] | int:
    """:func:`_write` if the file's size is the committed length; otherwise the size, and
    nothing is written (the protocol deals with a short or long file first)."""
    size = store.size_for_append(trusted, committed)
    if size != committed:
        return size
    return _write(store, clock, now, data, sync, committed, branch, head_now)


def _write(
    store: SessionStore, clock: LeaseClock, now: Callable[[], float], data: bytes, sync: bool,
    committed: int, branch: str, head_now: int,
) -> tuple[int, int, float]:
    """The file work of an append, in one blocking step: the write (after its intent) and
    its sync, then the hint and index caches. Returns (start, end, synced at)."""
    clock.guard()
    try:
        start, end = store.append(data, sync, committed)
    except OSError as exc:
        raise _WriteFailed(exc) from exc
    synced_at = now()
    if start == committed:
        if not clock.valid():
            # We were stopped past our lease: its next holder may have compacted the file
            # since, and our caches (the hint above all, which the file is checked against)
            # would describe the old one. They are dropped; the next writer catches up.
            store.flush(clock.guard)
            return start, end, synced_at
        # Our synced lines sit right at the committed length and continue their branch:
        # any recovery rolls them forward, so they are committed from here on, and the
        # hint may say so. The index is a cache: readers scan past it, the next writer
        # repairs it.
        with contextlib.suppress(OSError, JournalError):
            store.landed(branch, head_now, data, start, end)
    return start, end, synced_at


class _WriteFailed(Exception):
    """Our write or its sync failed (``error``): what of it reached the file goes first."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _written(core: Core, keys: SessionKeys, token: str, clock: LeaseClock, store: SessionStore,
             committed: int, write: Callable[[], Any]) -> Steps[Any]:
    """Run a blocking step that writes; if its write failed, take it back and raise the
    write's own error (``OSError``: the caller reports nothing stored)."""
    try:
        return (yield Blocking(write))
    except _WriteFailed as failed:
        yield from _take_back(core, keys, token, clock, store, committed)
        raise failed.error from None


def _take_back(core: Core, keys: SessionKeys, token: str, clock: LeaseClock,
               store: SessionStore, committed: int) -> Steps[None]:
    """Cut whatever of a failed write reached the file, so that "nothing was committed"
    (StorageError) stays true. A cut destroys bytes, so it waits for Redis to confirm our
    lease (see rebuild.fenced): if Redis lost it on the way, another writer may have
    appended past ``committed`` since. If we cannot, the outcome is unknown."""
    fault.hit("before_take_back")
    try:
        if (yield Blocking(store.size)) > committed:
            yield from fenced(core, keys, token, clock, partial(_cut_back, store, committed))
    except (OSError, LeaseLost, RedisUnavailable) as exc:
        raise AppendOutcomeUnknown(
            f"a failed write to {store.path} could not be taken back ({exc}); retry the same "
            "records to resolve it"
        ) from exc


def _cut_back(store: SessionStore, committed: int, guard: Callable[[], None]) -> None:
    if store.size() > committed:
        store.truncate(committed, guard)


def _resolve_conflict(
    core: Core, records: list[EventRecord], head_now: int
) -> Steps[list[EventRecord]]:
    """An append that conflicts succeeds when the very same events are already stored (an
    idempotent retry); otherwise it is a :class:`SequenceConflict`."""
    first, last = records[0], records[-1]
    if last.sequence <= head_now:
        with contextlib.suppress(HistoryTruncated):  # gone on purpose: a plain conflict
            stored = yield from read(core, first.session_id, first.branch_id, first.sequence,
                                     len(records))
            if [r.event_id for r in stored] == [r.event_id for r in records]:
                return stored
    raise SequenceConflict(first.session_id, first.branch_id, head_now + 1, first.sequence)
