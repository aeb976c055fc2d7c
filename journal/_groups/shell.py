"""The thin I/O shells of the group protocol: one blocking, one asyncio.

They execute the operations that :class:`~journal._groups.engine.Worker` yields (a Lua
script through a redis-py ``Script`` object, so a Redis that lost its script cache gets it
again; a public journal method; file work; a sleep) and wrap its deliveries. No thread and
no background task: claims are extended whenever the consumer asks for the next delivery or
settles one, so a handler that runs longer than ``claim_ms`` must call ``d.extend()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from types import TracebackType
from typing import Any, Protocol, Self

from journal._groups.engine import (
    Blocking,
    Call,
    ConsumeOptions,
    Delivery,
    Script,
    Sleep,
    Steps,
    Worker,
)
from journal._io.connect import CLIENT_ERRORS, AsyncClient, SyncClient, redis_error
from journal._model.ids import validate_id
from journal._model.records import EventRecord
from journal.errors import RedisUnavailable, SessionDeleted
from journal.settings import JournalSettings


class Journal(Protocol):
    """What a sync worker needs of its journal (a protocol, so no import cycle)."""

    settings: JournalSettings

    @property
    def redis(self) -> SyncClient: ...

    def open(self) -> Any: ...

    def sessions(self) -> list[str]: ...


class AsyncJournal(Protocol):
    """What an async worker needs of its journal."""

    settings: JournalSettings

    @property
    def redis(self) -> AsyncClient: ...

    async def open(self) -> Any: ...

    def sessions(self) -> list[str]: ...

LUA: dict[str, str] = {
    entry.name.removesuffix(".lua"): entry.read_text()
    for entry in files("journal._groups").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
}


def make_worker(j: Journal | AsyncJournal, group: str, worker: str | None,
                options: dict[str, Any]) -> Worker:
    s = j.settings
    validate_id(group, "group", s.max_id_length)
    name = worker or f"{os.uname().nodename}-{os.getpid()}"
    validate_id(name, "worker", s.max_id_length)
    return Worker(group=group, worker=name, root=s.root, prefix=s.key_prefix,
                  list_sessions=j.sessions, options=ConsumeOptions.parse(options),
                  max_id_length=s.max_id_length)


def _advance(steps: Steps, result: Any, error: BaseException | None) -> tuple[bool, Any]:
    try:
        op = steps.throw(error) if error is not None else steps.send(result)
    except StopIteration as stop:
        return True, stop.value
    return False, op


class _Shell:
    worker: Worker


class SyncDelivery:
    """``d.event``, ``d.attempt``, ``d.fence``; settle with ``ack()``, ``nack()``."""

    __slots__ = ("_d", "_shell")

    def __init__(self, shell: SyncDeliveries, d: Delivery) -> None:
        self._shell, self._d = shell, d

    def _settle(self, steps: Steps) -> Steps:
        return self._shell.worker.settle(steps, self._d)

    event = property(lambda self: self._d.event)
    attempt = property(lambda self: self._d.attempt)
    fence = property(lambda self: self._d.fence)
    replay = property(lambda self: self._d.replay)

    def ack(self) -> bool:
        """Commit the position (fenced). False: the claim was lost; it will be redelivered."""
        return bool(self._shell.run(self._settle(self._shell.worker.ack(self._d))))

    def nack(self, delay_s: float | None = None, error: str = "nacked") -> bool:
        steps = self._shell.worker.nack(self._d, delay_s, error)
        return bool(self._shell.run(self._settle(steps)))

    def extend(self) -> bool:
        return bool(self._shell.run(self._settle(self._shell.worker.extend(self._d))))

    def __repr__(self) -> str:
        e = self._d.event
        return (f"Delivery({e.session_id}/{e.branch_id}#{e.sequence}, "
                f"attempt={self._d.attempt}, fence={self._d.fence})")


class AsyncDelivery:
    __slots__ = ("_d", "_shell")

    def __init__(self, shell: AsyncDeliveries, d: Delivery) -> None:
        self._shell, self._d = shell, d

    def _settle(self, steps: Steps) -> Steps:
        return self._shell.worker.settle(steps, self._d)

    event = property(lambda self: self._d.event)
    attempt = property(lambda self: self._d.attempt)
    fence = property(lambda self: self._d.fence)
    replay = property(lambda self: self._d.replay)

    async def ack(self) -> bool:
        return bool(await self._shell.run(self._settle(self._shell.worker.ack(self._d))))

    async def nack(self, delay_s: float | None = None, error: str = "nacked") -> bool:
        steps = self._shell.worker.nack(self._d, delay_s, error)
        return bool(await self._shell.run(self._settle(steps)))

    async def extend(self) -> bool:
        return bool(await self._shell.run(self._settle(self._shell.worker.extend(self._d))))

    __repr__ = SyncDelivery.__repr__


class SyncDeliveries(Iterator[SyncDelivery]):
    """``with j.consume(...) as deliveries: for d in deliveries: ...``"""

    def __init__(self, journal: Journal, worker: Worker) -> None:
        self.journal = journal
        self.worker = worker
        self.scripts: dict[str, Any] = {}

    def run(self, steps: Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            done, op = _advance(steps, result, error)
            if done:
                return op
            result, error = None, None
            try:
                result = self._execute(op)
            except CLIENT_ERRORS as exc:
                error = redis_error(exc, "redis")
            except (RedisUnavailable, SessionDeleted) as exc:  # the worker handles both
                error = exc

    def _execute(self, op: Any) -> Any:
        if isinstance(op, Script):
            if not self.scripts:
                redis = self.journal.redis
                self.scripts = {n: redis.register_script(src) for n, src in LUA.items()}
            return self.scripts[op.name](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return getattr(self.journal, op.method)(*op.args)
        if isinstance(op, Blocking):
            return op.fn()
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        raise TypeError(op)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> SyncDelivery:
        d = self.run(self.worker.next_delivery())
        if d is None:
            raise StopIteration
        return SyncDelivery(self, d)

    def close(self) -> None:
        if not self.worker.closed:
            self.run(self.worker.close())

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.worker.stats)

    def __enter__(self) -> Self:
        self.journal.open()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncDeliveries(AsyncIterator[AsyncDelivery]):
    """``async with j.consume(...) as deliveries: async for d in deliveries: ...``"""

    def __init__(self, journal: AsyncJournal, worker: Worker) -> None:
        self.journal = journal
        self.worker = worker
        self.scripts: dict[str, Any] = {}

    async def run(self, steps: Steps) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            done, op = _advance(steps, result, error)
            if done:
                return op
            result, error = None, None
            try:
                result = await self._execute(op)
            except CLIENT_ERRORS as exc:
                error = redis_error(exc, "redis")
            except (RedisUnavailable, SessionDeleted) as exc:  # the worker handles both
                error = exc

    async def _execute(self, op: Any) -> Any:
        if isinstance(op, Script):
            if not self.scripts:
                redis = self.journal.redis
                self.scripts = {n: redis.register_script(src) for n, src in LUA.items()}
            return await self.scripts[op.name](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return await getattr(self.journal, op.method)(*op.args)
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.fn)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        raise TypeError(op)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AsyncDelivery:
        d = await self.run(self.worker.next_delivery())
        if d is None:
            raise StopAsyncIteration
        return AsyncDelivery(self, d)

    async def aclose(self) -> None:
        if not self.worker.closed:
            await self.run(self.worker.close())

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.worker.stats)

    async def __aenter__(self) -> Self:
        await self.journal.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


__all__ = ["AsyncDeliveries", "AsyncDelivery", "EventRecord", "SyncDeliveries", "SyncDelivery",
           "make_worker"]
