"""The ASGI application: :func:`create_app`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from journal import AsyncJournal, JournalError, RedisUnavailable
from journal.http._auth import Authenticator, Token, load_tokens
from journal.http._metrics import Metrics
from journal.http._routes import Api, Options, error_response

STATIC = Path(__file__).resolve().parent / "static"


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def create_app(
    root: str | os.PathLike[str] | None = None,
    redis_url: str | None = None,
    *,
    tokens: Iterable[Token] | None = None,
    token_file: str | os.PathLike[str] | None = None,
    cors_origins: Sequence[str] | None = None,
    journal_options: dict[str, Any] | None = None,
    **options: Any,
) -> Starlette:
    """The journal's HTTP application.

    Every argument falls back to the environment, so ``uvicorn --factory
    journal.http:create_app`` (or gunicorn with uvicorn workers) needs none:
    ``JOURNAL_ROOT``, ``JOURNAL_REDIS_URL`` (and every other ``JOURNAL_*`` journal setting),
    ``JOURNAL_HTTP_TOKENS``, ``JOURNAL_HTTP_TOKEN_FILE``, ``JOURNAL_HTTP_CORS_ORIGINS``
    (comma-separated). ``options`` are the fields of :class:`Options` (limits, heartbeat,
    send timeout, ...).
    """
    token_list = list(tokens) if tokens is not None else load_tokens(token_file)
    auth = Authenticator(token_list)
    origins = list(cors_origins) if cors_origins is not None else _env_list(
        "JOURNAL_HTTP_CORS_ORIGINS")
    settings = Options(**options)
    metrics = Metrics()
    journal = AsyncJournal(root, redis_url, **(journal_options or {}))
    api = Api(journal, auth, metrics, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await journal.open()
        except RedisUnavailable as exc:
            # Serve anyway: routes answer 503 until Redis is back (the journal reconnects).
            print(f"journal serve: warning: {exc}", file=sys.stderr, flush=True)
        # Every SSE stream holds one pub/sub connection from the client's pool (redis-py
        # caps a pool at 100 by default): make room for the streams we admit, and a margin
        # for the appends and reads.
        with contextlib.suppress(JournalError):
            pool = getattr(journal.redis, "connection_pool", None)
            if pool is not None and isinstance(getattr(pool, "max_connections", None), int):
                pool.max_connections = max(pool.max_connections, settings.max_streams + 64)
        metrics.start()
        try:
            yield
        finally:
            metrics.stop()
            await journal.close()

    async def index(request: Any) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    h = api.handler
    routes = [
        Route("/", h(index), methods=["GET"]),
        Route("/healthz", h(api.healthz), methods=["GET"]),
        Route("/metrics", h(api.metrics_route), methods=["GET"]),
        Route("/auth/cookie", h(api.cookie), methods=["POST"]),
        Route("/auth/cookie", h(api.drop_cookie), methods=["DELETE"]),
        Route("/sessions", h(api.list_sessions), methods=["GET"]),
        Route("/sessions/{session_id}/events", h(api.list_events), methods=["GET"]),
        Route("/sessions/{session_id}/events", h(api.append), methods=["POST"]),
        Route("/sessions/{session_id}/events/stream", h(api.stream_events), methods=["GET"]),
        Route("/sessions/{session_id}/branches", h(api.list_branches), methods=["GET"]),
        Route("/events/stream", h(api.firehose), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_credentials=True, max_age=600,
        ))
    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"no such route: {request.method} {request.url.path[:200]}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, f"{request.method} is not allowed on "
                              f"{request.url.path[:200]}")

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_allowed})
    app.state.journal = journal
    app.state.metrics = metrics
    app.state.auth = auth
    return app
