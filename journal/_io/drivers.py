"""The thin I/O shells that run the protocols of ``protocol.py``: one blocking, one asyncio.

The only difference between them is how an operation is executed (``await`` or not, and the
async shell moves blocking file work to a worker thread so the event loop never waits on an
fdatasync). Everything else, the stepping, the error translation and the bookkeeping of
pipelined commits, is shared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from journal._core.protocol import Blocking, Call, Collect, Lua, Op, Send, Sleep, Steps
from journal._core.scripts import SOURCES
from journal._io.connect import CLIENT_ERRORS, AsyncClient, SyncClient, redis_error

T = TypeVar("T")




def _advance(steps: Steps[T], result: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Feed one result (or error) to the protocol: (done, value-or-next-op)."""
    try:
        op = steps.throw(error) if error is not None else steps.send(result)
    except StopIteration as stop:
        return True, stop.value
    return False, op


@dataclass
class _Pipelined:
    """Commits sent on the dedicated connection whose replies are not read yet, in order.

    A reply is read before the next operation on the same session (the protocol yields
    :class:`Collect`), so a caller reads its own writes. ``results`` keeps a reply read on
    behalf of another session until that session collects it.
    """

    waiting: deque[tuple[str, Lua]] = field(default_factory=deque)
    results: dict[str, Any] = field(default_factory=dict)

    def pending(self, session_id: str) -> bool:
        return any(sid == session_id for sid, _ in self.waiting)

    def packed(self, op: Lua, sha: str) -> bytes:
        """EVALSHA in RESP, packed by hand: redis-py's general packer costs more than the
        rest of the pipelined send on this hot path."""
        args = ("EVALSHA", sha, len(op.keys), *op.keys, *op.args)
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg if isinstance(arg, bytes) else str(arg).encode()
            parts += (b"$%d\r\n" % len(raw), raw, b"\r\n")
        return b"".join(parts)


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


class SyncDriver:
    def __init__(self, client: SyncClient, where: str) -> None:
        self.client = client
        self.where = where
        # redis-py Script objects: EVALSHA, and on NOSCRIPT (a restarted Redis) load and retry.
        self.scripts = {name: client.register_script(src) for name, src in SOURCES.items()}
        self._lock = threading.Lock()  # one dedicated connection, shared by threads
        self._conn: Any = None
        self._pipe = _Pipelined()
        self._pool: Any = client.connection_pool if isinstance(client, redis.Redis) else None
        self._pipelining = _may_pipeline(self._pool)

    def execute(self, op: Op) -> Any:
        if isinstance(op, Lua):
            return self.scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return self.client.execute_command(*op.args)  # type: ignore[no-untyped-call]
        if isinstance(op, Blocking):
            return op.fn()
        if isinstance(op, Send):
            return self._send(op)
        if isinstance(op, Collect):
            return self._collect(op.session_id)
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        raise TypeError(op)

    def _send(self, op: Send) -> None:
        with self._lock:
            if self._pipelining:
                try:
                    if self._conn is None:
                        self._conn = self._pool.get_connection()
                    script = self.scripts[op.lua.script]
                    self._conn.send_packed_command([self._pipe.packed(op.lua, script.sha)])
                    self._pipe.waiting.append((op.session_id, op.lua))
                    return
                except CLIENT_ERRORS:
                    self._reset()
            # No pipelining here (or the send failed): commit now, remember the reply.
            self._pipe.results[op.session_id] = self._run_lua(op.lua)

    def _collect(self, session_id: str) -> Any:
        with self._lock:
            return self._collect_locked(session_id)

    def _collect_locked(self, session_id: str) -> Any:
        while self._pipe.pending(session_id):
            sid, lua = self._pipe.waiting.popleft()
            try:
                reply = self._conn.read_response()
            except redis.exceptions.NoScriptError:
                reply = self._run_lua(lua)  # Redis restarted: load the script, run it now
            except Exception:
                # Any failure to read it (a dropped or closed connection: redis-py is not
                # consistent in what it raises there) leaves the reply unknown; the line on
                # disk is rolled forward by the next recovery either way.
                self._reset()
                reply = 0
            self._pipe.results[sid] = reply
        return self._pipe.results.pop(session_id, None)

    def _run_lua(self, lua: Lua) -> Any:
        try:
            return self.scripts[lua.script](keys=lua.keys, args=lua.args)
        except CLIENT_ERRORS:
            return 0

    def _reset(self) -> None:
        for sid, _ in self._pipe.waiting:
            self._pipe.results[sid] = 0
        self._pipe.waiting.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
                self._pool.release(self._conn)
            self._conn = None

    def close(self) -> None:
        with self._lock:
            while self._pipe.waiting:
                self._collect_locked(self._pipe.waiting[0][0])
            if self._conn is not None:
                self._pool.release(self._conn)
                self._conn = None

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
                except CLIENT_ERRORS as exc:
                    error = redis_error(exc, self.where)
                except Exception as exc:
                    # Thrown back into the protocol, so it can release its lease first.
                    error = exc
        finally:
            steps.close()


class AsyncDriver:
    def __init__(self, client: AsyncClient, where: str) -> None:
        self.client = client
        self.where = where
        self.scripts = {name: client.register_script(src) for name, src in SOURCES.items()}
        self._lock = asyncio.Lock()
        self._conn: Any = None
        self._pipe = _Pipelined()
        self._pool: Any = (client.connection_pool if isinstance(client, redis.asyncio.Redis)
                           else None)
        self._pipelining = _may_pipeline(self._pool)

    async def execute(self, op: Op) -> Any:
        if isinstance(op, Lua):
            return await self.scripts[op.script](keys=op.keys, args=op.args)
        if isinstance(op, Call):
            return await self.client.execute_command(*op.args)
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.fn)
        if isinstance(op, Send):
            return await self._send(op)
        if isinstance(op, Collect):
            return await self._collect(op.session_id)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        raise TypeError(op)

    async def _send(self, op: Send) -> None:
        async with self._lock:
            if self._pipelining:
                try:
                    if self._conn is None:
                        self._conn = await self._pool.get_connection()
                    script = self.scripts[op.lua.script]
                    await self._conn.send_packed_command([self._pipe.packed(op.lua, script.sha)])
                    self._pipe.waiting.append((op.session_id, op.lua))
                    return
                except CLIENT_ERRORS:
                    await self._reset()
            self._pipe.results[op.session_id] = await self._run_lua(op.lua)

    async def _collect(self, session_id: str) -> Any:
        async with self._lock:
            return await self._collect_locked(session_id)

    async def _collect_locked(self, session_id: str) -> Any:
        while self._pipe.pending(session_id):
            sid, lua = self._pipe.waiting.popleft()
            try:
                reply = await self._conn.read_response()
            except redis.exceptions.NoScriptError:
                reply = await self._run_lua(lua)
            except Exception:  # as in SyncDriver._collect_locked
                await self._reset()
                reply = 0
            self._pipe.results[sid] = reply
        return self._pipe.results.pop(session_id, None)

    async def _run_lua(self, lua: Lua) -> Any:
        try:
            return await self.scripts[lua.script](keys=lua.keys, args=lua.args)
        except CLIENT_ERRORS:
            return 0

    async def _reset(self) -> None:
        for sid, _ in self._pipe.waiting:
            self._pipe.results[sid] = 0
        self._pipe.waiting.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
                await self._pool.release(self._conn)
            self._conn = None

    async def close(self) -> None:
        async with self._lock:
            while self._pipe.waiting:
                await self._collect_locked(self._pipe.waiting[0][0])
            if self._conn is not None:
                await self._pool.release(self._conn)
                self._conn = None

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
                except CLIENT_ERRORS as exc:
                    error = redis_error(exc, self.where)
                except Exception as exc:
                    error = exc
        finally:
            steps.close()
