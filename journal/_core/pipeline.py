"""The bookkeeping of pipelined commits, written once and without I/O.

A pipelined commit is sent on one dedicated connection and its reply is read later: before
the next operation on the same session (the append protocol yields
:class:`~journal._core.ops.Collect`), so a caller reads its own writes. :class:`Pipeline`
keeps the commits in flight in order, and a reply read on behalf of another session until
that session collects it. Its methods are generators of *wire* operations (on the one
dedicated connection, whose handle it keeps) that the sync and async drivers run under
their own lock.

Failures come back thrown into the generator: :class:`NoScript` when Redis restarted and
lost its script cache, :class:`WireFailed` for any other failure of the connection.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from journal._core.ops import Lua

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Connect:
    """Take a connection from the client's pool; the result is its handle."""


@dataclass(frozen=True, slots=True)
class Write:
    """Send these bytes on the dedicated connection."""

    conn: Any
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadReply:
    """Read the next reply on the dedicated connection."""

    conn: Any


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the dedicated connection's socket."""

    conn: Any


@dataclass(frozen=True, slots=True)
class Release:
    """Give the dedicated connection back to its pool."""

    conn: Any


# ``Lua`` here means: run the script now on the ordinary client (a commit we cannot pipeline).
Wire = Connect | Write | ReadReply | Disconnect | Release | Lua
WireSteps = Generator[Wire, Any, T]


class NoScript(Exception):
    """Redis does not know the script: it restarted."""


class WireFailed(Exception):
    """The connection failed; what happened to the command is unknown."""


def _bulk(raw: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


def _raw(arg: str | int | bytes) -> bytes:
    """An argument's bytes, as redis-py would send it."""
    if type(arg) is str:
        return arg.encode()
    return arg if isinstance(arg, bytes) else str(arg).encode()


def packed(op: Lua, sha: str, heads: dict[tuple[Any, ...], bytes] | None = None) -> bytes:
    """EVALSHA in RESP, packed by hand: redis-py's general packer costs more than the rest
    of the pipelined send on this hot path.

    ``heads`` caches everything up to the arguments (the count, the sha, the keys): a
    session's commits differ only in their arguments, so their heads are packed once."""
    keys, args = op.keys, op.args
    cache_key = (sha, len(args), *keys)
    head = heads.get(cache_key) if heads is not None else None
    if head is None:
        count = (b"*%d\r\n" % (3 + len(keys) + len(args))
                 + _bulk(b"EVALSHA") + _bulk(sha.encode()) + _bulk(b"%d" % len(keys)))
        head = count + b"".join(_bulk(_raw(key)) for key in keys)
        if heads is not None:
            if len(heads) >= 4096:
                heads.clear()  # a plain bound; a head is cheap to pack again
            heads[cache_key] = head
    out = [head]
    for arg in args:  # _bulk(_raw(arg)), inlined for the usual types: calls cost here
        if isinstance(arg, bytes):
            raw = arg
        elif type(arg) is str:
            raw = arg.encode()
        elif type(arg) is int:  # (not a bool: str(True) is "True")
            raw = b"%d" % arg
        else:
            raw = _raw(arg)
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


@dataclass
class Pipeline:
    """Commits sent whose replies are not read yet, in order, and replies read early.

    ``enabled`` is False where a commit must be confirmed before it is acknowledged (a
    cluster or Sentinel client): every send then runs the script at once.
    """

    enabled: bool
    shas: Mapping[str, str]
    waiting: deque[tuple[str, Lua]] = field(default_factory=deque)
    results: dict[str, Any] = field(default_factory=dict)
    conn: Any = None  # the dedicated connection, opened by the first pipelined send
    heads: dict[tuple[Any, ...], bytes] = field(default_factory=dict)  # see packed()

    def pending(self, session_id: str) -> bool:
        return any(sid == session_id for sid, _ in self.waiting)

    def send(self, session_id: str, lua: Lua) -> WireSteps[None]:
        if self.enabled:
            try:
                if self.conn is None:
                    self.conn = yield Connect()
                yield Write(self.conn, packed(lua, self.shas[lua.script], self.heads))
                self.waiting.append((session_id, lua))
                return
            except WireFailed:
                yield from self._reset()
        # No pipelining here (or the send failed): commit now, remember the reply.
        self.results[session_id] = yield from self._run_now(lua)

    def collect(self, session_id: str) -> WireSteps[Any]:
        while self.waiting and self.pending(session_id):
            sid, lua = self.waiting.popleft()
            try:
                reply = yield ReadReply(self.conn)
            except NoScript:
                reply = yield from self._run_now(lua)  # Redis restarted: load and run it now
            except Exception:
                # Any failure to read it (a dropped or closed connection: redis-py is not
                # consistent in what it raises there) leaves the reply unknown; the line on
                # disk is rolled forward by the next recovery either way.
                yield from self._reset()
                reply = 0
            self.results[sid] = reply
        return self.results.pop(session_id, None)

    def close(self) -> WireSteps[None]:
        while self.waiting:
            yield from self.collect(self.waiting[0][0])
        if self.conn is not None:
            conn, self.conn = self.conn, None
            yield Release(conn)

    def _run_now(self, lua: Lua) -> WireSteps[Any]:
        try:
            return (yield lua)
        except (WireFailed, NoScript):
            return 0

    def _reset(self) -> WireSteps[None]:
        for sid, _ in self.waiting:
            self.results[sid] = 0
        self.waiting.clear()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                yield Disconnect(conn)
                yield Release(conn)
