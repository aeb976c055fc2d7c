"""Live subscriptions (docs/design.md, "The subscription protocol").

``subscribe`` yields every committed event of one (session, branch) above a sequence, exactly
once and in order, for as long as the caller iterates; ``subscribe_all`` is the firehose over
every session whose id starts with a prefix, in order per (session, branch).

Pub/sub is at-most-once: a message is lost when the connection drops, when Redis restarts,
when Redis cuts a slow client off (client-output-buffer-limit), or when our own bounded
buffer overflows. So pub/sub is only ever treated as a *hint* that carries the records when
it can; the file is the truth, and every gap is filled from it:

1. Listen first and wait for the subscribe confirmation; only then compare against the head
   and replay from the file, page by page. An event committed in between is both in the
   replay and in a message; the duplicate is dropped by sequence.
2. Live: a message at or below the last yielded sequence is dropped; one that continues it is
   yielded from its inline records; a jump, or a message too large to carry its records
   (``e`` is None), is read from the file.
3. When a session has been quiet for ``idle_s``, its head is compared with what we yielded
   (a lost *last* message has no successor to reveal the gap, and lines that a tail
   recovery rolled forward are committed without any message), and the pub/sub connection
   is pinged (a half-open TCP connection delivers nothing and reports nothing).
4. Every (re)subscribe confirmation, including the ones redis-py sends by itself after a
   silent reconnect, makes every known session due for a head check: anything committed
   while we were deaf is read from the file. Redis restarting empty needs nothing special:
   the head protocol rebuilds the state from the file.
5. The live buffer is bounded (``buffer_size`` messages). On overflow it is dropped whole;
   the heads we learnt from the dropped messages stay, so the events are read from the file
   instead. Memory is bounded by the buffer plus one file page.

The firehose (``subscribe_all``, one PSUBSCRIBE on ``channel_pattern``) keeps the same state
per (session, branch). It starts "now": a (session, branch) first heard of live starts at
that message's first sequence (``from_start=True``: at 1); a branch of a known session that
only a head check reveals starts at its head (at 1 with ``from_start``). From its start on,
a stream gets every event exactly once, in order, gaps filled from the file. Two limits,
by design for now: a session that is never announced while we listen (its only messages
fell into a disconnect) is found only when it publishes again; and the firehose keeps a
small record (a few hundred bytes) per (session, branch) it has seen, and the idle check
costs one HGETALL per quiet known session every ``idle_s``.

Sharded pub/sub (``sharded_pubsub=True``, forced on in Redis Cluster mode) has no patterns,
so there the firehose *discovers* the sessions: it lists ``<root>/events/*.jsonl`` every
``discover_s`` (the way worker groups do), takes the heads of the matching sessions that
exist before it listens (that is where "now" starts for them: nothing committed after the
snapshot is skipped), and SSUBSCRIBEs each session's channel, one command per session, on a
connection to its slot's owner. A session found by a later listing was created since, so all
of it is delivered. It waits on its connections in turn (``_POLL_S``: redis-py cannot wait
on several at once), and any lost connection starts them all over. Costs: docs/cluster.md.

On a Redis Cluster a subscription listens on plain connections to the primaries that own
its channels' slots (``connect.sync_owners``/``sync_pubsub_on`` and their asyncio forms);
after any lost connection the slot map is reloaded before it listens again, so it follows a
failover or a slot migration (the old owner drops the connection, or sends a
``sunsubscribe``, which counts as lost).

Memory: the live buffer holds at most ``buffer_size`` messages (each at most
``inline_message_max`` bytes of records), and a file read at most ``page_size`` events.

The logic lives once, in :class:`Follower`, a sans-IO state machine in the style of
``protocol.py``: it is fed pub/sub messages, read results, head-check results and the clock,
and answers with the next :data:`Action` (connect, listen, read this range, check that head,
emit these records, sleep, ...). :class:`SyncSubscription` and :class:`AsyncSubscription`
are thin shells that perform those actions with redis-py's sync or asyncio pub/sub on a
connection of their own, and run the journal's read and head protocols through the
journal's driver. No thread and no background task is started: messages are drained from the
socket whenever the consumer asks for the next event, so closing the iterator (``break``,
``close()``/``aclose()``, cancellation) only has to close its pub/sub connection(s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import msgspec
import redis
from redis.exceptions import RedisClusterException

from journal import _observe
from journal._core import protocol
from journal._core.keys import channel_pattern
from journal._core.ops import Sleep
from journal._core.protocol import text
from journal._core.retry import advance as _advance
from journal._io import connect
from journal._model.announcement import Announcement, decode_announcement, decode_positions
from journal._model.ids import validate_id
from journal._model.records import EventRecord
from journal.errors import (
    HistoryTruncated,
    InvalidInput,
    JournalError,
    LeaseTimeout,
    RedisUnavailable,
    SessionDeleted,
    SubscriptionIdle,
)
from journal.settings import JournalSettings


class Journal(Protocol):
    """What a sync subscription needs of its journal (not the class itself: no cycle)."""

    core: protocol.Core
    settings: JournalSettings

    @property
    def redis(self) -> connect.SyncClient: ...

    def _connect(self) -> Any: ...

    def _run(self, steps: protocol.Steps[Any]) -> Any: ...

    def sessions(self) -> list[str]: ...


class AsyncJournal(Protocol):
    """What an async subscription needs of its journal."""

    core: protocol.Core
    settings: JournalSettings

    @property
    def redis(self) -> connect.AsyncClient: ...

    async def _connect(self) -> Any: ...

    async def _run(self, steps: protocol.Steps[Any]) -> Any: ...

    def sessions(self) -> list[str]: ...

__all__ = [
    "AsyncSubscription",
    "Follower",
    "SubscribeOptions",
    "SubscriptionStats",
    "SyncSubscription",
    "subscribe_all_async",
    "subscribe_all_sync",
    "subscribe_async",
    "subscribe_sync",
]


# ----- options and counters -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """The keyword options of ``subscribe``/``subscribe_all``."""

    page_size: int = 500  # events per file read
    buffer_size: int = 1000  # live messages held before we fall back to the file
    idle_s: float = 1.0  # quiet time before a head check and a pub/sub ping
    health_timeout_s: float = 5.0  # wait for a subscribe confirmation or a pong
    backoff_min_s: float = 0.05  # first reconnect delay (jittered, doubled up to the max)
    backoff_max_s: float = 2.0
    give_up_after_s: float | None = None  # None: retry for as long as the caller iterates
    from_start: bool = False  # firehose: replay a newly seen (session, branch) from 1
    discover_s: float = 1.0  # firehose with sharded pub/sub: how often the root is listed

    @classmethod
    def parse(cls, options: dict[str, Any], *, firehose: bool) -> SubscribeOptions:
        only_firehose = {"from_start", "discover_s"}
        known = {name for name in cls.__dataclass_fields__
                 if firehose or name not in only_firehose}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInput(
                f"unknown subscribe option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        made = cls(**options)
        for name in ("page_size", "buffer_size"):
            value = getattr(made, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("idle_s", "health_timeout_s", "backoff_min_s", "backoff_max_s",
                     "give_up_after_s", "discover_s"):
            value = getattr(made, name)
            if value is None and name == "give_up_after_s":
                continue
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise InvalidInput(f"{name} must be a number > 0, got {value!r}")
        if made.backoff_max_s < made.backoff_min_s:
            raise InvalidInput("backoff_max_s must not be below backoff_min_s")
        if not isinstance(made.from_start, bool):
            raise InvalidInput(f"from_start must be a bool, got {made.from_start!r}")
        return made


@dataclass(slots=True)
class SubscriptionStats:
    """What a subscription did; for tests, monitoring and the curious."""

    connects: int = 0  # subscribe confirmations (the first one, and one per reconnect)
    disconnects: int = 0  # connections we dropped: errors, or no confirmation/pong in time
    overflows: int = 0  # times the live buffer was dropped for the file
    buffer_peak: int = 0  # most live messages ever held at once
    live_events: int = 0  # events yielded from pub/sub messages
    file_events: int = 0  # events yielded from file reads
    file_reads: int = 0
    head_checks: int = 0
    stale_messages: int = 0  # messages at or below what was already yielded
    bad_messages: int = 0  # messages that did not decode as announcements
    # Firehose only (a single-session subscription raises instead):
    sessions_ended: int = 0  # sessions deleted while followed: their streams ended
    truncated_skips: int = 0  # streams moved up to a truncation point (HistoryTruncated)


# ----- the actions the state machine asks for ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a pub/sub connection and send the (S/P)SUBSCRIBE; the confirmation comes later.
    A discovering firehose names the sessions whose channels to SSUBSCRIBE (one connection
    per slot owner); otherwise ``sessions`` is empty and the shell's one channel is meant."""

    sessions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Discovery found these sessions while connected: SSUBSCRIBE their channels too; each
    confirmation is reported with ``on_pubsub(..., session=...)``."""

    sessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Discover:
    """List the root's session files; report them with ``on_sessions``."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the pub/sub connection (idempotent)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """Wait up to ``timeout`` for one message, then drain what is already there, at most
    ``limit`` messages; report each with ``on_pubsub`` and finish with ``on_drained``."""

    timeout: float
    limit: int


@dataclass(frozen=True, slots=True)
class Ping:
    token: str


@dataclass(frozen=True, slots=True)
class Read:
    """Run ``protocol.read`` for sequences ``first ..`` (at most ``limit``); ``on_read``."""

    session_id: str
    branch_id: str
    first: int
    limit: int


@dataclass(frozen=True, slots=True)
class Check:
    """Fetch the head of ``branch_id``, or of every branch when it is None; ``on_heads``."""

    session_id: str
    branch_id: str | None


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand these records to the consumer, in this order (already counted as yielded)."""

    records: list[EventRecord]


Action = Connect | Subscribe | Discover | Disconnect | Sleep | Listen | Ping | Read | Check | Emit

_log = logging.getLogger("journal.subscription")

_PUBLISHED = frozenset({"message", "pmessage", "smessage"})
_CONFIRMED = frozenset({"subscribe", "psubscribe", "ssubscribe"})


@dataclass(slots=True)
class _Stream:
    """One (session, branch) we follow."""

    session_id: str
    branch_id: str
    last: int  # the last sequence handed to the consumer
    target: int  # the highest committed sequence we know of
    pending: deque[Announcement] = field(default_factory=deque)  # inline, above ``last``


class Follower:
    """The subscription protocol as a pure state machine (no I/O, no clock of its own).

    Call :meth:`next_action` with the current monotonic time, perform the action, report the
    outcome with the matching ``on_*`` method (or :meth:`lost` when Redis failed), repeat.
    One instance follows either one (session, branch) or, for the firehose, every
    (session, branch) it hears of.

    With ``discover`` (a session prefix: the firehose over sharded pub/sub, which has no
    patterns) it also asks for the root's session list every ``discover_s`` and listens to
    each matching session's own channel. Sessions listed before the first ``Connect``
    start at their heads, taken before it (so "now" has no hole); sessions found later were
    created since, so every branch of theirs starts at 1.
    """

    def __init__(
        self,
        options: SubscribeOptions,
        *,
        session_id: str | None = None,
        branch_id: str = "main",
        after_sequence: int = 0,
        what: str = "subscription",
        discover: str | None = None,
    ) -> None:
        self.options = options
        self.stats = SubscriptionStats()
        self.what = what
        self._single = session_id is not None
        self._streams: dict[tuple[str, str], _Stream] = {}
        # Streams that may have work, in round-robin order (a dict as an ordered set).
        self._active: dict[tuple[str, str], None] = {}
        # Session -> when we last heard of it or checked its head. Every update is "now"
        # and moves the entry to the end, so the dict stays sorted by time and the first
        # entry is always the next one due for a head check.
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._buffered = 0  # inline announcements held over all streams
        # Firehose: sessions deleted while we followed them. Their ids are never used again,
        # so whatever still arrives for them is stale.
        self._ended: set[str] = set()
        self._ready: list[EventRecord] = []  # to emit next: a file read or a live message
        self._drain = Listen(0.0, options.buffer_size)  # asked for after most emits: made once
        # The pub/sub connection: "down" (connect at retry_at), "confirming", "up".
        self._state = "down"
        self._retry_at = -math.inf
        self._deadline = 0.0
        self._must_close = False
        self._delay = options.backoff_min_s
        self._failing_since: float | None = None
        self._last_error = ""
        self._heard = 0.0  # last message of any kind on the pub/sub connection
        self._ping: str | None = None
        self._ping_sent = 0.0
        self._pings = 0
        self._polled = True  # drained the socket since the last read or emit
        self._backlog = False  # the last drain stopped at its limit: more is waiting
        # Discovery (sharded pub/sub firehose): see the class docstring.
        self._discover = discover
        self._discover_at = -math.inf
        self._opened = False  # the first Connect was sent: sessions found from now are new
        self._listen: dict[str, None] = {}  # the sessions whose channels we listen to
        self._unconfirmed: set[str] = set()  # SSUBSCRIBEs sent, not yet confirmed
        self._fresh: list[str] = []  # found while connected, not yet SSUBSCRIBEd
        self._snapshot: dict[str, None] = {}  # found before the first Connect: heads first
        self._born: set[str] = set()  # found later (or from_start): branches start at 1
        if session_id is not None:
            self._streams[(session_id, branch_id)] = _Stream(
                session_id, branch_id, after_sequence, after_sequence
            )
            self._sessions[session_id] = -math.inf

    # ----- what to do next --------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        if self._ready:
            records, self._ready = self._ready, []
            return Emit(records)
        if self._must_close:
            self._must_close = False
            return Disconnect()
        if self._discover is not None and now >= self._discover_at:
            self._discover_at = now + self.options.discover_s
            return Discover()
        if self._state == "down":
            give_up = self.options.give_up_after_s
            if (self._failing_since is not None and give_up is not None
                    and now - self._failing_since >= give_up):
                raise RedisUnavailable(
                    f"{self.what}: no working Redis connection for "
                    f"{now - self._failing_since:.1f}s, giving up; last error: {self._last_error}"
                )
            if now < self._retry_at:
                return Sleep(self._retry_at - now)
            if self._snapshot:
                return Check(next(iter(self._snapshot)), None)
            self._opened = True
            self._state = "confirming"
            self._deadline = now + self.options.health_timeout_s
            if self._discover is None:
                return Connect()
            self._unconfirmed = set(self._listen)
            self._fresh = []
            if not self._listen:
                self._on_listening(now)  # nothing to listen to yet: nothing to confirm
            return Connect(tuple(self._listen))
        drain = self.options.buffer_size
        if self._state == "confirming":
            if now >= self._deadline:
                self.lost(now, "no subscribe confirmation in time")
                return self.next_action(now)
            return Listen(self._deadline - now, drain)
        if not self._polled:
            self._polled = True
            # Drain before anything but listening (which drains anyway): it keeps Redis's
            # output buffer for us small, a pong waiting in the socket must be seen before
            # we judge the connection, and a connection Redis cut while the consumer was
            # away is noticed before we act. On the live path nothing else is due: that
            # saves an empty read of the socket (redis-py's whole read path) per event.
            if (self._fresh or self._pong_overdue(now) or self._check_due(now)
                    or self._active or self._ping_due(now)):
                return self._drain
        if self._fresh:
            fresh, self._fresh = tuple(self._fresh), []
            self._unconfirmed.update(fresh)
            return Subscribe(fresh)
        if self._pong_overdue(now):
            self.lost(now, "no pong from the pub/sub connection in time")
            return self.next_action(now)
        if self._check_due(now):
            session = next(iter(self._sessions))
            self._touch(session, now)
            return Check(session, self._only_branch() if self._single else None)
        work = self._work()
        if work is not None:
            self._polled = False
            return work
        if self._ping_due(now):
            self._pings += 1
            self._ping = f"journal-subscription-{self._pings}"
            self._ping_sent = now
            return Ping(self._ping)
        idle = self.options.idle_s
        wake = self._ping_sent + self.options.health_timeout_s if self._ping else self._heard + idle
        if self._sessions:
            wake = min(wake, next(iter(self._sessions.values())) + idle)
        if self._discover is not None:
            wake = min(wake, self._discover_at)
        return Listen(max(wake - now, 0.0), drain)

    def _pong_overdue(self, now: float) -> bool:
        return (self._ping is not None and not self._backlog
                and now - self._ping_sent >= self.options.health_timeout_s)

    def _check_due(self, now: float) -> bool:
        """The session quiet the longest has been quiet for ``idle_s``."""
        return bool(self._sessions) and (
            now - next(iter(self._sessions.values())) >= self.options.idle_s)

    def _ping_due(self, now: float) -> bool:
        return (self._ping is None and now - self._heard >= self.options.idle_s
                and (self._discover is None or bool(self._listen)))

    def _only_branch(self) -> str:
        return next(iter(self._streams))[1]

    def _touch(self, session: str, now: float) -> None:
        self._sessions[session] = now
        self._sessions.move_to_end(session)

    def _due(self, session: str) -> None:
        self._sessions[session] = -math.inf
        self._sessions.move_to_end(session, last=False)

    def _work(self) -> Read | Emit | None:
        """One step for the first stream with work, round-robin over streams."""
        while self._active:
            key = next(iter(self._active))
            del self._active[key]
            action = self._step(self._streams[key])
            if action is not None:
                self._active[key] = None  # to the back: the other streams go first
                return action
        return None

    def _step(self, st: _Stream) -> Read | Emit | None:
        page = self.options.page_size
        pending = st.pending
        while pending and pending[0].last <= st.last:
            pending.popleft()
            self._buffered -= 1
            self.stats.stale_messages += 1
        want = st.last + 1
        if pending:
            head = pending[0]
            if head.first > want:  # a jump: fill the gap from the file first
                return Read(st.session_id, st.branch_id, want, min(page, head.first - want))
            pending.popleft()
            self._buffered -= 1
            return Emit(self._live_records(st, head))
        if st.target > st.last:
            return Read(st.session_id, st.branch_id, want, min(page, st.target - st.last))
        return None

    # ----- what happened ----------------------------------------------------------------

    def on_pubsub(self, kind: str, data: Any, now: float, session: str | None = None) -> None:
        """One message from the pub/sub connection (redis-py's ``type`` and ``data``; for a
        discovering firehose's confirmations, the session whose channel was confirmed)."""
        if self._state == "down":
            return  # the rest of a drain after we gave up on this connection
        self._heard = now
        if kind in _PUBLISHED:
            self._on_announcement(data, now)
        elif kind in _CONFIRMED:
            self._on_listening(now, session)
        elif kind == "pong":
            if self._ping is not None and text(data) == self._ping:
                self._ping = None
                self._healthy()
        else:  # an unsubscribe we never asked for: start over
            self.lost(now, f"unexpected pub/sub message {kind!r}")

    def on_drained(self, more: bool) -> None:
        """The drain of a ``Listen`` ended; ``more`` when it stopped at its limit."""
        self._backlog = more

    def _on_listening(self, now: float, session: str | None = None) -> None:
        if session is not None:
            # One session's channel (of a discovering firehose): that session is due; the
            # connection is up once every channel it was opened with is confirmed.
            self._unconfirmed.discard(session)
            self._due(session)
            if self._state != "confirming" or self._unconfirmed:
                return
        # We are subscribed (again): whatever was committed while we were not is only in
        # the file, so every known session is due for a head check right away.
        self._state = "up"
        self.stats.connects += 1
        self._ping = None
        for session in self._sessions:
            self._sessions[session] = -math.inf

    def _on_announcement(self, data: Any, now: float) -> None:
        try:
            ann = decode_announcement(data)
        except (msgspec.DecodeError, msgspec.ValidationError, JournalError, TypeError):
            # The inline records may be what failed; the positions alone still tell us what
            # to read from the file (which reports real corruption with file and line).
            try:
                pos = decode_positions(data)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                self.stats.bad_messages += 1
                return
            ann = Announcement(pos.session_id, pos.branch_id, pos.first, pos.last, 0, 0, None)
        if ann.first < 1 or ann.last < ann.first:
            self.stats.bad_messages += 1
            return
        key = (ann.session_id, ann.branch_id)
        st = self._streams.get(key)
        if st is None:
            if self._single or ann.session_id in self._ended:
                return  # another branch of our session, or a session deleted meanwhile
            # The firehose starts "now": a (session, branch) first heard of live starts at
            # this message, unless the caller asked for everything or the session is new.
            new = self.options.from_start or ann.session_id in self._born
            start = 0 if new else ann.first - 1
            st = self._streams[key] = _Stream(ann.session_id, ann.branch_id, start, start)
        self._touch(ann.session_id, now)
        if ann.last <= st.last:
            self.stats.stale_messages += 1
            return
        # The target is raised before anything may be dropped: a dropped message's events
        # are then simply read from the file.
        st.target = max(st.target, ann.last)
        inline = ann.records is not None and self._inline_ok(ann)
        if (inline and ann.first <= st.last + 1 and not self._active and not self._ready
                and self._state == "up"):
            # The live path, and the one whose latency counts: the message continues its
            # stream and no other work waits (every stream with pending messages or a
            # higher target is in ``_active``), so hand it out at once. It is what the
            # buffer and ``_step`` would emit next anyway, minus the round through them.
            self._emit_live(st, ann)
            return
        self._active[key] = None
        if not inline:
            return  # too large to travel inline (or malformed): the file has it
        if self._buffered >= self.options.buffer_size:
            # The consumer is slower than the feed. Drop every buffered message and let
            # the streams catch up from the file, where the events are anyway.
            for other in self._streams.values():
                other.pending.clear()
            self._buffered = 0
            self.stats.overflows += 1
            _observe.emit("subscriber_fallback", reason="overflow")
        st.pending.append(ann)
        self._buffered += 1
        self.stats.buffer_peak = max(self.stats.buffer_peak, self._buffered)

    def _live_records(self, st: _Stream, ann: Announcement) -> list[EventRecord]:
        """The records of an inline message that continues ``st`` (it may overlap what was
        yielded), now counted as yielded."""
        assert ann.records is not None
        records = ann.records
        if ann.first <= st.last:
            records = [r for r in records if r.sequence > st.last]
        st.last = ann.last
        self.stats.live_events += len(records)
        return records

    def _emit_live(self, st: _Stream, ann: Announcement) -> None:
        self._ready = self._live_records(st, ann)
        self._polled = False  # as after any emit: drain before anything but listening

    @staticmethod
    def _inline_ok(ann: Announcement) -> bool:
        records = ann.records
        if records is None or len(records) != ann.last - ann.first + 1:
            return False
        sequence = ann.first
        for r in records:
            if (r.sequence != sequence or r.session_id != ann.session_id
                    or r.branch_id != ann.branch_id):
                return False
            sequence += 1
        return True

    def on_read(self, read: Read, records: list[EventRecord], now: float) -> None:
        """The result of a :class:`Read`."""
        self.stats.file_reads += 1
        key = (read.session_id, read.branch_id)
        st = self._streams[key]
        if st.last + 1 != read.first:
            return  # cannot happen with one caller; never emit out of order
        good: list[EventRecord] = []
        for r in records:
            if (r.sequence != read.first + len(good) or r.branch_id != read.branch_id
                    or r.session_id != read.session_id):
                break
            good.append(r)
        if good:
            st.last = good[-1].sequence
            self.stats.file_events += len(good)
            self._ready = good
        if len(good) < read.limit:
            # The head in Redis is below what a message promised (another journal root on
            # the same Redis, say). Do not spin: forget what we cannot read now and let the
            # next head check of this session tell.
            st.target = st.last
            if st.pending and st.pending[0].first > st.last + 1:
                self._buffered -= len(st.pending)
                st.pending.clear()
            self._touch(read.session_id, now)

    def on_deleted(self, session_id: str) -> None:
        """Firehose: a read or head check said the session was deleted. End its streams
        (what was yielded stays yielded) and ignore it from now on; the other sessions go
        on. (A single-session subscription raises SessionDeleted instead.)"""
        self._ended.add(session_id)
        self._sessions.pop(session_id, None)
        for key in [k for k in self._streams if k[0] == session_id]:
            st = self._streams.pop(key)
            self._active.pop(key, None)
            self._buffered -= len(st.pending)
        self.stats.sessions_ended += 1
        _log.info("%s: session %s was deleted; its streams end here", self.what, session_id,
                  extra={"event": "subscription_session_deleted", "subscription": self.what,
                         "session_id": session_id})

    def on_truncated(self, read: Read, first: int) -> None:
        """Firehose: the stream's next sequence is below the branch's truncation point
        (``truncate_before`` ran while it lagged, or it started from the beginning). It
        goes on from ``first``; the skip is counted and logged, never silent."""
        st = self._streams.get((read.session_id, read.branch_id))
        if st is None or first - 1 <= st.last:
            return
        _log.warning("%s: %s/%s is truncated before %d; going on from there (events %d..%d "
                     "were removed on purpose)", self.what, read.session_id, read.branch_id,
                     first, st.last + 1, first - 1, extra={
                         "event": "subscription_truncated", "subscription": self.what,
                         "session_id": read.session_id, "branch_id": read.branch_id,
                         "first": first})
        st.last = first - 1
        st.target = max(st.target, st.last)
        self.stats.truncated_skips += 1
        self._active[(read.session_id, read.branch_id)] = None

    def on_heads(self, session_id: str, heads: dict[str, int], now: float) -> None:
        """The result of a :class:`Check`: the committed head per branch."""
        self.stats.head_checks += 1
        self._touch(session_id, now)
        self._healthy()
        new = self.options.from_start or session_id in self._born
        self._born.discard(session_id)
        self._snapshot.pop(session_id, None)
        for branch, top in heads.items():
            key = (session_id, branch)
            st = self._streams.get(key)
            if st is None:
                if self._single:
                    continue
                # A branch of a known session that we never heard of live: "now" means
                # from its current head on (from 1 for a session created since we started).
                start = 0 if new else top
                st = self._streams[key] = _Stream(session_id, branch, start, start)
            if top > st.target:
                st.target = top
            if st.target > st.last:
                self._active[key] = None

    def on_sessions(self, sessions: list[str], now: float) -> None:
        """The result of a :class:`Discover`: the session ids under the root."""
        prefix = self._discover or ""
        for session in sessions:
            if session in self._listen or not session.startswith(prefix):
                continue
            self._listen[session] = None
            if self._opened or self.options.from_start:
                self._born.add(session)
            else:
                self._snapshot[session] = None
            if self._opened:
                self._fresh.append(session)  # its confirmation makes it due
                self._touch(session, now)
            else:
                self._due(session)

    @property
    def listening(self) -> bool:
        """Redis confirmed the (S/P)SUBSCRIBE on the current connection."""
        return self._state == "up"

    def interrupted(self, now: float) -> None:
        """The shell abandoned a pub/sub step half done (a cancelled await): the
        connection may hold half a message, so start it over at once (no backoff: Redis
        is fine) and catch up from the file on the new confirmation."""
        self._state = "down"
        self._must_close = True
        self._ping = None
        self._polled = True
        self._backlog = False
        self._retry_at = now

    def lost(self, now: float, reason: str) -> None:
        """Redis failed (an error from any action, or a timeout we noticed): drop the
        pub/sub connection and reconnect after a bounded, jittered, growing delay."""
        self._last_error = reason
        self.stats.disconnects += 1
        self._state = "down"
        self._must_close = True
        self._ping = None
        self._polled = True
        self._backlog = False
        if self._failing_since is None:
            self._failing_since = now
        self._retry_at = now + random.uniform(self._delay / 2, self._delay)
        self._delay = min(self._delay * 2, self.options.backoff_max_s)

    def _healthy(self) -> None:
        # A full round trip worked while subscribed: the next failure starts a fresh backoff.
        self._failing_since = None
        self._delay = self.options.backoff_min_s


# ----- the dispatch both shells share -------------------------------------------------------

# Errors that mean "Redis (or the connection to it) is in trouble": reconnect and catch up.
# File errors (CorruptLine, StorageError, OSError from the store) are not among them for
# reads and head checks: they reach the consumer.
# RedisClusterException (no reachable node, a slot nobody serves yet during a failover)
# does not derive from RedisError.
_PUBSUB_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError,
                                                   RedisClusterException)
_COMMAND_ERRORS: tuple[type[BaseException], ...] = (RedisUnavailable, LeaseTimeout,
                                                    RedisClusterException)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# What a shell is asked to do: the only I/O of a subscription. The shells differ only in
# how they wait for these (blocking or awaited); every decision is taken in ``_Pump``.


@dataclass(frozen=True, slots=True)
class _Owners:
    """Connect the journal if need be, and name the node that owns each channel's slot
    (``""`` for each off a cluster); reload a cluster's slot map first when ``refresh``."""

    channels: tuple[str, ...]
    refresh: bool


@dataclass(frozen=True, slots=True)
class _Open:
    """Open a pub/sub connection to ``owner`` (a name from :class:`_Owners`)."""

    owner: str


@dataclass(frozen=True, slots=True)
class _Sub:
    """Send ``method`` (subscribe, ssubscribe or psubscribe) for ``name`` on ``owner``'s
    connection; the confirmation comes later."""

    owner: str
    method: str
    name: str


@dataclass(frozen=True, slots=True)
class _Close:
    """Close every pub/sub connection (idempotent)."""


@dataclass(frozen=True, slots=True)
class _Receive:
    """One message from ``owner``'s connection, or None after ``timeout`` seconds."""

    owner: str
    timeout: float


@dataclass(frozen=True, slots=True)
class _Ping:
    owner: str
    token: str


@dataclass(frozen=True, slots=True)
class _List:
    """The root's session ids (a directory listing, no Redis)."""


@dataclass(frozen=True, slots=True)
class _Run:
    """Run a protocol (a read, a head check) through the journal's driver."""

    steps: protocol.Steps[Any]


@dataclass(frozen=True, slots=True)
class _Wait:
    """Sleep; a shell may end it early when the subscription is closed."""

    seconds: float


_Io = _Owners | _Open | _Sub | _Close | _Receive | _Ping | _List | _Run | _Wait
_Steps = Generator[_Io, Any, Any]


@dataclass(frozen=True, slots=True)
class _Listening:
    """How to subscribe: the redis-py method and its argument."""

    method: str  # "subscribe", "ssubscribe" or "psubscribe"
    name: str  # the channel or pattern; "" for a discovering firehose (a channel per session)


# A discovering firehose waits on several connections (one per slot owner): it takes what
# is already there on each, then blocks at most this long on one, in turn. redis-py has no
# wait over several connections (its own ClusterPubSub polls them one after the other too).
_POLL_S = 0.02


class _Pump:
    """Turns the :class:`Follower`'s actions into shell I/O and reports the outcomes back.

    Each call of :meth:`until_event` is a fresh generator of :data:`_Io` steps, so a step
    cut short (a cancelled await, a timeout around ``anext``) never leaves a half-run
    generator behind: the Follower's state is only changed by completed steps, and the
    next call starts over from it. Events taken from the Follower wait in ``out``.
    """

    def __init__(self, core: protocol.Core, follower: Follower, idle_timeout_s: float | None,
                 what: str, listening: _Listening) -> None:
        self.core = core
        self.follower = follower
        self.idle_timeout_s = idle_timeout_s
        self.what = what
        self.listening = listening
        self.out: deque[EventRecord] = deque()
        self.closed = False
        self.legs: list[str] = []  # the owners we hold a pub/sub connection to
        self._turn = 0  # the leg to wait on next (several legs)
        self._pong_wait: set[str] = set()  # legs that have not answered the ping yet
        self._pong_token = ""
        self._session_of: dict[str, str] = {}  # channel -> session (discovering firehose)

    def until_event(self) -> _Steps:
        """Steps until the next event, which it returns; None once closed. Raises
        :class:`SubscriptionIdle` when ``idle_timeout_s`` passes without one."""
        f = self.follower
        limit = self.idle_timeout_s
        deadline = math.inf if limit is None else time.monotonic() + limit
        while not self.closed:
            if self.out:
                return self.out.popleft()
            now = time.monotonic()
            action = f.next_action(now)
            if isinstance(action, Emit):
                self.out.extend(action.records)
                continue
            if now >= deadline:
                raise SubscriptionIdle(f"{self.what}: no event for {limit:g}s")
            yield from self._perform(action, deadline - now)
        return None

    def until_listening(self) -> _Steps:
        """Steps until Redis confirmed the (S/P)SUBSCRIBE, or the first attempt failed
        (the subscription then keeps trying when it is iterated)."""
        f = self.follower
        while not self.closed and not f.listening:
            action = f.next_action(time.monotonic())
            if isinstance(action, Emit):
                self.out.extend(action.records)
            elif not isinstance(action, Sleep):
                yield from self._perform(action, math.inf)
            else:  # a backoff sleep: the first attempt failed
                return None
        return None

    def interrupted(self, io: _Io) -> None:
        """A step was cut short (a cancelled await). A pub/sub step may have left a message
        half read: start that connection over, and catch up from the file."""
        if not isinstance(io, _Run | _Wait | _List):
            self.follower.interrupted(time.monotonic())

    def _perform(self, action: Action, left: float) -> _Steps:
        f = self.follower
        if isinstance(action, Listen):  # by far the most frequent: first
            try:
                yield from self._listen(action, min(action.timeout, left))
            except _PUBSUB_ERRORS as exc:
                self._lost(exc)
        elif isinstance(action, Sleep):
            yield _Wait(min(action.seconds, left))
        elif isinstance(action, Disconnect):
            self.legs = []
            yield _Close()
        elif isinstance(action, Discover):
            f.on_sessions((yield _List()), time.monotonic())
        elif isinstance(action, Read | Check):
            try:
                if isinstance(action, Read):
                    records = yield _Run(protocol.read(
                        self.core, action.session_id, action.branch_id, action.first,
                        action.limit))
                    f.on_read(action, records, time.monotonic())
                else:
                    heads = yield _Run(_check_steps(self.core, action))
                    f.on_heads(action.session_id, heads, time.monotonic())
            except _COMMAND_ERRORS as exc:
                self._lost(exc)
            except SessionDeleted:
                if f._single:
                    raise  # the subscription ends with it
                f.on_deleted(action.session_id)
            except HistoryTruncated as exc:
                if f._single or not isinstance(action, Read):
                    raise
                f.on_truncated(action, exc.first)
        else:
            try:
                if isinstance(action, Connect):
                    self.legs = []
                    yield _Close()
                    yield from self._subscribe(action.sessions, f.stats.disconnects > 0)
                elif isinstance(action, Subscribe):
                    yield from self._subscribe(action.sessions, False)
                elif isinstance(action, Ping):
                    self._pong_wait, self._pong_token = set(self.legs), action.token
                    for owner in self.legs:
                        yield _Ping(owner, action.token)
            except _PUBSUB_ERRORS as exc:
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        reason = _describe(exc)
        _log.warning("%s: lost its Redis connection (%s); reconnecting, then catching up "
                     "from the file", self.what, reason, extra={
                         "event": "subscription_reconnect", "subscription": self.what,
                         "error": reason})
        self.follower.lost(time.monotonic(), reason)

    def _subscribe(self, sessions: tuple[str, ...], refresh: bool) -> _Steps:
        """(S/P)SUBSCRIBE the one channel or pattern, or the channels of ``sessions`` (a
        discovering firehose), each on a connection to its slot's owner."""
        names = [self.listening.name] if not sessions else [
            self.core.keys(s).channel for s in sessions]
        self._session_of.update(zip(names, sessions, strict=False))
        owners: list[str] = yield _Owners(tuple(names), refresh)
        by_owner: dict[str, list[str]] = {}
        for name, owner in zip(names, owners, strict=True):
            by_owner.setdefault(owner, []).append(name)
        for owner, group in by_owner.items():
            if owner not in self.legs:
                yield _Open(owner)
                self.legs.append(owner)
            # One command per channel: a cluster refuses an SSUBSCRIBE across slots.
            for name in group:
                yield _Sub(owner, self.listening.method, name)

    def _receive(self, timeout: float) -> _Steps:
        """The next (owner, message) from any leg, or None after ``timeout``."""
        legs = self.legs
        if len(legs) <= 1:
            if not legs:  # a discovering firehose with nothing to listen to yet
                if timeout:
                    yield _Wait(timeout)
                return None
            message = yield _Receive(legs[0], timeout)
            return None if message is None else (legs[0], message)
        end = time.monotonic() + timeout
        while True:
            for _ in legs:  # what is already there, taking the legs in turn
                self._turn = (self._turn + 1) % len(legs)
                message = yield _Receive(legs[self._turn], 0.0)
                if message is not None:
                    return legs[self._turn], message
            left = end - time.monotonic()
            if left <= 0:
                return None
            message = yield _Receive(legs[self._turn], min(left, _POLL_S))
            if message is not None:
                return legs[self._turn], message

    def _report(self, owner: str, message: dict[str, Any]) -> None:
        kind, data = message["type"], message["data"]
        if kind == "pong" and self._pong_wait and text(data) == self._pong_token:
            self._pong_wait.discard(owner)
            if self._pong_wait:
                return  # the connection is healthy once every leg answered
        session = None
        if self._session_of and kind in _CONFIRMED:
            session = self._session_of.get(text(message["channel"]))
        self.follower.on_pubsub(kind, data, time.monotonic(), session)

    def _listen(self, action: Listen, timeout: float) -> _Steps:
        f = self.follower
        for _ in range(action.limit):
            got = yield from self._receive(timeout)
            if got is None:
                f.on_drained(False)
                return
            overflows = f.stats.overflows
            self._report(*got)
            if f.stats.overflows != overflows:
                _log.info("%s: the consumer is slower than the feed; reading the file instead "
                          "of %d buffered messages", self.what, f.options.buffer_size, extra={
                              "event": "subscription_file_fallback", "subscription": self.what})
            if timeout:
                # It arrived while we waited: hand it out before draining the socket again
                # (the next Listen drains; "more" keeps the backlog rules unchanged).
                f.on_drained(True)
                return
        f.on_drained(True)


def _validate_after(after_sequence: int) -> None:
    if not isinstance(after_sequence, int) or isinstance(after_sequence, bool) or (
        after_sequence < 0
    ):
        raise InvalidInput(f"after_sequence must be an integer >= 0, got {after_sequence!r}")


def _idle_timeout(options: dict[str, Any]) -> float | None:
    value = options.pop("idle_timeout_s", None)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                              or not math.isfinite(value) or value <= 0):
        raise InvalidInput(f"idle_timeout_s must be a number > 0 or None, got {value!r}")
    return value


def _single(
    journal: Any, session_id: str, branch_id: str, after_sequence: int,
    options: dict[str, Any],
) -> _Pump:
    _validate_after(after_sequence)
    options = dict(options)
    idle = _idle_timeout(options)
    opts = SubscribeOptions.parse(options, firehose=False)
    what = f"subscription to {session_id}/{branch_id}"
    follower = Follower(opts, session_id=session_id, branch_id=branch_id,
                        after_sequence=after_sequence, what=what)
    method = "ssubscribe" if journal.settings.sharded_pubsub else "subscribe"
    listening = _Listening(method, journal.core.keys(session_id).channel)
    return _Pump(journal.core, follower, idle, what, listening)


def _firehose(
    journal: Any, session_prefix: str, options: dict[str, Any]
) -> _Pump:
    settings = journal.settings
    if not isinstance(session_prefix, str):
        raise InvalidInput(f"session_prefix must be a string, got {type(session_prefix).__name__}")
    if session_prefix:
        validate_id(session_prefix, "session_prefix", settings.max_id_length)
    options = dict(options)
    idle = _idle_timeout(options)
    opts = SubscribeOptions.parse(options, firehose=True)
    what = f"firehose {session_prefix or '*'}"
    if settings.sharded_pubsub:
        # No patterns in sharded pub/sub: discover the sessions from the root's files and
        # SSUBSCRIBE each one's channel on its slot's owner (docs/cluster.md).
        follower = Follower(opts, what=what, discover=session_prefix)
        listening = _Listening("ssubscribe", "")
    else:
        follower = Follower(opts, what=what)
        listening = _Listening("psubscribe", channel_pattern(settings.key_prefix, session_prefix))
    return _Pump(journal.core, follower, idle, what, listening)


def _check_steps(core: protocol.Core, action: Check) -> protocol.Steps[dict[str, int]]:
    if action.branch_id is not None:
        top = yield from protocol.head(core, action.session_id, action.branch_id)
        return {action.branch_id: top}
    _, heads = yield from protocol.session_state(core, action.session_id)
    return heads


# ----- the shells ---------------------------------------------------------------------------


class SyncSubscription(Iterator[EventRecord]):
    """The blocking subscription: an iterator of :class:`EventRecord`, listening from the
    moment it was made.

    Life cycle: iterate it (``next`` blocks until the next event); ``close()`` ends it, from
    any thread at any moment: a ``next`` blocked in another thread then returns promptly
    (the iteration stops). ``with`` closes it on exit, and so does dropping it after
    ``break``. With ``idle_timeout_s``, ``next`` raises :class:`journal.SubscriptionIdle`
    after that long without an event; the subscription stays usable. ``stats`` tells what
    it did.
    """

    def __init__(self, journal: Journal, pump: _Pump) -> None:
        self._journal = journal
        self._pump = pump
        self._pubsubs: dict[str, Any] = {}  # owner -> its pub/sub connection
        self._lock = threading.Lock()
        self._busy = False
        self._wake = threading.Event()  # set by close(): ends a wait early
        self._drive(pump.until_listening())

    @property
    def stats(self) -> SubscriptionStats:
        return self._pump.follower.stats

    @property
    def closed(self) -> bool:
        return self._pump.closed

    def ready(self) -> Self:
        """Listening already (the call that made it waited for Redis's confirmation)."""
        return self

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> EventRecord:
        with self._lock:
            if self._pump.closed:
                raise StopIteration
            if self._busy:
                raise InvalidInput("this subscription is already being iterated by another "
                                   "thread; give each consumer its own subscription")
            if self._pump.out:
                return self._pump.out.popleft()  # the rest of a batch: no I/O to drive
            self._busy = True
        try:
            record = self._drive(self._pump.until_event())
        finally:
            with self._lock:
                self._busy = False
            if self._pump.closed:
                self._release()
        if record is None:
            raise StopIteration
        return record  # type: ignore[no-any-return]

    def _drive(self, steps: _Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            done, step = _advance(steps, result, error)
            if done:
                return step
            try:
                result, error = self._do(step), None
            except Exception as exc:
                if self._pump.closed:
                    return None  # close() cut the connection under us: that is the end
                result, error = None, exc

    def _do(self, io: _Io) -> Any:
        if isinstance(io, _Receive):
            return connect.sync_receive(self._pubsubs[io.owner], io.timeout)
        if isinstance(io, _Run):
            return self._journal._run(io.steps)
        if isinstance(io, _List):
            return self._journal.sessions()
        if isinstance(io, _Owners):
            self._journal._connect()
            return connect.sync_owners(self._journal.redis, io.channels, refresh=io.refresh)
        if isinstance(io, _Wait):
            self._wake.wait(io.seconds)
        elif isinstance(io, _Ping):
            self._pubsubs[io.owner].ping(io.token)
        elif isinstance(io, _Sub):
            getattr(self._pubsubs[io.owner], io.method)(io.name)
        elif isinstance(io, _Open):
            self._pubsubs[io.owner] = connect.sync_pubsub_on(self._journal.redis, io.owner)
        else:
            self._release()
        return None

    def close(self) -> None:
        """End the subscription and close its connection; safe from any thread, any time."""
        with self._lock:
            self._pump.closed = True
            busy = self._busy
        self._wake.set()
        if busy:
            # Another thread waits on a socket: cut them (shutdown is safe across threads;
            # the waiting thread closes the rest on its way out).
            for pubsub in list(self._pubsubs.values()):
                _interrupt_sync(pubsub)
        else:
            self._release()

    def _release(self) -> None:
        pubsubs, self._pubsubs = self._pubsubs, {}
        for pubsub in pubsubs.values():
            _close_sync(pubsub)

    def __del__(self) -> None:
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close_sync(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()


def _interrupt_sync(pubsub: Any) -> None:
    with contextlib.suppress(Exception):
        sock = pubsub.connection._sock  # redis-py keeps no public handle on the socket
        sock.shutdown(socket.SHUT_RDWR)


class AsyncSubscription(AsyncIterator[EventRecord]):
    """The asyncio subscription: an async iterator of :class:`EventRecord`.

    It listens once ``await sub.ready()`` returned, or inside ``async with``; otherwise from
    the first ``anext``. A wait cut short (``asyncio.wait_for(anext(sub), t)``, a
    cancelled task) leaves it usable: the next ``anext`` goes on where it stopped, nothing
    lost or repeated. ``aclose()`` is safe from any task of its event loop at any moment; a
    task waiting in ``anext`` then stops iterating (``StopAsyncIteration``). Dropped
    without ``aclose``, its connection is closed soon after. With ``idle_timeout_s``,
    ``anext`` raises :class:`journal.SubscriptionIdle` after that long without an event.
    """

    def __init__(self, journal: AsyncJournal, pump: _Pump) -> None:
        self._journal = journal
        self._pump = pump
        self._pubsubs: dict[str, Any] = {}  # owner -> its pub/sub connection
        self._consumer: asyncio.Task[Any] | None = None
        self._stopping = False  # aclose() cancelled the consumer to wake it
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stats(self) -> SubscriptionStats:
        return self._pump.follower.stats

    @property
    def closed(self) -> bool:
        return self._pump.closed

    async def ready(self) -> Self:
        """Wait until Redis confirmed the subscription: from then on, every event committed
        is delivered. (If Redis cannot be reached, it returns and the subscription keeps
        trying as it is iterated.)"""
        await self._guarded(self._pump.until_listening())
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventRecord:
        if self._pump.out and not self._pump.closed:
            return self._pump.out.popleft()  # no await: nothing to cut short
        record = await self._guarded(self._pump.until_event())
        if record is None:
            raise StopAsyncIteration
        return record  # type: ignore[no-any-return]

    async def _guarded(self, steps: _Steps) -> Any:
        if self._pump.closed:
            return None
        if self._consumer is not None:
            raise InvalidInput("this subscription is already being iterated by another task")
        task = self._consumer = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        try:
            return await self._drive(steps)
        except asyncio.CancelledError:
            if self._stopping and task is not None and task.uncancel() == 0:
                return None  # only aclose() cancelled us: stop iterating
            raise
        finally:
            self._consumer = None
            if self._pump.closed:
                await self._release()

    async def _drive(self, steps: _Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            done, step = _advance(steps, result, error)
            if done:
                return step
            try:
                result, error = await self._do(step), None
            except asyncio.CancelledError:
                self._pump.interrupted(step)
                if not isinstance(step, _Run | _Wait | _List):
                    self._release_soon()
                raise
            except Exception as exc:
                result, error = None, exc

    async def _do(self, io: _Io) -> Any:
        if isinstance(io, _Receive):
            return await self._pubsubs[io.owner].get_message(timeout=io.timeout)
        if isinstance(io, _Run):
            return await self._journal._run(io.steps)
        if isinstance(io, _List):
            return await asyncio.to_thread(self._journal.sessions)
        if isinstance(io, _Owners):
            await self._journal._connect()
            return await connect.async_owners(self._journal.redis, io.channels,
                                              refresh=io.refresh)
        if isinstance(io, _Wait):
            await asyncio.sleep(io.seconds)
        elif isinstance(io, _Ping):
            await self._pubsubs[io.owner].ping(io.token)
        elif isinstance(io, _Sub):
            await getattr(self._pubsubs[io.owner], io.method)(io.name)
        elif isinstance(io, _Open):
            self._pubsubs[io.owner] = connect.async_pubsub_on(self._journal.redis, io.owner)
        else:
            await self._release()
        return None

    async def aclose(self) -> None:
        """End the subscription and close its connection; safe from any task, any time."""
        self._pump.closed = True
        consumer = self._consumer
        if consumer is not None and consumer is not asyncio.current_task():
            # Another task waits in anext: wake it; it closes the connection on its way out.
            self._stopping = True
            consumer.cancel()
            return
        await self._release()

    async def _release(self) -> None:
        pubsubs, self._pubsubs = self._pubsubs, {}
        for pubsub in pubsubs.values():
            # Shielded: a cancelled consumer must still release its connections.
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    def _release_soon(self) -> None:
        """Close the connections without awaiting (a cancelled step, a dropped object)."""
        pubsubs, self._pubsubs = self._pubsubs, {}
        loop = self._loop
        if not pubsubs or loop is None or loop.is_closed():
            return
        for pubsub in pubsubs.values():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_spawn_close, loop, pubsub)

    def __del__(self) -> None:
        self._release_soon()

    async def __aenter__(self) -> Self:
        return await self.ready()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


_closing: set[asyncio.Task[Any]] = set()  # strong references until the closes finish


def _spawn_close(loop: asyncio.AbstractEventLoop, pubsub: Any) -> None:
    task = loop.create_task(pubsub.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


# ----- the entry points (called by Journal/AsyncJournal.subscribe and subscribe_all) --------


def subscribe_sync(
    journal: Journal, session_id: str, branch_id: str = "main", after_sequence: int = 0,
    **options: Any,
) -> SyncSubscription:
    """Every committed event of ``session_id``/``branch_id`` above ``after_sequence``."""
    return SyncSubscription(journal, _single(journal, session_id, branch_id, after_sequence,
                                             options))


def subscribe_async(
    journal: AsyncJournal, session_id: str, branch_id: str = "main", after_sequence: int = 0,
    **options: Any,
) -> AsyncSubscription:
    """The asyncio form of :func:`subscribe_sync`."""
    return AsyncSubscription(journal, _single(journal, session_id, branch_id, after_sequence,
                                              options))


def subscribe_all_sync(
    journal: Journal, session_prefix: str = "", **options: Any
) -> SyncSubscription:
    """The firehose: every session whose id starts with ``session_prefix``, in order per
    (session, branch). A (session, branch) first heard of live starts at that message
    (``from_start=True``: at sequence 1); from then on nothing is lost or duplicated."""
    return SyncSubscription(journal, _firehose(journal, session_prefix, options))


def subscribe_all_async(
    journal: AsyncJournal, session_prefix: str = "", **options: Any
) -> AsyncSubscription:
    """The asyncio form of :func:`subscribe_all_sync`."""
    return AsyncSubscription(journal, _firehose(journal, session_prefix, options))
