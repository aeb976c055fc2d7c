"""The thin I/O shells of the group protocol: one blocking, one asyncio.

:class:`~journal._groups.engine.Worker` yields the journal's own operations, so its
generators run on the journal's driver (``journal._run``): these shells only wrap the
deliveries and await. No thread and no background task: claims are extended whenever the
consumer asks for the next delivery or settles one, so a handler that runs longer than
``claim_ms`` must call ``d.extend()``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from journal._core.ops import Steps as _CoreSteps
from journal._groups.engine import ConsumeOptions, Delivery, Steps, Worker
from journal._model.ids import validate_id
from journal._model.records import EventRecord
from journal.settings import JournalSettings

T = TypeVar("T")


class _Journal(Protocol):
    """What a worker needs of either journal (a protocol, so no import cycle): its
    settings, its sessions, and its read and branches protocols with their input checks."""

    settings: JournalSettings

    def sessions(self) -> list[str]: ...

    def _read(self, session_id: str, branch_id: str, from_sequence: int,
              limit: int) -> _CoreSteps[list[EventRecord]]: ...

    def _branches(self, session_id: str) -> _CoreSteps[dict[str, int]]: ...


class Journal(_Journal, Protocol):
    """What a sync worker needs of its journal."""

    def open(self) -> Any: ...

    def _run(self, steps: _CoreSteps[T]) -> T: ...


class AsyncJournal(_Journal, Protocol):
    """What an async worker needs of its journal."""

    async def open(self) -> Any: ...

    async def _run(self, steps: _CoreSteps[T]) -> T: ...


def make_worker(j: Journal | AsyncJournal, group: str, worker: str | None,
                options: dict[str, Any]) -> Worker:
    s = j.settings
    validate_id(group, "group", s.max_id_length)
    name = worker or f"{os.uname().nodename}-{os.getpid()}"
    validate_id(name, "worker", s.max_id_length)
    return Worker(group=group, worker=name, root=s.root, prefix=s.key_prefix,
                  list_sessions=j.sessions, read=j._read, branches=j._branches,
                  options=ConsumeOptions.parse(options), max_id_length=s.max_id_length)


class _Delivery:
    """What both deliveries share: the delivery, and the worker's steps that settle it."""

    __slots__ = ("_d", "_shell")

    def __init__(self, shell: SyncDeliveries | AsyncDeliveries, d: Delivery) -> None:
        self._shell, self._d = shell, d

    event = property(lambda self: self._d.event)
    attempt = property(lambda self: self._d.attempt)
    fence = property(lambda self: self._d.fence)
    replay = property(lambda self: self._d.replay)

    def _ack(self) -> Steps:
        return self._shell.worker.settle(self._shell.worker.ack(self._d), self._d)

    def _nack(self, delay_s: float | None, error: str) -> Steps:
        steps = self._shell.worker.nack(self._d, delay_s, error)
        return self._shell.worker.settle(steps, self._d)

    def _extend(self) -> Steps:
        return self._shell.worker.settle(self._shell.worker.extend(self._d), self._d)

    def __repr__(self) -> str:
        e = self._d.event
        return (f"Delivery({e.session_id}/{e.branch_id}#{e.sequence}, "
                f"attempt={self._d.attempt}, fence={self._d.fence})")


class SyncDelivery(_Delivery):
    """``d.event``, ``d.attempt``, ``d.fence``; settle with ``ack()``, ``nack()``."""

    __slots__ = ()
    _shell: SyncDeliveries

    def ack(self) -> bool:
        """Commit the position (fenced). False: the claim was lost; it will be redelivered."""
        return bool(self._shell.run(self._ack()))

    def nack(self, delay_s: float | None = None, error: str = "nacked") -> bool:
        return bool(self._shell.run(self._nack(delay_s, error)))

    def extend(self) -> bool:
        return bool(self._shell.run(self._extend()))


class AsyncDelivery(_Delivery):
    __slots__ = ()
    _shell: AsyncDeliveries

    async def ack(self) -> bool:
        return bool(await self._shell.run(self._ack()))

    async def nack(self, delay_s: float | None = None, error: str = "nacked") -> bool:
        return bool(await self._shell.run(self._nack(delay_s, error)))

    async def extend(self) -> bool:
        return bool(await self._shell.run(self._extend()))


class SyncDeliveries(Iterator[SyncDelivery]):
    """``with j.consume(...) as deliveries: for d in deliveries: ...``"""

    def __init__(self, journal: Journal, worker: Worker) -> None:
        self.journal = journal
        self.worker = worker

    def run(self, steps: Steps) -> Any:
        return self.journal._run(steps)

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

    async def run(self, steps: Steps) -> Any:
        return await self.journal._run(steps)

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
