"""The routes: aiOS's shapes (healthz, events, the event stream, branches), and what aiOS
lacks (appends, the session list, the firehose, metrics, the cookie exchange).

Every error is ``{"error": "<one line>"}`` with a 4xx/5xx status, as aiOS answers; a
refused append wrote nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from journal import (
    AppendOutcomeUnknown,
    AsyncJournal,
    EventRecord,
    InvalidInput,
    JournalError,
    LeaseTimeout,
    RecordTooLarge,
    RedisUnavailable,
    SequenceConflict,
    StorageError,
)
from journal.http._auth import COOKIE_NAME, OPEN, Authenticator, Grant
from journal.http._metrics import CONTENT_TYPE_LATEST, Metrics
from journal.http._sse import frames

MAX_SEQUENCE = 2**53 - 1
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{0,128}")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


@dataclass
class Options:
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch: int = 5000
    heartbeat_s: float = 15.0
    retry_ms: int = 2000
    send_timeout_s: float = 30.0
    queue_size: int = 32
    #: Open streams admitted at once; each holds a Redis pub/sub connection.
    max_streams: int = 2000
    cookie_ttl_s: int = 3600
    #: With no tokens, requests must name a loopback host (stops DNS rebinding).
    loopback_hosts_only: bool = True


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra
        self.headers: dict[str, str] = {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    one_line = " ".join(message.split())
    return JSONResponse({"error": one_line, **extra}, status_code=status, headers=headers)


def _journal_error(exc: JournalError) -> HttpError:
    if isinstance(exc, SequenceConflict):
        return HttpError(409, str(exc), expected=exc.expected, actual=exc.actual)
    if isinstance(exc, RecordTooLarge):
        return HttpError(413, str(exc))
    if isinstance(exc, InvalidInput):
        return HttpError(400, str(exc))
    if isinstance(exc, AppendOutcomeUnknown):
        return HttpError(503, f"{exc}; retry the same request (same event ids) to resolve it")
    if isinstance(exc, LeaseTimeout | RedisUnavailable):
        return HttpError(503, str(exc))
    if isinstance(exc, StorageError):
        return HttpError(507, str(exc))
    return HttpError(500, str(exc))


def _int_param(request: Request, name: str, default: int, low: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdecimal() or len(raw) > 16:
        raise HttpError(400, f"{name} must be a non-negative integer, got {raw[:40]!r}")
    return max(int(raw), low)


def _branch(request: Request) -> str:
    return request.query_params.get("branch", "main").strip() or "main"


class Api:
    """The handlers, sharing one journal, the authenticator and the metrics."""

    def __init__(self, journal: AsyncJournal, auth: Authenticator, metrics: Metrics,
                 options: Options) -> None:
        self.journal = journal
        self.auth = auth
        self.metrics = metrics
        self.options = options
        self._open_streams = 0

    # ----- plumbing --------------------------------------------------------------------

    def handler(self, fn: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                self._check_host(request)
                return await fn(request)
            except HttpError as exc:
                return error_response(exc.status, str(exc), exc.headers or None, **exc.extra)
            except JournalError as exc:
                err = _journal_error(exc)
                return error_response(err.status, str(err), **err.extra)

        return run

    def _check_host(self, request: Request) -> None:
        if self.auth.enabled or not self.options.loopback_hosts_only:
            return
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name.lower() not in _LOOPBACK_HOSTS:
            raise HttpError(421, f"host {host[:80]!r} is not a loopback name: without tokens "
                            "the server answers only requests to localhost")

    def grant(self, request: Request, *, write: bool = False) -> Grant:
        if not self.auth.enabled:
            return OPEN
        header = request.headers.get("authorization")
        if header is not None:
            grant = self.auth.bearer(header)
            if grant is None:
                raise self._unauthorized("the bearer token is not valid")
            return grant
        if not write:
            grant = self.auth.cookie(request.cookies.get(COOKIE_NAME))
            if grant is not None:
                return grant
            if request.cookies.get(COOKIE_NAME):
                raise self._unauthorized("the session cookie is invalid or expired; "
                                         "exchange a token again at POST /auth/cookie")
        raise self._unauthorized("a bearer token is required (Authorization: Bearer ...)")

    @staticmethod
    def _unauthorized(message: str) -> HttpError:
        err = HttpError(401, message)
        err.headers = {"WWW-Authenticate": 'Bearer realm="journal"'}
        return err

    def may_read(self, request: Request, session_id: str) -> None:
        if not self.grant(request).may_read(session_id):
            raise HttpError(403, f"this token may not read session {session_id[:140]!r}")

    async def _read_json(self, request: Request) -> Any:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            # Also what keeps a cross-site HTML form from posting: JSON needs a preflight.
            raise HttpError(415, "the body must be JSON (Content-Type: application/json)")
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdecimal() or int(length) > limit):
            raise HttpError(413, f"the body is larger than the limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HttpError(413, f"the body is larger than the limit of {limit} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None

    # ----- aiOS routes -----------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        try:
            await self.journal.open()
            redis_ok = bool(await self.journal.redis.ping())
        except Exception:  # any failure means: not reachable now
            redis_ok = False
        return JSONResponse({"status": "ok", "service": "journal", "redis": redis_ok})

    async def list_events(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        branch = _branch(request)
        from_sequence = _int_param(request, "from_sequence", 1, low=1)
        limit = min(max(_int_param(request, "limit", 200), 1), 5000)
        self.may_read(request, session_id)
        from_sequence = min(from_sequence, MAX_SEQUENCE)
        events = await self.journal.read(session_id, branch, from_sequence, limit)
        return _json({"session_id": session_id, "branch": branch,
                      "from_sequence": from_sequence, "events": events})

    async def list_branches(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        self.may_read(request, session_id)
        heads = await self.journal.branches(session_id)
        branches = []
        for branch_id, head in sorted(heads.items(), key=lambda kv: (kv[0] != "main", kv[0])):
            parent, fork = None, 0
            if branch_id != "main":
                parent, fork = await self._fork_point(session_id, branch_id, heads)
            branches.append({"branch_id": branch_id, "parent_branch": parent,
                             "fork_sequence": fork, "head_sequence": head, "merged_into": None})
        return _json({"session_id": session_id, "branches": branches})

    async def _fork_point(self, session_id: str, branch_id: str,
                          heads: dict[str, int]) -> tuple[str | None, int]:
        # aiOS starts a branch with its BranchCreated event: it names the fork point. One
        # small read per branch; the parent is the branch named there, else main.
        first = await self.journal.read(session_id, branch_id, 1, 1)
        if not first or first[0].kind_type != "BranchCreated":
            return None, 0
        kind = first[0].kind
        parent = kind.get("from_branch") or kind.get("parent_branch_id")
        if not isinstance(parent, str):
            parent = "main" if "main" in heads else None
        fork = kind.get("fork_point_seq", kind.get("fork_sequence", 0))
        return parent, fork if isinstance(fork, int) else 0

    async def stream_events(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        branch = _branch(request)
        cursor = _int_param(request, "cursor", 0)
        page = min(max(_int_param(request, "replay_limit", 500), 1), 5000)
        self.may_read(request, session_id)
        head = await self.journal.head(session_id, branch)  # also validates both ids
        last_id = request.headers.get("last-event-id")
        if last_id is not None and last_id.strip() != "":
            text = last_id.strip()
            if not text.isdecimal() or len(text) > 16:
                raise HttpError(400, f"Last-Event-ID must be a sequence number, "
                                f"got {text[:40]!r}")
            if int(text) > head:
                raise HttpError(400, f"Last-Event-ID {int(text)} is beyond the head {head} of "
                                f"session {session_id} branch {branch}")
            cursor = int(text)  # the browser's own resume point wins over ?cursor=
        cursor = min(cursor, MAX_SEQUENCE)
        subscription = self.journal.subscribe(session_id, branch, after_sequence=cursor,
                                              page_size=page)
        return self._sse(subscription, lambda r: str(r.sequence), "session")

    # ----- additions -------------------------------------------------------------------

    async def append(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        grant = self.grant(request, write=True)
        if not grant.may_append(session_id):
            raise HttpError(403, f"this token may not append to session {session_id[:140]!r}")
        started = time.perf_counter()
        outcome = "error"
        try:
            body = await self._read_json(request)
            records = self._records(session_id, body)
            stored = await self.journal.append_batch(records)
            outcome = "ok"
        except HttpError:
            outcome = "invalid"
            raise
        except SequenceConflict:
            outcome = "conflict"
            self.metrics.conflicts.inc()
            raise
        except InvalidInput:
            outcome = "invalid"
            raise
        except (RedisUnavailable, LeaseTimeout, AppendOutcomeUnknown):
            outcome = "unavailable"
            raise
        finally:
            self.metrics.append_seconds.labels(outcome).observe(time.perf_counter() - started)
        self.metrics.appended_events.inc(len(stored))
        return _json({"session_id": session_id, "branch": stored[0].branch_id,
                      "first_sequence": stored[0].sequence, "last_sequence": stored[-1].sequence,
                      "events": stored}, status=201)

    def _records(self, session_id: str, body: Any) -> list[EventRecord]:
        items = body if isinstance(body, list) else [body]
        if not items:
            raise HttpError(400, "the batch is empty: send one record or a non-empty array")
        if len(items) > self.options.max_batch:
            raise HttpError(413, f"a batch holds at most {self.options.max_batch} records, "
                            f"got {len(items)}")
        records = []
        for i, item in enumerate(items):
            where = f"record {i}" if isinstance(body, list) else "the record"
            if not isinstance(item, dict):
                raise HttpError(400, f"{where} must be a JSON object, got {type(item).__name__}")
            fields = dict(item)
            if fields.setdefault("session_id", session_id) != session_id:
                raise HttpError(400, f"{where} has session_id {str(fields['session_id'])[:140]!r},"
                                f" but the path names {session_id!r}")
            if "sequence" not in fields:
                raise HttpError(400, f"{where} has no sequence: the client gives it "
                                "(head + 1; see GET .../events or .../branches)")
            fields.setdefault("branch_id", "main")
            fields.setdefault("event_id", str(uuid.uuid4()))
            fields.setdefault("timestamp", _now())
            try:
                records.append(msgspec.convert(fields, EventRecord))
            except (msgspec.ValidationError, InvalidInput) as exc:
                raise HttpError(400, f"{where} is invalid: {exc}") from None
        return records

    async def list_sessions(self, request: Request) -> Response:
        grant = self.grant(request)
        sessions = []
        for name in self.journal.sessions():
            if not grant.may_read(name):
                continue
            heads = await self.journal.branches(name)
            sessions.append({"session_id": name, "branches": heads,
                             "events": sum(heads.values())})
        return _json({"sessions": sessions})

    async def firehose(self, request: Request) -> Response:
        grant = self.grant(request)
        prefix = request.query_params.get("prefix", grant.prefix)
        if _PREFIX.fullmatch(prefix) is None or prefix.startswith("."):
            raise HttpError(400, f"prefix {prefix[:40]!r} may only hold [A-Za-z0-9._:-] "
                            "(at most 128) and must not start with '.'")
        if not grant.covers_prefix(prefix):
            raise HttpError(403, f"this token may only read sessions starting with "
                            f"{grant.prefix!r}")
        options = {"from_start": True} if request.query_params.get("from_start") in (
            "1", "true") else {}
        subscription = self.journal.subscribe_all(prefix, **options)
        return self._sse(subscription,
                         lambda r: f"{r.session_id}:{r.branch_id}:{r.sequence}", "firehose")

    def _sse(self, subscription: Any, event_id: Callable[[EventRecord], str],
             feed: str) -> Response:
        if self._open_streams >= self.options.max_streams:
            aclose = getattr(subscription, "aclose", None)
            if aclose is not None:
                asyncio.get_running_loop().create_task(aclose())
            raise HttpError(503, f"this server already serves {self.options.max_streams} "
                            "streams; try again later")
        self._open_streams += 1
        gauge = self.metrics.active_streams.labels(feed)
        gauge.inc()
        self.metrics.streams_opened.labels(feed).inc()
        closed = False

        def on_close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self._open_streams -= 1
                gauge.dec()

        body = frames(subscription, event_id, retry_ms=self.options.retry_ms,
                      queue_size=self.options.queue_size, on_close=on_close)
        return _StreamResponse(
            body, ping=self.options.heartbeat_s, sep="\n", send_timeout=self.options.send_timeout_s,
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep="\n"),
            metrics=self.metrics, on_close=on_close,
        )

    async def metrics_route(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def cookie(self, request: Request) -> Response:
        if not self.auth.enabled:
            return JSONResponse({"scope": "append", "prefix": "", "expires_in": None,
                                 "note": "no tokens are configured: nothing to exchange"})
        header = request.headers.get("authorization")
        grant = self.auth.bearer(header)
        if grant is None:
            raise self._unauthorized("POST /auth/cookie needs a valid bearer token")
        ttl = self.options.cookie_ttl_s
        response = JSONResponse({"scope": "read", "prefix": grant.prefix, "expires_in": ttl})
        response.set_cookie(COOKIE_NAME, self.auth.make_cookie(grant, ttl), max_age=ttl,
                            path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def drop_cookie(self, request: Request) -> Response:
        response = JSONResponse({"status": "ok"})
        response.delete_cookie(COOKIE_NAME, path="/")
        return response


class _StreamResponse(EventSourceResponse):
    """sse-starlette's response, counting the streams it cuts off for not reading."""

    def __init__(self, *args: Any, metrics: Metrics, on_close: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from sse_starlette.sse import SendTimeoutError

        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self._metrics.stream_send_timeouts.inc()
        finally:
            self._on_close()  # also when the body never started (HEAD, early disconnect)


_encoder = msgspec.json.Encoder()


def _json(content: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(content), status_code=status, media_type="application/json")


def _now() -> str:
    ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
