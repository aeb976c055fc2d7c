"""The thin I/O shells that run the pure protocols of ``journal._core``: one blocking, one
asyncio.

Everything they share is written once, here: which client call runs an operation
(:meth:`_Driver._call`), stepping a generator (:class:`_Stepper`), translating errors, and
the bookkeeping of pipelined commits (:class:`~journal._core.pipeline.Pipeline`, a pure
object whose generators the shells run under their lock). What is left in each shell is
the awaits, and that the async shell moves blocking file work to a worker thread so the
event loop never waits on an fdatasync.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from journal._core.ops import Blocking, Call, Collect, Lua, Op, Send, Sleep
from journal._core.pipeline import (
    Connect,
    Disconnect,
    NoScript,
    Pipeline,
    ReadReply,
    Release,
    WireFailed,
    WireSteps,
    Write,
)
from journal._core.scripts import ALL as SCRIPTS
from journal._io.connect import CLIENT_ERRORS, AsyncClient, SyncClient, redis_error

T = TypeVar("T")
# What a driver runs: a protocol (``Op``s) or a pipeline generator (``Wire`` ops).
Runnable = Generator[Any, Any, T]


class _Stepper(Generic[T]):
    """Steps a generator: hand it each result (or error), and keep the next operation."""

    __slots__ = ("done", "error", "op", "steps", "value")

    def __init__(self, steps: Runnable[T], error: Callable[[Exception], Exception]) -> None:
        self.steps, self.error = steps, error
        self.done, self.value = False, None
        self.op: Any = None
        self.feed(None, None)

    def feed(self, result: Any, error: Exception | None) -> None:
        """The outcome of ``op``: its result, or the exception it raised (translated)."""
        try:
            if error is None:
                self.op = self.steps.send(result)
            else:
                self.op = self.steps.throw(self.error(error))
        except StopIteration as stop:
            self.done, self.value = True, stop.value


def _may_pipeline(pool: Any) -> bool:
    """Pipelined commits acknowledge before Redis confirms, which is safe as long as Redis
    loses a lease only by expiry or by restarting. A cluster client (no single pool) and a
    Sentinel pool can fail over to a replica that lacks the lease: they commit
    synchronously (correct, one round trip slower)."""
    if pool is None:
        return False
    return not isinstance(
        pool, redis.sentinel.SentinelConnectionPool | redis.asyncio.sentinel.SentinelConnectionPool
    )


def _wire_error(exc: Exception) -> Exception:
    """How a failure on the dedicated connection reaches the pipeline."""
    if isinstance(exc, redis.exceptions.NoScriptError):
        return NoScript(str(exc))
    return WireFailed(str(exc)) if isinstance(exc, CLIENT_ERRORS) else exc


class _Driver:
    """What both shells share: the scripts, the pipeline, which call runs an operation, and
    error translation."""

    def __init__(self, client: Any, where: str, pool: Any) -> None:
        self.client = client
        self.where = where
        # redis-py Script objects: EVALSHA, and on NOSCRIPT (a restarted Redis) load and retry.
        self.scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
        self._pool = pool
        shas = {name: script.sha for name, script in self.scripts.items()}
        self._pipe = Pipeline(_may_pipeline(pool), shas)

    def _call(self, op: Any) -> Callable[[], Any]:
        """The client call that runs a Redis or wire operation (the async shell awaits what
        it returns)."""
        if isinstance(op, Lua):
            return partial(self.scripts[op.script], keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return partial(self.client.execute_command, *op.args)
        if isinstance(op, Connect):
            return self._pool.get_connection  # type: ignore[no-any-return]
        if isinstance(op, Write):
            return partial(op.conn.send_packed_command, [op.data])
        if isinstance(op, ReadReply):
            return op.conn.read_response  # type: ignore[no-any-return]
        if isinstance(op, Disconnect):
            return op.conn.disconnect  # type: ignore[no-any-return]
        if isinstance(op, Release):
            return partial(self._pool.release, op.conn)
        raise TypeError(op)

    def _pipelined(self, op: Any) -> WireSteps[Any] | None:
        """A Send or Collect is a pipeline generator to run under the lock; None otherwise."""
        if isinstance(op, Send):
            return self._pipe.send(op.session_id, op.lua)
        if isinstance(op, Collect):
            return self._pipe.collect(op.session_id)
        return None

    def _op_error(self, exc: Exception) -> Exception:
        """A Redis error reaches the protocol as RedisUnavailable; anything else as is, so
        the protocol can release its lease first."""
        return redis_error(exc, self.where) if isinstance(exc, CLIENT_ERRORS) else exc


class SyncDriver(_Driver):
    def __init__(self, client: SyncClient, where: str) -> None:
        pool = client.connection_pool if isinstance(client, redis.Redis) else None
        super().__init__(client, where, pool)
        self._lock = threading.Lock()  # one dedicated connection, shared by threads

    def execute(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return op.fn()
        if isinstance(op, Sleep):
            return time.sleep(op.seconds)
        if (wire := self._pipelined(op)) is not None:
            with self._lock:
                return self.run(wire, _wire_error)
        return self._call(op)()

    def close(self) -> None:
        with self._lock:
            self.run(self._pipe.close(), _wire_error)

    def run(self, steps: Runnable[T],
            translate: Callable[[Exception], Exception] | None = None) -> T:
        s = _Stepper(steps, translate or self._op_error)
        try:
            while not s.done:
                try:
                    result, error = self.execute(s.op), None
                except Exception as exc:
                    result, error = None, exc
                s.feed(result, error)
            return s.value  # type: ignore[return-value]
        finally:
            steps.close()


class AsyncDriver(_Driver):
    def __init__(self, client: AsyncClient, where: str) -> None:
        pool = client.connection_pool if isinstance(client, redis.asyncio.Redis) else None
        super().__init__(client, where, pool)
        self._lock = asyncio.Lock()

    async def execute(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.fn)
        if isinstance(op, Sleep):
            return await asyncio.sleep(op.seconds)
        if (wire := self._pipelined(op)) is not None:
            async with self._lock:
                return await self.run(wire, _wire_error)
        return await self._call(op)()

    async def close(self) -> None:
        async with self._lock:
            await self.run(self._pipe.close(), _wire_error)

    async def run(self, steps: Runnable[T],
                  translate: Callable[[Exception], Exception] | None = None) -> T:
        s = _Stepper(steps, translate or self._op_error)
        try:
            while not s.done:
                try:
                    result, error = await self.execute(s.op), None
                except Exception as exc:
                    result, error = None, exc
                s.feed(result, error)
            return s.value  # type: ignore[return-value]
        finally:
            steps.close()
