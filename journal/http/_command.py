"""``journal serve``: arguments and the run. Imports nothing of the ``http`` extra until it
runs, so the rest of the CLI works without it."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

__all__ = ["add_serve_arguments", "run_serve"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1). Without tokens, "
                        "only a loopback address is allowed unless --insecure is given")
    parser.add_argument("--port", type=int, default=8787, help="TCP port (default: 8787)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="bearer tokens, one 'SECRET SCOPE [PREFIX]' per line "
                        "($JOURNAL_HTTP_TOKEN_FILE; also $JOURNAL_HTTP_TOKENS)")
    parser.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                        help="allow this browser origin (repeatable; "
                        "$JOURNAL_HTTP_CORS_ORIGINS, comma-separated). Default: none")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address without tokens: anyone who can "
                        "reach it can read and append")
    parser.add_argument("--heartbeat", type=_positive, default=15.0, metavar="S",
                        help="seconds between SSE heartbeat comments (default: 15)")
    parser.add_argument("--send-timeout", type=_positive, default=30.0, metavar="S",
                        help="cut off a stream whose client has not taken a frame for S "
                        "seconds (default: 30)")
    parser.add_argument("--max-body", type=int, default=8 * 1024 * 1024, metavar="BYTES",
                        help="largest POST body (default: 8 MiB)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: warning)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(message: str, code: int = 2) -> int:
    print(f"journal serve: error: {message}", file=sys.stderr)
    return code


def run_serve(args: argparse.Namespace, *, root: Path | None = None,
              redis_url: str | None = None, durability: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status."""
    try:
        import uvicorn

        from journal.http._app import create_app
        from journal.http._auth import TokenError, load_tokens
    except ImportError as exc:
        return _fail(f"the HTTP server needs the http extra (pip install 'journal[http]'): "
                     f"{exc}")
    try:
        tokens = load_tokens(args.token_file)
    except TokenError as exc:
        return _fail(str(exc))
    if not tokens and not _is_loopback(args.host) and not args.insecure:
        return _fail(f"refusing to listen on {args.host} without tokens: give --token-file "
                     "(or $JOURNAL_HTTP_TOKENS), listen on 127.0.0.1, or pass --insecure")
    if not 0 < args.port < 65536:
        return _fail(f"--port must be in 1..65535, got {args.port}")
    options = {"durability": durability} if durability else {}
    app = create_app(
        root if root is not None else os.environ.get("JOURNAL_ROOT") or "data",
        redis_url,
        tokens=tokens,
        cors_origins=args.cors_origin,
        journal_options=options,
        heartbeat_s=args.heartbeat,
        send_timeout_s=args.send_timeout,
        max_body_bytes=args.max_body,
        loopback_hosts_only=not args.insecure,
    )
    auth = f"{len(tokens)} token(s)" if tokens else "no tokens: loopback only"
    print(f"journal serve: http://{args.host}:{args.port}/ ({auth})", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=3, access_log=False)
    return 0
