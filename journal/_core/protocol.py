"""The append, read and rebuild protocols of docs/design.md, written once, without I/O.

Each protocol is a generator that yields operations (:class:`Lua`, :class:`Call`,
:class:`Blocking`, :class:`Sleep`) and receives their results; a Redis error comes back as a
:class:`~journal.errors.RedisUnavailable` thrown into the generator. The sync and async
journals are thin drivers that execute the operations (see ``driver.py``), so there is one
copy of the protocol. This is the "sans-IO" style of h11 and httpx.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from journal import _fault_hook as fault
from journal._core.keys import SessionKeys, session_keys
from journal._model.announcement import encode_announcement
from journal._model.records import EventRecord
from journal._storage.session_file import SessionStore
from journal.errors import (
    AppendOutcomeUnknown,
    JournalError,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
    StorageError,
)
from journal.settings import JournalSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lua:
    """Run one of the scripts in ``journal/lua`` (by file stem)."""

    script: str
    keys: list[str]
    args: list[str | int | bytes]


@dataclass(frozen=True, slots=True)
class Call:
    """Run one plain Redis command."""

    args: tuple[str | int | bytes, ...]


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run blocking file work (the async driver moves it to a worker thread)."""

    fn: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Send:
    """Send a commit script without waiting for its reply (a pipelined commit)."""

    session_id: str
    lua: Lua


@dataclass(frozen=True, slots=True)
class Collect:
    """The reply of the session's pipelined commit, once Redis ran it (None: none pending,
    or another caller already read it)."""

    session_id: str


Op = Lua | Call | Blocking | Sleep | Send | Collect
Steps = Generator[Op, Any, T]


class LeaseLost(JournalError):
    """Internal: our lease may have expired before we touched the file."""


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LeaseClock:
    """Our own, conservative view of the lease: it starts before the begin call was sent,
    and we stop trusting it a safety margin before it expires."""

    def __init__(self, lease_ms: int) -> None:
        # 80 % of the lease, less a margin for the clock and the trip to Redis: 20 ms, or a
        # fifth of the lease for the short holds (lease_hold_ms) of a busy writer.
        seconds = lease_ms / 1000
        self.deadline = time.monotonic() + seconds * 0.8 - min(0.02, seconds * 0.2)

    def valid(self) -> bool:
        return time.monotonic() < self.deadline

    def guard(self) -> None:
        if not self.valid():
            raise LeaseLost("the writer lease may have expired")


@dataclass(slots=True)
class Held:
    """A lease this process kept after its last commit (for ``lease_hold_ms``). While it is
    valid by our own clock nobody else can write the session, so the next append checks
    its sequence against these heads locally and skips the begin round trip. The commit
    still checks the lease in Redis, so a wrong clock can cost a retry, never an event."""

    token: str
    clock: LeaseClock
    committed: int
    heads: dict[str, int]
    pending: bool = False  # its commit was sent, and the reply is not read yet
    reply: Any = 1  # the commit's reply: 1 means the lease is still ours


def _confirm(held: Held, session_id: str) -> Steps[bool]:
    """Read the reply of a pipelined commit. True while the lease is still ours."""
    if held.pending:
        reply = yield Collect(session_id)
        if reply is not None:
            held.reply, held.pending = reply, False
    return not held.pending and held.reply == 1


def settle_pending(core: Core, session_id: str) -> Steps[None]:
    """Before reading a session, make sure our own pipelined commit ran: read-your-writes."""
    held = core.held.get(session_id)
    if held is not None and held.pending and not (yield from _confirm(held, session_id)):
        core.held.pop(session_id, None)


class Backoff:
    """Bounded exponential backoff with jitter while another writer holds the lease."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.delay = 0.001

    def next(self, pttl_ms: int | None = None) -> float:
        if time.monotonic() >= self.deadline:
            raise LeaseTimeout("gave up waiting for the session's writer lease")
        delay = random.uniform(self.delay / 2, self.delay)
        self.delay = min(self.delay * 2, 0.05)
        if pttl_ms is not None and pttl_ms > 0:
            delay = min(delay, pttl_ms / 1000)
        return delay


_CONTENDED_S = 1.0  # how long a session counts as contended after we met another writer


class Core:
    """Settings plus the names and stores derived from them."""

    def __init__(self, settings: JournalSettings) -> None:
        self.settings = settings
        self.root = Path(settings.root)
        self.publish = "SPUBLISH" if settings.sharded_pubsub else "PUBLISH"
        # Leases kept after a commit, per session. Appends of one session are serialized
        # within a process (journal.py), so one append at a time reads and replaces these.
        self.held: dict[str, Held] = {}
        # Sessions where this process met another writer lately. An idle holder makes
        # waiters wait out its hold, so a contended session is not held at all for a while.
        self.contended_until: dict[str, float] = {}
        self._stores: dict[str, SessionStore] = {}

    def hold_ms(self, session_id: str) -> int:
        """How long to keep the lease after a commit: 0 while the session is contended."""
        until = self.contended_until.get(session_id)
        if until is not None:
            if time.monotonic() < until:
                return 0
            del self.contended_until[session_id]
        return self.settings.lease_hold_ms

    def contended(self, session_id: str) -> None:
        if len(self.contended_until) > 4096:
            self.contended_until.clear()
        self.contended_until[session_id] = time.monotonic() + _CONTENDED_S

    def keys(self, session_id: str) -> SessionKeys:
        return session_keys(self.settings.key_prefix, session_id)

    def store(self, session_id: str) -> SessionStore:
        store = self._stores.get(session_id)
        if store is None:
            if len(self._stores) >= 4096:
                self._stores.clear()  # a plain bound; stores are cheap to make again
            store = self._stores[session_id] = SessionStore(self.root, session_id)
        return store


def _pairs(heads: dict[str, int]) -> list[str | int | bytes]:
    out: list[str | int | bytes] = []
    for branch, head in heads.items():
        out += [branch, head]
    return out


# ----- rebuild ---------------------------------------------------------------------------


def rebuild(core: Core, session_id: str, waiter: Backoff) -> Steps[None]:
    """Re-create a session's Redis state from its file, under a create-only lease."""
    keys, store = core.keys(session_id), core.store(session_id)
    token = uuid.uuid4().hex
    clock = LeaseClock(core.settings.rebuild_lease_ms)
    reply = yield Lua("acquire_rebuild", [keys.state, keys.lease],
                      [token, core.settings.rebuild_lease_ms])
    status = text(reply[0])
    if status == "exists":
        return
    if status == "busy":
        yield Sleep(waiter.next(int(reply[1])))
        return
    if core.settings.lease_hold_ms and (yield Blocking(store.size)):
        # Redis lost every lease, but a writer in another process may still trust its own
        # clock and acknowledge a write for up to one hold window: let that window pass
        # before looking at the tail.
        yield Sleep(core.settings.lease_hold_ms / 1000)
    try:
        found = yield Blocking(lambda: store.rebuild(clock.guard))
    except Exception:  # not GeneratorExit: a closed protocol must not yield again
        yield from _release(keys, token)
        raise
    yield Lua("commit", keys.all,
              [token, "0", found.length, "replace", "", "", *_pairs(found.heads)])


def _release(keys: SessionKeys, token: str) -> Steps[None]:
    """Give the lease back, best effort: if Redis is gone the lease simply expires."""
    with contextlib.suppress(RedisUnavailable):
        yield Lua("release", [keys.lease], [token])


def _state(core: Core, session_id: str, branch_id: str) -> Steps[tuple[int, int] | None]:
    """(committed length, head of the branch), rebuilding the state when Redis lost it;
    None when the session does not exist at all."""
    keys = core.keys(session_id)
    waiter = Backoff(core.settings.lease_wait_s)
    yield from settle_pending(core, session_id)
    rolled = False
    while True:
        reply = yield Call(("HMGET", keys.state, "len", f"h:{branch_id}"))
        if reply[0] is not None:
            committed = int(reply[0])
            if not rolled:
                rolled = True
                if (yield from _catch_up(core, session_id, committed)):
                    continue
            return committed, int(reply[1] or 0)
        store = core.store(session_id)
        if not (yield Blocking(store.path.exists)):
            return None
        yield from rebuild(core, session_id, waiter)


def roll_forward(core: Core, session_id: str) -> Steps[bool]:
    """The file is longer than the committed length and nobody holds the lease: a writer
    died after its write, or Redis refused a pipelined commit. Those lines are committed by
    the roll-forward rule, so a reader makes them visible now instead of waiting for the
    next writer. True when it recovered (the caller reads the state again)."""
    keys, store = core.keys(session_id), core.store(session_id)
    token = uuid.uuid4().hex
    clock = LeaseClock(core.settings.lease_ms)
    reply = yield Lua("acquire", [keys.state, keys.lease], [token, core.settings.lease_ms])
    if text(reply[0]) != "ok":
        return False  # a writer is at work (it recovers the tail itself), or no state yet
    try:
        yield from _recover(core, keys, token, clock, store, 0)
    except LeaseLost:
        return False
    except Exception:  # not GeneratorExit: a closed protocol must not yield again
        yield from _release(keys, token)
        raise
    yield from _release(keys, token)
    return True


def _stale(core: Core, session_id: str) -> Steps[bool]:
    """An append ahead of Redis's head: that head may be stale (a failover to a replica
    that missed the last commits, a commit whose reply was lost) while the file holds the
    missing lines. Roll them forward before calling it a conflict: the retry of a committed
    event must resolve as stored, not as a conflict. True when it recovered."""
    raw = yield Call(("HGET", core.keys(session_id).state, "len"))
    if raw is None:
        return False
    recovered: bool = yield from _catch_up(core, session_id, int(raw))
    return recovered


def _catch_up(core: Core, session_id: str, committed: int) -> Steps[bool]:
    """Roll forward when the file holds more than Redis says is committed. True when it
    recovered something (the caller reads the state again)."""
    if (yield Blocking(core.store(session_id).size)) <= committed:
        return False
    recovered: bool = yield from roll_forward(core, session_id)
    return recovered


def _heads(fields: dict[str, str]) -> dict[str, int]:
    """The branch heads of a state hash (fields ``h:<branch>``)."""
    return {k[2:]: int(v) for k, v in fields.items() if k.startswith("h:")}


# ----- reads ------------------------------------------------------------------------------


def head(core: Core, session_id: str, branch_id: str) -> Steps[int]:
    state = yield from _state(core, session_id, branch_id)
    return 0 if state is None else state[1]


def read(
    core: Core, session_id: str, branch_id: str, from_sequence: int, limit: int
) -> Steps[list[EventRecord]]:
    state = yield from _state(core, session_id, branch_id)
    if state is None or limit <= 0:
        return []
    committed, top = state
    first = max(from_sequence, 1)
    last = min(top, first + limit - 1)
    store = core.store(session_id)
    records: list[EventRecord] = yield Blocking(
        lambda: store.read(branch_id, first, last, committed)
    )
    return records


def session_state(core: Core, session_id: str) -> Steps[tuple[int, dict[str, int]]]:
    """(committed length, every branch head) of a session; rebuilt when missing."""
    keys = core.keys(session_id)
    waiter = Backoff(core.settings.lease_wait_s)
    yield from settle_pending(core, session_id)
    rolled = False
    while True:
        raw = yield Call(("HGETALL", keys.state))
        fields = {text(k): text(v) for k, v in (raw or {}).items()}
        if "len" in fields and not rolled:
            rolled = True
            if (yield from _catch_up(core, session_id, int(fields["len"]))):
                continue
        if "len" in fields:
            return int(fields["len"]), _heads(fields)
        if not (yield Blocking(core.store(session_id).path.exists)):
            return 0, {}
        yield from rebuild(core, session_id, waiter)


# ----- append -----------------------------------------------------------------------------


_RETRY = object()
# Rounds an append may start over (lease lost before writing, or its lines were cut after a
# stale writer's bytes landed first). Busy waits are bounded by lease_wait_s instead.
_MAX_ROUNDS = 1000


def append(core: Core, records: list[EventRecord], data: bytes) -> Steps[list[EventRecord]]:
    """Append a checked, contiguous batch (``data`` is its encoded lines)."""
    first = records[0]
    keys = core.keys(first.session_id)
    lease_ms = core.settings.lease_ms
    waiter = Backoff(core.settings.lease_wait_s)
    # Taken out while we work: whatever goes wrong, no stale lease state stays behind.
    held = core.held.pop(first.session_id, None)
    token = held.token if held is not None else uuid.uuid4().hex
    if held is not None and not (yield from _confirm(held, first.session_id)):
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
            clock = LeaseClock(lease_ms)
            reply = yield Lua("begin", [keys.state, keys.lease, keys.want],
                              [token, lease_ms, first.branch_id, first.sequence])
            status = text(reply[0])
            if status == "rebuild":
                yield from rebuild(core, first.session_id, waiter)
                continue
            if status == "busy":
                core.contended(first.session_id)
                yield Sleep(waiter.next(int(reply[1])))
                continue
            if status == "conflict":
                top = int(reply[1])
                if first.sequence > top + 1 and (yield from _stale(core, first.session_id)):
                    continue  # Redis's head was stale: the file had more; look again
                return (yield from _resolve_conflict(core, records, top))
            committed, head_now = int(reply[1]), int(reply[2])
        fault.hit("after_begin")
        try:
            outcome = yield from _under_lease(
                core, keys, token, clock, records, data, committed, head_now, fast
            )
        except LeaseLost:
            # We lost the lease before our bytes reached the file: nothing of ours is there.
            continue
        except OSError as exc:
            yield from _release(keys, token)
            raise StorageError(f"writing {core.store(first.session_id).path}: {exc}") from exc
        except (SequenceConflict, JournalError):
            yield from _release(keys, token)
            raise
        if outcome is _RETRY:
            yield from _release(keys, token)
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
        if (yield from _confirm(held, session_id)):
            yield from _release(core.keys(session_id), held.token)


def _recover(
    core: Core, keys: SessionKeys, token: str, clock: LeaseClock, store: SessionStore,
    committed: int,
) -> Steps[tuple[int, dict[str, int], list[str]]]:
    """Tail recovery under our lease; commits what it rolled forward. Returns the new
    committed length, the heads, and the event ids of the lines it kept."""
    flat = yield Lua("recover_state", [keys.state, keys.lease], [token])
    if not flat:
        raise LeaseLost("the lease is gone: Redis restarted or it expired")
    fields = {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    heads = _heads(fields)
    # Recover from the committed length Redis holds under our lease: never from a length
    # we learnt earlier, which a restart and another writer's rebuild may have outdated.
    committed = int(fields.get("len", committed))
    found = yield Blocking(lambda: store.recover_tail(committed, heads, clock.guard))
    heads.update(found.heads)
    ok = yield Lua("commit", keys.all,
                   [token, core.settings.lease_ms, found.length, "update", "", "",
                    *_pairs(found.heads)])
    if not ok:
        raise LeaseLost("lost the lease during tail recovery")
    return found.length, heads, [line.event_id for line in found.kept]


def _under_lease(
    core: Core, keys: SessionKeys, token: str, clock: LeaseClock,
    records: list[EventRecord], data: bytes, committed: int, head_now: int, fast: bool = False,
) -> Steps[Any]:
    first, last = records[0], records[-1]
    branch = first.branch_id
    store = core.store(first.session_id)
    size = yield Blocking(lambda: store.size_for_append(fast))
    if size < committed:
        raise StorageError(
            f"{store.path} holds {size} bytes but {committed} are committed: it was truncated "
            "or replaced outside the journal; run `journal verify`"
        )
    if size > committed:
        # A writer died after or during its write: roll its tail forward or cut it first.
        committed, heads, _ = yield from _recover(core, keys, token, clock, store, committed)
        head_now = heads.get(branch, 0)
        if head_now + 1 != first.sequence:
            yield from _release(keys, token)
            return (yield from _resolve_conflict(core, records, head_now)), None
    sync = core.settings.durability != "none"
    lengths = [len(line) + 1 for line in data.split(b"\n")[:-1]]

    def write() -> tuple[int, int, float]:
        clock.guard()
        # The intent: if this write does not finish, recovery cuts all of it.
        store.write_hint(committed, committed + len(data))
        try:
            start, end = store.append(data, sync)
        except OSError:
            _take_back(store, committed, clock)
            raise
        synced_at = time.monotonic()
        if start == committed:
            # Our synced lines sit right at the committed length and continue their branch:
            # any recovery rolls them forward, so they are committed from here on, and the
            # hint may say so. A rebuild then never truncates below it.
            with contextlib.suppress(OSError):  # a cache: only a bound for rebuilds
                store.write_hint(end)
            rows, offset = [], start
            for n in lengths:
                rows.append((offset, n))
                offset += n
            # The index is a cache: readers fall back to a scan, the next writer repairs it.
            with contextlib.suppress(OSError, JournalError):
                store.index_append(branch, head_now, rows, committed)
        return start, end, synced_at

    start, end, synced_at = yield Blocking(write)
    if start != committed:
        # A stale writer's bytes landed before ours. Recover everything past the committed
        # length: our lines are kept if they still continue their branch, or cut.
        committed, heads, survivors = yield from _recover(
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
    hold_clock = LeaseClock(hold_ms)  # started before the commit is sent: conservative
    commit = Lua("commit", keys.all,
                 [token, hold_ms, end, "update", core.publish, message, branch, last.sequence])
    if fast and hold_ms and synced_at < clock.deadline and start == committed:
        # Pipelined commit. Our lines are synced at the committed length, inside a lease
        # whose last commit Redis confirmed: by the roll-forward rule they are committed
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


def _take_back(store: SessionStore, committed: int, clock: LeaseClock) -> None:
    """Our write or its sync failed: cut whatever of it reached the file, so that "nothing
    was committed" (StorageError) stays true. If we cannot, the outcome is unknown."""
    try:
        if store.size() > committed:
            store.truncate(committed, clock.guard)
    except (OSError, LeaseLost) as exc:
        raise AppendOutcomeUnknown(
            f"a failed write to {store.path} could not be taken back ({exc}); retry the same "
            "records to resolve it"
        ) from exc


def _resolve_conflict(
    core: Core, records: list[EventRecord], head_now: int
) -> Steps[list[EventRecord]]:
    """An append that conflicts succeeds when the very same events are already stored (an
    idempotent retry); otherwise it is a :class:`SequenceConflict`."""
    first, last = records[0], records[-1]
    if last.sequence <= head_now:
        stored = yield from read(core, first.session_id, first.branch_id, first.sequence,
                                 len(records))
        if [r.event_id for r in stored] == [r.event_id for r in records]:
            return stored
    raise SequenceConflict(first.session_id, first.branch_id, head_now + 1, first.sequence)
