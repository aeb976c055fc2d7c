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
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from journal._core import protocol
from journal._core.group_commit import GroupQueue, Pending, lead
from journal._io import connect
from journal._io.connect import redis_error
from journal._io.drivers import AsyncDriver, SyncDriver
from journal._model.ids import validate_id
from journal._model.records import EventRecord, prepare_for_write
from journal.errors import InvalidInput, JournalError
from journal.settings import JournalSettings, redact_url

Client = TypeVar("Client")  # the redis-py client type of a shell
T = TypeVar("T")


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

    def _connect(self, factory: Callable[[JournalSettings, str], Client]) -> Client:
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
        return protocol.read(self.core, session_id, branch_id, from_sequence, limit)

    def _head(self, session_id: str, branch_id: str) -> protocol.Steps[int]:
        self._ids(session_id, branch_id)
        return protocol.head(self.core, session_id, branch_id)

    def _branches(self, session_id: str) -> protocol.Steps[dict[str, int]]:
        validate_id(session_id, "session_id", self.settings.max_id_length)
        return _heads_only(protocol.session_state(self.core, session_id))

    def sessions(self) -> list[str]:
        """Every session with a file under the root, sorted."""
        events = Path(self.settings.root) / "events"
        if not events.is_dir():
            return []
        return sorted(p.name.removesuffix(".jsonl") for p in events.glob("*.jsonl"))

    def __repr__(self) -> str:
        url = self.settings.redis_url_value()
        shown = "embedded" if url is None else redact_url(url)
        return f"{type(self).__name__}(root={str(self.settings.root)!r}, redis={shown!r})"


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
        if self._driver is None:
            client = self._connect(connect.async_client)
            with self._translated():
                await client.ping()
            self._driver = AsyncDriver(client, self._where)
        return self

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
        driver = self._driver or (await self.open())._driver
        assert driver is not None
        return await driver.run(steps)

    async def append(self, record: EventRecord) -> EventRecord:
        """Append one event at ``head + 1`` of its (session, branch). Returns the stored record."""
        stored = await self.append_batch([record])
        return stored[0]

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
    ) -> AsyncIterator[EventRecord]:
        """Every committed event above ``after_sequence``, exactly once, in order, live."""
        from journal._io.subscriptions import subscribe_async

        return subscribe_async(self, *self._checked(session_id, branch_id), after_sequence,
                               **options)

    def subscribe_all(self, session_prefix: str = "", **options: Any) -> AsyncIterator[EventRecord]:
        """The firehose: every session (optionally by id prefix), in order per branch."""
        from journal._io.subscriptions import subscribe_all_async

        return subscribe_all_async(self, session_prefix, **options)


class Journal(_Base[connect.SyncClient]):
    """The blocking journal: the same methods as :class:`AsyncJournal`."""

    _driver: SyncDriver | None = None

    def open(self) -> Self:
        if self._driver is None:
            client = self._connect(connect.sync_client)
            with self._translated():
                client.ping()
            self._driver = SyncDriver(client, self._where)
        return self

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
        driver = self._driver or self.open()._driver
        assert driver is not None
        return driver.run(steps)

    def append(self, record: EventRecord) -> EventRecord:
        return self.append_batch([record])[0]

    def append_batch(self, records: Iterable[EventRecord]) -> list[EventRecord]:
        done = threading.Event()
        pending, leader = self._enqueue(records, done.set)
        if leader is not None:
            self._run(leader)
        done.wait()
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
    ) -> Iterator[EventRecord]:
        from journal._io.subscriptions import subscribe_sync

        return subscribe_sync(self, *self._checked(session_id, branch_id), after_sequence,
                               **options)

    def subscribe_all(self, session_prefix: str = "", **options: Any) -> Iterator[EventRecord]:
        from journal._io.subscriptions import subscribe_all_sync

        return subscribe_all_sync(self, session_prefix, **options)
