"""The thin I/O shells that run the protocols of ``protocol.py``: one blocking, one asyncio.

The only difference between them is how an operation is executed (``await`` or not, and the
async shell moves blocking file work to a worker thread so the event loop never waits on an
fdatasync). Everything else, the stepping and the error translation, is shared here.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any, TypeVar

import redis
import redis.asyncio

from .errors import RedisUnavailable
from .protocol import Blocking, Call, Lua, Op, Sleep, Steps

T = TypeVar("T")

LUA_SOURCES: dict[str, str] = {
    entry.name.removesuffix(".lua"): entry.read_text()
    for entry in files("journal").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
}


def redis_error(exc: Exception, where: str) -> RedisUnavailable:
    """Translate a redis-py error. redis-py messages name host and port, never a password."""
    return RedisUnavailable(f"redis at {where}: {type(exc).__name__}: {exc}")


def _advance(steps: Steps[T], result: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Feed one result (or error) to the protocol: (done, value-or-next-op)."""
    try:
        op = steps.throw(error) if error is not None else steps.send(result)
    except StopIteration as stop:
        return True, stop.value
    return False, op


class SyncDriver:
    def __init__(self, client: redis.Redis, where: str) -> None:
        self.client = client
        self.where = where
        # redis-py Script objects: EVALSHA, and on NOSCRIPT (a restarted Redis) load and retry.
        self.scripts = {name: client.register_script(src) for name, src in LUA_SOURCES.items()}

    def execute(self, op: Op) -> Any:
        if isinstance(op, Lua):
            return self.scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return self.client.execute_command(*op.args)  # type: ignore[no-untyped-call]
        if isinstance(op, Blocking):
            return op.fn()
        if isinstance(op, Sleep):
            import time

            time.sleep(op.seconds)
            return None
        raise TypeError(op)

    def run(self, steps: Steps[T]) -> T:
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                done, value = _advance(steps, result, error)
                if done:
                    return value  # type: ignore[no-any-return]
                result, error = None, None
                try:
                    result = self.execute(value)
                except redis.RedisError as exc:
                    error = redis_error(exc, self.where)
                except Exception as exc:
                    # Thrown back into the protocol, so it can release its lease first.
                    error = exc
        finally:
            steps.close()


class AsyncDriver:
    def __init__(self, client: redis.asyncio.Redis, where: str) -> None:
        self.client = client
        self.where = where
        self.scripts = {name: client.register_script(src) for name, src in LUA_SOURCES.items()}

    async def execute(self, op: Op) -> Any:
        if isinstance(op, Lua):
            return await self.scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return await self.client.execute_command(*op.args)  # type: ignore[no-untyped-call]
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.fn)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        raise TypeError(op)

    async def run(self, steps: Steps[T]) -> T:
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                done, value = _advance(steps, result, error)
                if done:
                    return value  # type: ignore[no-any-return]
                result, error = None, None
                try:
                    result = await self.execute(value)
                except redis.RedisError as exc:
                    error = redis_error(exc, self.where)
                except Exception as exc:
                    # Thrown back into the protocol, so it can release its lease first.
                    error = exc
        finally:
            steps.close()
