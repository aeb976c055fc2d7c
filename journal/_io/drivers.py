"""The thin I/O shells that run the pure protocols of ``journal._core``: one blocking, one
asyncio.

Everything they share is written once, here: which call runs an operation
(:meth:`_Driver._dispatch`), translating errors, and the bookkeeping of pipelined commits
(:class:`~journal._core.pipeline.Pipeline`, a pure object whose generators the shells run
under their lock). What is left in each shell is the awaits (its ``run`` loop), and that
the async shell moves blocking file work to a worker thread so the event loop never waits
on an fdatasync.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

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


def _unknown(op: Any) -> Any:
    raise TypeError(op)


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

    def _dispatch(
        self,
        blocking: Callable[[Blocking], Any],
        sleep: Callable[[Sleep], Any],
        wire: Callable[[WireSteps[Any]], Any],
    ) -> dict[type, Callable[[Any], Any]]:
        """What runs each operation, keyed by its exact type: a protocol's or a pipeline
        generator's (``Wire``) operation. A driver steps about ten operations per append,
        and one dict lookup is cheaper than a chain of isinstance checks. Each handler
        returns the result (sync) or an awaitable of it (async): the shells give the
        parts that differ, file work, sleeping and running a pipeline generator."""
        client, scripts, pipe = self.client, self.scripts, self._pipe
        return {
            Lua: lambda op: scripts[op.script](keys=op.keys, args=op.args),
            Call: lambda op: client.execute_command(*op.args),
            Blocking: blocking,
            Sleep: sleep,
            Send: lambda op: wire(pipe.send(op.session_id, op.lua)),
            Collect: lambda op: wire(pipe.collect(op.session_id)),
            Connect: lambda op: self._pool.get_connection(),
            Write: lambda op: op.conn.send_packed_command([op.data]),
            ReadReply: lambda op: op.conn.read_response(),
            Disconnect: lambda op: op.conn.disconnect(),
            Release: lambda op: self._pool.release(op.conn),
        }

    def _op_error(self, exc: Exception) -> Exception:
        """A Redis error reaches the protocol as RedisUnavailable; anything else as is, so
        the protocol can release its lease first."""
        return redis_error(exc, self.where) if isinstance(exc, CLIENT_ERRORS) else exc


# The two ``run`` loops below are the same steps, with and without ``await``: hand the
# generator each operation's result, or its error translated, until it returns. They are
# written out rather than shared through a stepping object, since they run for every
# operation of every append (about ten), and a method call per step costs more than the
# loop itself.


class SyncDriver(_Driver):
    def __init__(self, client: SyncClient, where: str) -> None:
        pool = client.connection_pool if isinstance(client, redis.Redis) else None
        super().__init__(client, where, pool)
        self._lock = threading.Lock()  # one dedicated connection, shared by threads
        self._ops = self._dispatch(
            lambda op: op.fn(), lambda op: time.sleep(op.seconds), self._wire
        )

    def execute(self, op: Op) -> Any:
        return self._ops.get(type(op), _unknown)(op)

    def _wire(self, steps: WireSteps[T]) -> T:
        with self._lock:
            return self.run(steps, _wire_error)

    def close(self) -> None:
        self._wire(self._pipe.close())

    def run(self, steps: Runnable[T],
            translate: Callable[[Exception], Exception] | None = None) -> T:
        error = translate or self._op_error
        ops = self._ops
        try:
            op = steps.send(None)
            while True:
                try:
                    result = ops.get(type(op), _unknown)(op)
                except Exception as exc:
                    op = steps.throw(error(exc))
                else:
                    op = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            steps.close()


class AsyncDriver(_Driver):
    def __init__(self, client: AsyncClient, where: str) -> None:
        pool = client.connection_pool if isinstance(client, redis.asyncio.Redis) else None
        super().__init__(client, where, pool)
        self._lock = asyncio.Lock()
        # File work goes to a worker thread: the event loop never waits on an fdatasync.
        self._ops = self._dispatch(
            lambda op: asyncio.to_thread(op.fn), lambda op: asyncio.sleep(op.seconds),
            self._wire,
        )

    async def execute(self, op: Op) -> Any:
        return await self._ops.get(type(op), _unknown)(op)

    async def _wire(self, steps: WireSteps[T]) -> T:
        async with self._lock:
            return await self.run(steps, _wire_error)

    async def close(self) -> None:
        await self._wire(self._pipe.close())

    async def run(self, steps: Runnable[T],
                  translate: Callable[[Exception], Exception] | None = None) -> T:
        error = translate or self._op_error
        ops = self._ops
        try:
            op = steps.send(None)
            while True:
                try:
                    result = await ops.get(type(op), _unknown)(op)
                except Exception as exc:
                    op = steps.throw(error(exc))
                else:
                    op = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            steps.close()
