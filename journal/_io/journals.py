"""The public journals: :class:`AsyncJournal` and :class:`Journal` (blocking).

Everything they share is in :class:`_Base`: settings, input checks, encoding, connecting,
and one method per operation that checks its input and returns the protocol generator of
``journal._core`` to run. The two shells only run those generators on their driver, with
or without ``await``, and wait for group commit with a thread event or an asyncio future.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from journal._core import lifecycle, protocol, repair
from journal._core import retry as _retry
from journal._core.group_commit import GroupQueue, Pending, lead
from journal._core.ops import Op
from journal._core.repair import RebuildResult
from journal._core.retry import Head, Pause, Put, RetryPolicy
from journal._io import connect
from journal._io.connect import redis_error
from journal._io.drivers import AsyncDriver, SyncDriver
from journal._io.subscriptions import (
    AsyncSubscription,
    SyncSubscription,
    subscribe_all_async,
    subscribe_all_sync,
    subscribe_async,
    subscribe_sync,
)
from journal._model.ids import validate_id
from journal._model.records import EventRecord, prepare_for_write
from journal.errors import InvalidInput, JournalError
from journal.kinds import KindBase
from journal.settings import JournalSettings, redact_url

if TYPE_CHECKING:
    from journal._groups import AsyncDeliveries, SyncDeliveries

Client = TypeVar("Client")  # the redis-py client type of a shell
T = TypeVar("T")
Kind = KindBase | Mapping[str, Any]  # a typed variant of journal.kinds, or {"type": ...}
_log = logging.getLogger("journal.rebuild")


def make_settings(
    root: str | os.PathLike[str] | None,
    redis_url: str | None,
    settings: JournalSettings | None,
    options: dict[str, Any],
) -> JournalSettings:
    """Explicit arguments win over ``settings``, which win over ``JOURNAL_*`` variables."""
    explicit: dict[str, Any] = dict(options)
    if root is not None:
        explicit["root"] = Path(root)
    if redis_url is not None:
        explicit["redis_url"] = redis_url
    if settings is None:
        try:
            return JournalSettings(**explicit)
        except ValueError as exc:
            raise InvalidInput(f"invalid journal settings: {exc}") from None
    return settings.model_copy(update=explicit) if explicit else settings


class _Base(Generic[Client]):
    """What both journals share: construction, settings, input checks, names, and each
    operation up to the protocol generator its shell runs."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        *,
        settings: JournalSettings | None = None,
        redis_client: Client | None = None,
        **options: Any,
    ) -> None:
        self.settings = make_settings(root, redis_url, settings, options)
        self.core = protocol.Core(self.settings)
        self._groups: dict[str, GroupQueue] = {}
        self._groups_lock = threading.Lock()
        self._client: Client | None = redis_client
        self._owns_client = redis_client is None
        self._where = "(given client)"

    @property
    def redis(self) -> Client:
        if self._client is None:
            raise InvalidInput("the journal is not open")
        return self._client

    def _deferred(self) -> bool:
        """The embedded server of a root that does not exist yet: open() starts nothing
        (a mistyped root must not get a directory and a server); the first write does."""
        return (self._client is None and self.settings.redis_url_value() is None
                and not Path(self.settings.root).exists())

    def _no_root(self) -> bool:
        """True when the root does not exist: a read then answers "empty" (head 0, no
        events) without connecting, creating or starting anything. A root that is a file
        is refused."""
        root = Path(self.settings.root)
        if root.is_dir():
            return False
        if root.exists():
            raise InvalidInput(f"root {root} is not a directory")
        return True

    def _client_for(self, factory: Callable[[JournalSettings, str], Client]) -> Client:
        """The client to open with: the given one, or a new one for the URL (or the
        embedded server's)."""
        if self._client is None:
            url = self.settings.redis_url_value()
            if url is None:
                from journal.server.embedded import ensure_embedded

                url = ensure_embedded(Path(self.settings.root))
            self._where = redact_url(url)
            self._client = factory(self.settings, url)
        connect.check_client(self.settings, self._client)
        return self._client

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """redis-py errors of a direct client call, as RedisUnavailable."""
        try:
            yield
        except connect.CLIENT_ERRORS as exc:
            raise redis_error(exc, self._where) from None

    def _owned_client(self) -> Client | None:
        """The client to close with the journal (None if it was given to us): forgotten."""
        client = self._client if self._owns_client else None
        if self._owns_client:
            self._client = None
        return client

    def _ids(self, session_id: str, branch_id: str) -> None:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        validate_id(branch_id, "branch_id", self.settings.max_id_length)

    def _checked(self, session_id: str, branch_id: str) -> tuple[str, str]:
        self._ids(session_id, branch_id)
        return session_id, branch_id

    def _enqueue(
        self, records: Iterable[EventRecord], notify: Callable[[], None]
    ) -> tuple[Pending, protocol.Steps[None] | None]:
        """Check and encode a batch and queue it. Returns the request and, when the caller
        must lead its session's group commit, the leader's protocol to run."""
        checked, data = prepare_for_write(
            records,
            max_record_bytes=self.settings.max_record_bytes,
            max_id_length=self.settings.max_id_length,
        )
        pending = Pending(checked, data, notify=notify)
        session_id = checked[0].session_id
        queue = self._groups.get(session_id)
        if queue is None:
            with self._groups_lock:
                queue = self._groups.setdefault(session_id, GroupQueue())
        if not queue.join(pending):
            return pending, None
        # "batch" is group commit: queued appends that chain share one round and one sync.
        return pending, lead(self.core, queue, self.settings.durability == "batch")

    def _read(
        self, session_id: str, branch_id: str, from_sequence: int, limit: int
    ) -> protocol.Steps[list[EventRecord]]:
        self._ids(session_id, branch_id)
        if not isinstance(from_sequence, int) or from_sequence < 0:
            raise InvalidInput(f"from_sequence must be an integer >= 0, got {from_sequence!r}")
        if not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"limit must be an integer >= 0, got {limit!r}")
        if self._no_root():
            return _const([])
        return protocol.read(self.core, session_id, branch_id, from_sequence, limit)

    def _head(self, session_id: str, branch_id: str) -> protocol.Steps[int]:
        self._ids(session_id, branch_id)
        if self._no_root():
            return _const(0)
        return protocol.head(self.core, session_id, branch_id)

    def _branches(self, session_id: str) -> protocol.Steps[dict[str, int]]:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        if self._no_root():
            return _const({})
        return _heads_only(protocol.session_state(self.core, session_id))

    def _rebuild(self, session_id: str, wait_s: float) -> protocol.Steps[RebuildResult]:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        if self._no_root():
            raise InvalidInput(f"root {self.settings.root} does not exist")
        return _logged(repair.rebuild(self.core, session_id, wait_s))

    def _delete(self, session_id: str) -> protocol.Steps[Any]:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        return lifecycle.delete(self.core, session_id)

    def _truncate_before(self, session_id: str, branch_id: str,
                         sequence: int) -> protocol.Steps[Any]:
        self._ids(session_id, branch_id)
        return lifecycle.truncate_before(self.core, session_id, branch_id, sequence)

    def _archive(self, session_id: str) -> protocol.Steps[Any]:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        return lifecycle.archive(self.core, session_id)

    def _next_plan(self, session_id: str, branch_id: str, kind: Kind,
                   retry: RetryPolicy | None, fields: dict[str, Any]) -> _retry.Plan:
        self._ids(session_id, branch_id)
        fields.setdefault("event_id", str(uuid.uuid4()))  # one id for every try

        def make(sequence: int) -> EventRecord:
            return EventRecord.new(session_id, branch_id, sequence, kind, **fields)

        # A bad kind or field is refused before anything is done.
        prepare_for_write([make(1)], max_record_bytes=self.settings.max_record_bytes,
                          max_id_length=self.settings.max_id_length)
        return _retry.append_next(retry or RetryPolicy(), session_id, branch_id, make)

    def sessions(self) -> list[str]:
        """Every session with a file under the root (``<root>/events/*.jsonl``), sorted.

        Reads the directory only (no Redis); empty when the root does not exist."""
        if self._no_root():
            return []
        events = Path(self.settings.root) / "events"
        if not events.is_dir():
            return []
        return sorted(p.name.removesuffix(".jsonl") for p in events.glob("*.jsonl"))

    def __repr__(self) -> str:
        url = self.settings.redis_url_value()
        shown = "embedded" if url is None else redact_url(url)
        return f"{type(self).__name__}(root={str(self.settings.root)!r}, redis={shown!r})"


class _Known(Generator[Op, Any, T]):
    """A protocol that needs no I/O: the answer for a read of a root that does not exist.
    It runs like any protocol (``yield from`` returns the value at once), and the shells
    return it without connecting, so nothing is created or started."""

    def __init__(self, value: T) -> None:
        self.value = value

    def send(self, _: Any) -> Op:
        raise StopIteration(self.value)

    def throw(self, *args: Any, **kwargs: Any) -> Op:
        raise RuntimeError("a known answer has no operation to fail")


def _const(value: T) -> _Known[T]:
    return _Known(value)


def _logged(steps: protocol.Steps[RebuildResult]) -> protocol.Steps[RebuildResult]:
    result = yield from steps
    _log.info("rebuilt %s from its file: %s", result.session_id, result.heads, extra={
        "event": "rebuild", "session_id": result.session_id, "heads": result.heads,
        "before": result.before, "file_bytes": result.file_bytes})
    return result


def _heads_only(
    state: protocol.Steps[tuple[int, dict[str, int]]],
) -> protocol.Steps[dict[str, int]]:
    _, heads = yield from state
    return dict(heads)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncJournal(_Base[connect.AsyncClient]):
    """The asyncio journal. Use ``async with AsyncJournal(...) as j`` or call ``open()``."""

    _driver: AsyncDriver | None = None

    async def open(self) -> Self:
        """Connect (``async with`` does it). With the embedded server of a root that does
        not exist yet, nothing starts until the first write."""
        if self._driver is None and not self._deferred():
            await self._connect()
        return self

    async def _connect(self) -> AsyncDriver:
        if self._driver is None:
            client = self._client_for(connect.async_client)
            with self._translated():
                await client.ping()
            self._driver = AsyncDriver(client, self._where)
        return self._driver

    async def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(JournalError):
                await driver.run(protocol.release_held(self.core))
            await driver.close()
        if (client := self._owned_client()) is not None:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, steps: protocol.Steps[T]) -> T:
        if type(steps) is _Known:  # (not isinstance: _Known is an ABC, slow to check)
            known: T = steps.value
            return known
        driver = self._driver or await self._connect()
        return await driver.run(steps)

    async def append(self, record: EventRecord, *, retry: RetryPolicy | None = None
                     ) -> EventRecord:
        """Append one event at ``head + 1`` of its (session, branch). Returns the stored record.
        See :meth:`Journal.append`."""
        if retry is not None:
            return await self._retrying(_retry.append_with_retry(retry, record))
        stored = await self.append_batch([record])
        return stored[0]

    async def append_next(self, session_id: str, branch_id: str, kind: Kind, *,
                          retry: RetryPolicy | None = None, **fields: Any) -> EventRecord:
        """Append one event at the next sequence (``head + 1``), whatever other writers do;
        returns the stored record. See :meth:`Journal.append_next`."""
        return await self._retrying(self._next_plan(session_id, branch_id, kind, retry, fields))

    async def _retrying(self, plan: _retry.Plan) -> EventRecord:
        outcome: tuple[Any, BaseException | None] = (None, None)
        while not (step := _retry.advance(plan, *outcome))[0]:
            try:
                outcome = (await self._retry_step(step[1]), None)
            except JournalError as exc:
                outcome = (None, exc)
        return step[1]  # type: ignore[no-any-return]

    async def _retry_step(self, step: Put | Head | Pause) -> Any:
        if isinstance(step, Put):
            return (await self.append_batch([step.record]))[0]
        if isinstance(step, Head):
            return await self.head(step.session_id, step.branch_id)
        await asyncio.sleep(step.seconds)
        return None

    async def rebuild(self, session_id: str, *, wait_s: float = 10.0) -> RebuildResult:
        """Reset a session's Redis state from its file, checking every line: a damaged line
        raises :class:`CorruptLine`. See :meth:`Journal.rebuild`."""
        return await self._run(self._rebuild(session_id, wait_s))

    async def delete(self, session_id: str) -> None:
        """Delete a session for good (see README, 'The life of a session')."""
        await self._run(self._delete(session_id))

    async def truncate_before(self, session_id: str, branch_id: str, sequence: int) -> int:
        """Drop a branch's events below ``sequence`` (compacted at once); its new first."""
        return int(await self._run(self._truncate_before(session_id, branch_id, sequence)))

    async def archive(self, session_id: str) -> bool:
        """Compress a session to ``archive/``; reads go on, an append reopens it."""
        return bool(await self._run(self._archive(session_id)))

    async def append_batch(self, records: Iterable[EventRecord]) -> list[EventRecord]:
        """Append contiguous events of one (session, branch), all or nothing."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending, leader = self._enqueue(records, functools.partial(_wake, done))
        if leader is not None:
            await self._run(leader)
        await done
        return pending.outcome()

    async def read(
        self, session_id: str, branch_id: str = "main", from_sequence: int = 1, limit: int = 1000
    ) -> list[EventRecord]:
        """Committed events of a branch from ``from_sequence``, at most ``limit``."""
        return await self._run(self._read(session_id, branch_id, from_sequence, limit))

    async def head(self, session_id: str, branch_id: str = "main") -> int:
        """The last committed sequence of a branch, 0 when it is empty."""
        return await self._run(self._head(session_id, branch_id))

    async def branches(self, session_id: str) -> dict[str, int]:
        """Every branch of a session with its head."""
        return await self._run(self._branches(session_id))

    def subscribe(
        self, session_id: str, branch_id: str = "main", after_sequence: int = 0, **options: Any
    ) -> AsyncSubscription:
        """Every committed event above ``after_sequence``, exactly once, in order, live.
        See :class:`AsyncSubscription` for its life cycle and options."""
        return subscribe_async(self, *self._checked(session_id, branch_id), after_sequence,
                               **options)

    def subscribe_all(self, session_prefix: str = "", **options: Any) -> AsyncSubscription:
        """The firehose: every session (optionally by id prefix), in order per branch. It
        listens once ``await sub.ready()`` returns (or inside ``async with``)."""
        return subscribe_all_async(self, session_prefix, **options)

    def consume(self, group: str, worker: str | None = None, **options: Any) -> AsyncDeliveries:
        """Join worker group ``group``: ``async with j.consume(...) as ds: async for d in ds``."""
        from journal._groups import AsyncDeliveries, make_worker

        return AsyncDeliveries(self, make_worker(self, group, worker, options))


class Journal(_Base[connect.SyncClient]):
    """The blocking journal: the same methods as :class:`AsyncJournal`."""

    _driver: SyncDriver | None = None

    def open(self) -> Self:
        """Connect (``with`` does it). With the embedded server of a root that does not
        exist yet, nothing starts until the first write."""
        if self._driver is None and not self._deferred():
            self._connect()
        return self

    def _connect(self) -> SyncDriver:
        if self._driver is None:
            client = self._client_for(connect.sync_client)
            with self._translated():
                client.ping()
            self._driver = SyncDriver(client, self._where)
        return self._driver

    def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(JournalError):
                driver.run(protocol.release_held(self.core))
            driver.close()
        if (client := self._owned_client()) is not None:
            client.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, steps: protocol.Steps[T]) -> T:
        if type(steps) is _Known:  # (not isinstance: _Known is an ABC, slow to check)
            known: T = steps.value
            return known
        driver = self._driver or self._connect()
        return driver.run(steps)

    def append(self, record: EventRecord, *, retry: RetryPolicy | None = None) -> EventRecord:
        """Append one event at ``head + 1`` of its (session, branch). Returns the stored record.

        The record's sequence must be ``head + 1``, else :class:`SequenceConflict`; an append
        that conflicts with the very same event (same ``event_id``) already stored at that
        sequence succeeds and returns it, so retrying is always safe. ``retry``: retry
        transient failures (``AppendOutcomeUnknown``, ``RedisUnavailable``, ``LeaseTimeout``)
        with the same record, as :class:`journal.RetryPolicy` says; other errors are final.
        """
        if retry is not None:
            return self._retrying(_retry.append_with_retry(retry, record))
        return self.append_batch([record])[0]

    def append_next(self, session_id: str, branch_id: str, kind: Kind, *,
                    retry: RetryPolicy | None = None, **fields: Any) -> EventRecord:
        """Append one event at the next sequence (``head + 1``), whatever other writers do;
        returns the stored record (its ``sequence`` is the one it got).

        On a :class:`SequenceConflict` (another writer took that sequence) it reads the head
        again and retries, at most ``retry.conflicts`` times (default 100). ``fields`` are
        those of :meth:`EventRecord.new` (``event_id``, ``agent_id``, ``actor``, ...); the
        ``event_id`` is drawn once, so a transient failure is retried at the *same* sequence
        with the same event and an unknown outcome is settled before the head is read again:
        the event is stored exactly once. For a batch, read the head and use
        :meth:`append_batch` with explicit sequences (a conflict then means: read again).
        """
        return self._retrying(self._next_plan(session_id, branch_id, kind, retry, fields))

    def _retrying(self, plan: _retry.Plan) -> EventRecord:
        outcome: tuple[Any, BaseException | None] = (None, None)
        while not (step := _retry.advance(plan, *outcome))[0]:
            try:
                outcome = (self._retry_step(step[1]), None)
            except JournalError as exc:
                outcome = (None, exc)
        return step[1]  # type: ignore[no-any-return]

    def _retry_step(self, step: Put | Head | Pause) -> Any:
        if isinstance(step, Put):
            return self.append_batch([step.record])[0]
        if isinstance(step, Head):
            return self.head(step.session_id, step.branch_id)
        time.sleep(step.seconds)
        return None

    def rebuild(self, session_id: str, *, wait_s: float = 10.0) -> RebuildResult:
        """Reset a session's Redis state from its file (what ``journal rebuild`` does).

        Clears the state only while no writer holds the session's lease (waits up to
        ``wait_s``, then :class:`LeaseTimeout`), then scans and decodes *every* line of the
        file: a damaged line raises :class:`CorruptLine` (the automatic rebuild after Redis
        lost its state may trust the index instead). Returns the heads before and after."""
        return self._run(self._rebuild(session_id, wait_s))

    def delete(self, session_id: str) -> None:
        """Delete a session for good (see README, 'The life of a session')."""
        self._run(self._delete(session_id))

    def truncate_before(self, session_id: str, branch_id: str, sequence: int) -> int:
        """Drop a branch's events below ``sequence`` (compacted at once); its new first."""
        return int(self._run(self._truncate_before(session_id, branch_id, sequence)))

    def archive(self, session_id: str) -> bool:
        """Compress a session to ``archive/``; reads go on, an append reopens it."""
        return bool(self._run(self._archive(session_id)))

    def append_batch(self, records: Iterable[EventRecord]) -> list[EventRecord]:
        # A one-shot event: released once, by whoever settles the request (often this very
        # call, leading its own round). A lock costs a fraction of a threading.Event.
        done = threading.Lock()
        done.acquire()
        pending, leader = self._enqueue(records, done.release)
        if leader is not None:
            self._run(leader)
        done.acquire()
        return pending.outcome()

    def read(
        self, session_id: str, branch_id: str = "main", from_sequence: int = 1, limit: int = 1000
    ) -> list[EventRecord]:
        return self._run(self._read(session_id, branch_id, from_sequence, limit))

    def head(self, session_id: str, branch_id: str = "main") -> int:
        return self._run(self._head(session_id, branch_id))

    def branches(self, session_id: str) -> dict[str, int]:
        return self._run(self._branches(session_id))

    def subscribe(
        self, session_id: str, branch_id: str = "main", after_sequence: int = 0, **options: Any
    ) -> SyncSubscription:
        """Every committed event above ``after_sequence``, exactly once, in order, live.
        Listening when the call returns. See :class:`SyncSubscription`."""
        return subscribe_sync(self, *self._checked(session_id, branch_id), after_sequence,
                              **options)

    def subscribe_all(self, session_prefix: str = "", **options: Any) -> SyncSubscription:
        """The firehose: every session whose id starts with ``session_prefix``, in order per
        (session, branch); listening when the call returns (an event committed after it is
        delivered)."""
        return subscribe_all_sync(self, session_prefix, **options)

    def consume(self, group: str, worker: str | None = None, **options: Any) -> SyncDeliveries:
        """Join worker group ``group``: ``with j.consume(...) as ds: for d in ds: ...``."""
        from journal._groups import SyncDeliveries, make_worker

        return SyncDeliveries(self, make_worker(self, group, worker, options))
