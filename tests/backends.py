"""The Redis backends the test suites run on, and the blocking face of an AsyncJournal.

A :class:`Backend` is one Redis plus a journal root: fakeredis (in-process Lua), a real
``redis-server`` (started by the tests themselves), a Redis container (testcontainers, when
a Docker engine answers), the local 3+3 Redis Cluster (``tests/cluster.py``) or Redis
Sentinel. ``restart_empty`` means "Redis lost everything" on each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import fakeredis
import redis
import redis.asyncio

from journal import AsyncJournal, EventRecord, Journal
from journal.testing import RedisServer
from tests.cluster import LocalCluster, SentinelSetup

T = TypeVar("T")


@dataclass
class Backend:
    """One Redis to run the journal against."""

    name: str
    root: Path
    url: str | None = None
    server: RedisServer | None = None
    fake: fakeredis.FakeServer | None = None
    sharded_only: bool = False  # a cluster: sharded pub/sub only, so no patterns (firehose)
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    def sync_client(self) -> redis.Redis:
        if self.fake is not None:
            return fakeredis.FakeRedis(server=self.fake)
        assert self.url is not None
        client = redis.Redis.from_url(self.url)
        self._closers.append(client.close)
        return client

    def async_client(self) -> redis.asyncio.Redis:
        if self.fake is not None:
            return fakeredis.FakeAsyncRedis(server=self.fake)
        assert self.url is not None
        return redis.asyncio.Redis.from_url(self.url)

    def journal(self, **options: Any) -> Journal:
        options.setdefault("lease_ms", 2000)
        root = options.pop("root", self.root)  # another root on the same Redis
        if self.fake is not None:
            return Journal(root, redis_client=self.sync_client(), **options).open()
        return Journal(root, self.url, **options).open()

    def async_journal(self, **options: Any) -> AsyncJournal:
        options.setdefault("lease_ms", 2000)
        root = options.pop("root", self.root)  # another root on the same Redis
        if self.fake is not None:
            return AsyncJournal(root, redis_client=self.async_client(), **options)
        return AsyncJournal(root, self.url, **options)

    def flush(self) -> None:
        """Forget every key and script, keeping the server (between tests)."""
        if self.fake is not None:
            client = fakeredis.FakeRedis(server=self.fake)
        else:
            client = redis.Redis.from_url(self.url or "")
        try:
            client.flushall()
            client.script_flush()
        finally:
            client.close()

    def restart_empty(self) -> None:
        """Redis loses everything: keys, leases and the script cache (NOSCRIPT follows)."""
        if self.server is not None:
            self.server.restart()
        else:
            self.flush()

    def close(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer()


@dataclass
class ClusterBackend(Backend):
    """The local cluster; ``url`` is its ``redis+cluster://`` form, which every ``Journal``
    and helper process accepts. "Redis lost everything" is FLUSHALL + SCRIPT FLUSH on every
    primary."""

    cluster: LocalCluster | None = None

    def sync_client(self) -> redis.Redis:
        raise NotImplementedError("use the cluster's admin clients")

    def flush(self) -> None:
        assert self.cluster is not None
        for port in self.cluster.primary_ports():
            client = self.cluster.client(port)
            client.flushall()
            client.script_flush()

    def restart_empty(self) -> None:
        self.flush()


@dataclass
class SentinelBackend(Backend):
    """A primary, a replica and one sentinel; the journal connects through
    ``redis+sentinel://``. "Redis lost everything" is flushing the primary."""

    sentinel: SentinelSetup | None = None

    def sync_client(self) -> redis.Redis:
        assert self.sentinel is not None
        client = redis.Redis(port=self.sentinel.master_port())
        self._closers.append(client.close)
        return client

    def flush(self) -> None:
        client = self.sync_client()
        client.flushall()
        client.script_flush()

    def restart_empty(self) -> None:
        self.flush()


class BlockingAsync:
    """An :class:`AsyncJournal` behind the blocking API, so one contract test runs on both
    APIs. Every call is a coroutine on the journal's own event loop, in a thread of its
    own; calls from several threads run concurrently there (as tasks would)."""

    def __init__(self, journal: AsyncJournal, timeout: float = 60.0) -> None:
        self.journal = journal
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="async-journal")
        self._thread.start()
        self._closed = False
        try:
            self._call(journal.open())
        except BaseException:
            self._stop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout)

    def __getattr__(self, name: str) -> Any:  # settings, core, sessions(), redis, ...
        return getattr(self.journal, name)

    def append(self, record: EventRecord) -> EventRecord:
        return self._call(self.journal.append(record))

    def append_batch(self, records: Iterable[EventRecord]) -> list[EventRecord]:
        return self._call(self.journal.append_batch(list(records)))

    def read(self, *args: Any, **kw: Any) -> list[EventRecord]:
        return self._call(self.journal.read(*args, **kw))

    def head(self, *args: Any, **kw: Any) -> int:
        return self._call(self.journal.head(*args, **kw))

    def branches(self, session_id: str) -> dict[str, int]:
        return self._call(self.journal.branches(session_id))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._call(self.journal.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
