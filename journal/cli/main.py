"""The ``journal`` command line: append, read, follow, inspect, check and repair a journal.

Every subcommand takes the global options ``--root`` (``$JOURNAL_ROOT``, default ``data``),
``--redis-url`` (``$JOURNAL_REDIS_URL``; absent: the embedded server of the root) and
``--durability`` (``$JOURNAL_DURABILITY``). The README is the reference.

Errors never show a traceback: each one is a single line on stderr and a documented exit
status (the ``EXIT_*`` constants below). A password in a Redis URL is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from journal._core.retry import RetryPolicy
from journal._io.journals import Journal
from journal._model.ids import validate_id
from journal._model.records import Actor, EventRecord, encode_line, prepare_for_write
from journal.cli import argtypes
from journal.cli.lifecycle import COMMANDS as LIFECYCLE_COMMANDS
from journal.errors import (
    CorruptLine,
    HistoryTruncated,
    InvalidInput,
    JournalError,
    RedisServerNotFound,
    RedisUnavailable,
    SequenceConflict,
    SessionDeleted,
)
from journal.settings import redact_url

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CONFLICT",
    "EXIT_CORRUPT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REMOVED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1  # any other JournalError or OS error; also `redis status` when not running
EXIT_USAGE = 2  # bad arguments, bad JSON, invalid id or record (nothing was written)
EXIT_CONFLICT = 3  # SequenceConflict: the sequence is not head + 1
EXIT_UNAVAILABLE = 4  # Redis cannot be reached or started
EXIT_CORRUPT = 5  # `verify` found errors, or a corrupt line stopped a read or rebuild
EXIT_REMOVED = 6  # removed on purpose: SessionDeleted, or HistoryTruncated (read from .first)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); SIGTERM gives 143
EXIT_BROKEN_PIPE = 141  # stdout closed early, e.g. `journal read s | head` (128 + SIGPIPE)

PROG = "journal"
PAGE = 1000  # records per read while streaming a whole branch
# `append`: transient failures (an unknown outcome, Redis away, a busy lease) are retried
# with the same record 5 times; `--next` tolerates 100 conflicts before giving up.
APPEND_RETRY = RetryPolicy(attempts=5, backoff_s=0.05, conflicts=100)
KIND_LIMIT = 1 << 20  # `--kind -`: the most bytes read from stdin (a record's default limit)
# The commands that only read: on a root that does not exist they create nothing, start
# no server, and say so (exit 2).
READ_ONLY = frozenset({"sessions", "head", "read", "tail", "verify", "rebuild"})


class CliError(Exception):
    """An error found by the CLI itself (not the journal), with its exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """SIGTERM, turned into an exception so ``finally`` blocks run (containers stop us so)."""


# ----- argument parsing ----------------------------------------------------------------------


_POSITIVE = argtypes.integer(1)
_NON_NEGATIVE = argtypes.integer(0)
_SECONDS = argtypes.seconds()


def _NON_EMPTY(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for a new id)")
    return value


def _actor(value: str) -> Actor:
    kind, _, component = value.partition(":")
    if kind not in ("user", "agent", "system"):
        raise argparse.ArgumentTypeError(
            f"must be user, agent or system, optionally :COMPONENT; got {value!r}")
    if _ and not component:
        raise argparse.ArgumentTypeError(f"empty component in {value!r}")
    return Actor(type=kind, component=component or None)  # type: ignore[arg-type]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), like every other
    error of the CLI, instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # The same options on the main parser and on every subcommand, so they may be given
    # before or after the subcommand. SUPPRESS on the subcommands keeps a subcommand from
    # overwriting a value given before it with its default.
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--root", default=default, metavar="DIR",
        help="journal directory ($JOURNAL_ROOT, default: data)",
    )
    group.add_argument(
        "--redis-url", default=default, metavar="URL",
        help="redis://, rediss:// or unix:// URL ($JOURNAL_REDIS_URL; "
        "default: the embedded server of --root)",
    )
    group.add_argument(
        "--durability", default=default, choices=["fsync", "batch", "none"],
        help="fsync (default): fdatasync before commit; batch: group commit; "
        "none: unsafe, no fsync ($JOURNAL_DURABILITY)",
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
        help="log what the journal does (recoveries, rebuilds, retries, reconnects) on "
        "stderr; -vv adds debug detail",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A durable event journal for agent sessions (aiOS JSONL files, "
        "Redis-ordered writers, live pub/sub).",
        epilog="exit status: 0 ok, 1 error, 2 usage or bad input, 3 sequence conflict, "
        "4 Redis unavailable, 5 verify findings or corrupt data, 130 interrupted, "
        "141 output closed early. "
        "See the README for the full reference.",
    )
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        _global_options(p, suppress=True)
        return p

    p = command("append", "append one event and print the stored record")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--branch", default="main", metavar="B", help="branch (default: main)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--sequence", type=_POSITIVE, metavar="N",
                       help="append exactly at N (must be head + 1, else exit 3)")
    where.add_argument("--next", action="store_true",
                       help="append at head + 1, retrying on conflicts")
    p.add_argument("--kind", required=True, metavar="JSON",
                   help='the kind object, e.g. \'{"type":"UserMessage","content":"hi"}\'; '
                   "'-' reads it from stdin")
    p.add_argument("--event-id", type=_NON_EMPTY, metavar="ID",
                   help="event id (default: a new UUID); retrying with the same id is safe")
    p.add_argument("--agent-id", type=_NON_EMPTY, metavar="ID",
                   help="agent id (default: a new UUID)")
    p.add_argument("--actor", type=_actor, metavar="TYPE[:COMPONENT]",
                   help="who caused the event: user, agent or system, optionally with a "
                   "component, e.g. agent:planner (default: system:arcan-daemon)")

    p = command("read", "print the committed events of a branch")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--branch", default="main", metavar="B", help="branch (default: main)")
    p.add_argument("--from", dest="from_sequence", type=_POSITIVE, default=1, metavar="N",
                   help="first sequence (default: 1)")
    p.add_argument("--limit", type=_NON_NEGATIVE, default=None, metavar="N",
                   help="at most N events (default: all)")
    p.add_argument("--pretty", action="store_true", help="a readable table instead of JSONL")

    p = command("head", "print the last committed sequence of a branch (0 when empty)")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--branch", default="main", metavar="B", help="branch (default: main)")

    p = command("tail", "print events after a sequence; with --follow, stay live",
                "Print the events after --after, then with --follow wait for new ones "
                "(Ctrl-C or SIGTERM ends it with exit status 0). --all follows every session.")
    p.add_argument("session", metavar="SESSION", nargs="?")
    p.add_argument("--branch", default="main", metavar="B", help="branch (default: main)")
    p.add_argument("--after", type=_NON_NEGATIVE, default=0, metavar="N",
                   help="print sequences above N (default: 0, everything)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--all", action="store_true",
                   help="follow every session (the firehose); implies --follow")
    p.add_argument("--prefix", default="", metavar="P",
                   help="with --all: only sessions whose id starts with P")
    p.add_argument("--from-start", action="store_true",
                   help="with --all: replay each newly seen session branch from sequence 1 "
                   "(default: from its first live event)")
    p.add_argument("--pretty", action="store_true", help="readable lines instead of JSONL")

    p = command("sessions", "list the sessions with their branches, heads and file sizes")
    p.add_argument("--json", action="store_true", help="one JSON object per session")

    p = command("verify", "check session files and indexes (no Redis needed)")
    p.add_argument("sessions", metavar="SESSION", nargs="*", help="default: every session")
    p.add_argument("--strict", action="store_true",
                   help="notes (missing or short indexes) also give exit status 5")

    p = command("rebuild", "reset Redis state from the files (and rewrite the indexes)")
    p.add_argument("sessions", metavar="SESSION", nargs="*", help="default: every session")
    p.add_argument("--wait", type=_SECONDS, default=10.0, metavar="S",
                   help="how long to wait for a busy session's writer (default: 10)")

    from journal.cli.lifecycle import add_commands

    add_commands(command, _POSITIVE)  # delete, truncate, archive, gc

    p = command("redis", "start, stop or show the embedded redis-server of --root")
    p.add_argument("action", choices=["up", "down", "status"])

    p = command("demo", "run the fleet demo: workers, a live subscriber, verification",
                "Start an embedded Redis, run worker processes that append to shared "
                "sessions with contention, follow the feed live, verify everything and "
                "print a summary. Exit status 0 only when every check passes.")
    from journal.cli.demo.args import add_demo_arguments, add_fleet_arguments

    add_demo_arguments(p)

    p = command("fleet", "run one long-lived fleet worker (what `demo` and compose run)",
                "Act as one agent of a fleet: append aiOS-style events to shared sessions "
                "with the read-head / append / retry-on-conflict loop, until --duration "
                "or --turns is reached (default: forever, until SIGTERM or Ctrl-C).")
    add_fleet_arguments(p)

    p = command("group", "worker groups: status, parked events, replay, reset",
                "status: workers, claims and lag per session; parked: poison events; "
                "replay-parked: deliver parked events again; reset --session S --to SEQ.")
    from journal._groups.admin import add_group_arguments

    add_group_arguments(p)

    p = command("serve", "serve the journal over HTTP: aiOS routes, live SSE, a dashboard")
    from journal.http import add_serve_arguments

    add_serve_arguments(p)
    return parser


# ----- helpers -------------------------------------------------------------------------------


class Context:
    """Resolved global options, and the journal opened on demand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.root = Path(args.root or os.environ.get("JOURNAL_ROOT") or "data")
        url = args.redis_url if args.redis_url is not None else os.environ.get("JOURNAL_REDIS_URL")
        self.redis_url: str | None = url or None
        self.durability: str | None = args.durability
        self._journal: Journal | None = None

    def require_root(self) -> None:
        """A read-only command on a root that does not exist must not create it (nor start
        its embedded server): a mistyped --root is an input error."""
        if not self.root.exists():
            raise CliError(f"root {self.root} does not exist (check --root or $JOURNAL_ROOT)")
        if not self.root.is_dir():
            raise CliError(f"root {self.root} is not a directory")

    @property
    def where(self) -> str:
        return "embedded" if self.redis_url is None else redact_url(self.redis_url)

    def secrets(self) -> list[str]:
        """Strings that must never be printed (the password of the Redis URL)."""
        if self.redis_url is None:
            return []
        from urllib.parse import unquote, urlsplit

        try:
            password = urlsplit(self.redis_url).password
        except ValueError:
            return []
        return [] if not password else [password, unquote(password)]

    def journal(self) -> Journal:
        if self._journal is None:
            options: dict[str, Any] = {}
            if self.durability is not None:
                options["durability"] = self.durability
            self._journal = Journal(self.root, self.redis_url, **options).open()
        return self._journal

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _out(line: str = "", stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stdout)


def _emit(data: bytes) -> None:
    """Write encoded JSONL as bytes: the records are UTF-8 whatever the locale says.
    (A command writes either records this way or text, never both, so no interleaving.)"""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode())
    else:
        buffer.write(data)


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _parse_kind(text: str) -> dict[str, Any]:
    if text == "-":
        # Read one byte past the limit, never more: a huge input is refused at once.
        stdin = getattr(sys.stdin, "buffer", None)
        raw = stdin.read(KIND_LIMIT + 1) if stdin is not None else sys.stdin.read(
            KIND_LIMIT + 1).encode()
        if len(raw) > KIND_LIMIT:
            raise CliError(f"--kind -: stdin holds more than {KIND_LIMIT} bytes "
                           "(a record's limit); nothing was written")
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise CliError(f"--kind -: stdin is not UTF-8: {exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--kind is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"--kind must be a JSON object with a \"type\", got {type(value).__name__}")
    return value


def _check_ids(session: str, branch: str | None = None) -> None:
    validate_id(session, "session_id")
    if branch is not None:
        validate_id(branch, "branch_id")


def _iter_branch(j: Journal, session: str, branch: str, first: int,
                 limit: int | None) -> Iterator[EventRecord]:
    """The committed events from ``first``, page by page, up to the head seen at the start."""
    top = j.head(session, branch)
    last = top if limit is None else min(top, first + limit - 1)
    sequence = first
    while sequence <= last:
        page = j.read(session, branch, sequence, min(PAGE, last - sequence + 1))
        if not page:
            break
        yield from page
        sequence = page[-1].sequence + 1


def _summary(kind: dict[str, Any], width: int) -> str:
    rest = {k: v for k, v in kind.items() if k != "type"}
    text = json.dumps(rest, ensure_ascii=False, separators=(",", ":")) if rest else ""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _pretty_line(record: EventRecord, with_session: bool = False) -> str:
    width = shutil.get_terminal_size((120, 24)).columns
    time_part = record.timestamp[11:23] if len(record.timestamp) >= 23 else record.timestamp
    who = record.actor.type + (f":{record.actor.component}" if record.actor.component else "")
    where = f"{record.session_id + '/' + record.branch_id:<28} " if with_session else ""
    head = f"{where}{record.sequence:>6}  {time_part:<12}  {who[:24]:<24}  {record.kind_type:<22}"
    return f"{head}  {_summary(record.kind, max(width - len(head) - 3, 20))}"


def _pretty_header(with_session: bool = False) -> str:
    where = f"{'SESSION/BRANCH':<28} " if with_session else ""
    return f"{where}{'SEQ':>6}  {'TIME (UTC)':<12}  {'ACTOR':<24}  {'KIND':<22}  DETAILS"


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ----- subcommands ---------------------------------------------------------------------------


def cmd_append(ctx: Context, args: argparse.Namespace) -> int:
    _check_ids(args.session, args.branch)
    kind = _parse_kind(args.kind)
    fields: dict[str, Any] = {"event_id": args.event_id or str(uuid.uuid4())}
    if args.agent_id:
        fields["agent_id"] = args.agent_id
    if args.actor is not None:
        fields["actor"] = args.actor
    # Build one record first: a bad kind is refused before Redis is even contacted.
    prepare_for_write([EventRecord.new(args.session, args.branch, args.sequence or 1, kind,
                                       **fields)])
    j = ctx.journal()
    if args.next:
        stored = j.append_next(args.session, args.branch, kind, retry=APPEND_RETRY, **fields)
    else:
        record = EventRecord.new(args.session, args.branch, args.sequence, kind, **fields)
        stored = j.append(record, retry=APPEND_RETRY)
    _emit(encode_line(stored))
    return EXIT_OK


def cmd_read(ctx: Context, args: argparse.Namespace) -> int:
    _check_ids(args.session, args.branch)
    j = ctx.journal()
    records = _iter_branch(j, args.session, args.branch, args.from_sequence, args.limit)
    if args.pretty:
        _out(_pretty_header())
        count = 0
        for record in records:
            _out(_pretty_line(record))
            count += 1
        _out(f"({count} events, session {args.session}, branch {args.branch})")
    else:
        for record in records:
            _emit(encode_line(record))
    return EXIT_OK


def cmd_head(ctx: Context, args: argparse.Namespace) -> int:
    _check_ids(args.session, args.branch)
    _out(str(ctx.journal().head(args.session, args.branch)))
    return EXIT_OK


def cmd_tail(ctx: Context, args: argparse.Namespace) -> int:
    if args.all:
        if args.session is not None:
            raise CliError("give either SESSION or --all, not both")
        if args.prefix:
            validate_id(args.prefix, "--prefix")
        options = {"from_start": True} if args.from_start else {}
        feed: Iterable[EventRecord] = ctx.journal().subscribe_all(args.prefix, **options)
    elif args.from_start:
        raise CliError("--from-start goes with --all (for one session, use --after)")
    elif args.session is None:
        raise CliError("tail needs a SESSION (or --all for every session)")
    else:
        _check_ids(args.session, args.branch)
        j = ctx.journal()
        if args.follow:
            feed = j.subscribe(args.session, args.branch, after_sequence=args.after)
        else:
            feed = _iter_branch(j, args.session, args.branch, args.after + 1, None)
    if args.pretty:
        _out(_pretty_header(with_session=args.all))
    for record in feed:
        if args.pretty:
            _out(_pretty_line(record, with_session=args.all))
        else:
            _emit(encode_line(record))
        if args.follow or args.all:
            sys.stdout.flush()  # live output: one event, one flush
    return EXIT_OK


def cmd_sessions(ctx: Context, args: argparse.Namespace) -> int:
    j = ctx.journal()
    names = j.sessions()
    rows: list[tuple[str, int, dict[str, int]]] = []
    for name in names:
        try:
            size = (ctx.root / "events" / f"{name}.jsonl").stat().st_size
        except FileNotFoundError:
            continue  # removed since the listing
        rows.append((name, size, j.branches(name)))
    if args.json:
        for name, size, heads in rows:
            _out(json.dumps({"session": name, "bytes": size, "branches": heads}))
        return EXIT_OK
    if not rows:
        _note(f"no sessions under {ctx.root}")
        return EXIT_OK
    width = max(len("SESSION"), *(len(name) for name, _, _ in rows))
    bwidth = max(len("BRANCH"), *(len(b) for _, _, heads in rows for b in heads))
    _out(f"{'SESSION':<{width}}  {'BRANCH':<{bwidth}}  {'HEAD':>8}  {'FILE':>10}")
    for name, size, heads in rows:
        for i, (branch, head) in enumerate(sorted(heads.items(), key=lambda kv: kv[0] != "main")):
            shown = (name, _human_bytes(size)) if i == 0 else ("", "")
            _out(f"{shown[0]:<{width}}  {branch:<{bwidth}}  {head:>8}  {shown[1]:>10}".rstrip())
        if not heads:
            _out(f"{name:<{width}}  {'-':<{bwidth}}  {0:>8}  {_human_bytes(size):>10}")
    total = sum(sum(heads.values()) for _, _, heads in rows)
    _out(f"({len(rows)} sessions, {total} events)")
    return EXIT_OK


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    from journal.cli.verify import verify_report

    for name in args.sessions:
        validate_id(name, "session_id")
    report = verify_report(ctx.root, args.sessions or None)
    for finding in report.findings:
        _out(str(finding))
    errors, notes = len(report.errors), len(report.notes)
    summary = (
        f"verified {report.sessions} sessions, {report.lines} lines: "
        f"{errors} error{'s' if errors != 1 else ''}, {notes} note{'s' if notes != 1 else ''}"
    )
    _note(summary)
    if errors or (args.strict and notes):
        return EXIT_CORRUPT
    return EXIT_OK




def cmd_rebuild(ctx: Context, args: argparse.Namespace) -> int:
    for name in args.sessions:
        validate_id(name, "session_id")
    j = ctx.journal()
    names = args.sessions or j.sessions()
    if not names:
        _note(f"no sessions under {ctx.root}")
        return EXIT_OK
    status = EXIT_OK
    for name in names:
        # Clears the state while no writer holds the lease, then scans every line: a
        # damaged one stops the command with exit status 5 (CorruptLine).
        done = j.rebuild(name, wait_s=args.wait)
        if done.file_bytes is None:
            _out(f"{name}: no events file; cleared its Redis state" if done.before is not None
                 else f"{name}: no such session")
            if done.before is None:
                status = EXIT_ERROR
            continue
        parts = []
        for branch, head in sorted(done.heads.items(), key=lambda kv: kv[0] != "main"):
            was = (done.before or {}).get(branch)
            changed = "" if was is None or was == head else f" (was {was})"
            parts.append(f"{branch}={head}{changed}")
        for branch in sorted(set(done.before or {}) - set(done.heads)):
            parts.append(f"{branch}=0 (was {(done.before or {})[branch]})")
        origin = "" if done.before is not None else " (Redis had no state)"
        _out(f"{name}: rebuilt from {_human_bytes(done.file_bytes)}{origin}, every line "
             f"checked: {', '.join(parts) or 'no events'}")
    return status


def cmd_redis(ctx: Context, args: argparse.Namespace) -> int:
    from journal.server.embedded import (
        embedded_paths,
        embedded_status,
        ensure_embedded,
        stop_embedded,
    )

    if ctx.redis_url is not None:
        _note(f"note: --redis-url/$JOURNAL_REDIS_URL is set ({ctx.where}); "
              "this manages the embedded server of the root, which is then unused")
    paths = embedded_paths(ctx.root)
    where = f"root {paths.root}"
    if paths.short_socket:
        where += " (socket under /tmp: the root's path is too long for a unix socket)"
    if args.action == "up":
        before = embedded_status(ctx.root)
        url = ensure_embedded(ctx.root)
        after = embedded_status(ctx.root)
        pid = after.pid if after is not None else "?"
        verb = "already running" if before is not None else "started"
        _out(f"embedded redis {verb}: pid {pid}, {url}, {where}")
        return EXIT_OK
    if args.action == "down":
        stopped = stop_embedded(ctx.root)
        _out(f"embedded redis stopped: pid {stopped}, {where}" if stopped is not None
             else f"embedded redis is not running, {where}")
        return EXIT_OK
    running = embedded_status(ctx.root)
    if running is None:
        _out(f"embedded redis is not running, {where}")
        return EXIT_ERROR
    _out(f"embedded redis running: pid {running.pid}, {running.url}, {where}, "
         f"log {paths.logfile}")
    return EXIT_OK


def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    from journal.cli.demo.run import run_demo

    return run_demo(args, root=Path(args.root) if args.root else None,
                    redis_url=ctx.redis_url, durability=ctx.durability)


def cmd_fleet(ctx: Context, args: argparse.Namespace) -> int:
    from journal.cli.demo.fleet import run_fleet

    return run_fleet(ctx.journal, args)


def cmd_group(ctx: Context, args: argparse.Namespace) -> int:
    from journal._groups.admin import run_group

    return run_group(ctx.journal(), args)

def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from journal.http import run_serve

    return run_serve(args, root=ctx.root, redis_url=ctx.redis_url, durability=ctx.durability)


COMMANDS: dict[str, Callable[[Context, argparse.Namespace], int]] = {
    "append": cmd_append,
    "read": cmd_read,
    "head": cmd_head,
    "tail": cmd_tail,
    "sessions": cmd_sessions,
    "verify": cmd_verify,
    "rebuild": cmd_rebuild,
    **LIFECYCLE_COMMANDS,
    "redis": cmd_redis,
    "demo": cmd_demo,
    "fleet": cmd_fleet,
    "group": cmd_group,
    "serve": cmd_serve,
}


# ----- the entry point -----------------------------------------------------------------------


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, SequenceConflict):
        return EXIT_CONFLICT
    if isinstance(exc, InvalidInput):
        return EXIT_USAGE
    if isinstance(exc, RedisUnavailable | RedisServerNotFound):
        return EXIT_UNAVAILABLE
    if isinstance(exc, CorruptLine):
        return EXIT_CORRUPT
    if isinstance(exc, SessionDeleted | HistoryTruncated):
        return EXIT_REMOVED
    return EXIT_ERROR


def _one_line(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else "(no details)"
    # A multi-line message (say, a redis-server log tail): its first line says what went
    # wrong and its last line usually why.
    return f"{lines[0]} ... {lines[-1]}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, JournalError):
        what = exc.strerror or str(exc)
        return f"{what}: {exc.filename}" if exc.filename else what
    return str(exc)


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to sys.exit)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    with contextlib.suppress(ValueError):  # only possible in the main thread
        signal.signal(signal.SIGTERM, _on_sigterm)
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot show a character gets an escape, never a UnicodeEncodeError.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    ctx = Context(args)
    _log_to_stderr(args.verbose, ctx.secrets())
    try:
        if args.command in READ_ONLY:
            ctx.require_root()
        status = COMMANDS[args.command](ctx, args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _broken_pipe()
    except (JournalError, CliError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(_describe(exc), ctx.secrets())}", file=sys.stderr)
        return _exit_code(exc)
    except (KeyboardInterrupt, Terminated) as exc:
        if args.command == "fleet" or (args.command == "tail" and (args.follow or args.all)):
            return EXIT_OK  # the normal way to stop a follower or a worker
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(Exception):  # a dead connection must not mask the outcome
            ctx.close()


class _Redact(logging.Filter):
    """Secrets never reach the log: the Redis password is replaced in every message."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def _log_to_stderr(verbosity: int, secrets: Sequence[str]) -> None:
    """`-v`: the journal's log records (INFO and up; DEBUG with -vv) on stderr, one line
    each, with their structured fields (``extra=``) appended as key=value."""
    if not verbosity:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Fields("%(asctime)s journal %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(secrets))
    logger = logging.getLogger("journal")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Fields(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        line = super().format(record)
        return line + "".join(f" {k}={v}" for k, v in extra.items())


def _broken_pipe() -> int:
    # Point stdout at /dev/null so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
