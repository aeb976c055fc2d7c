"""``journal delete``, ``truncate``, ``archive`` and ``gc``: the life of a session.

Each destructive command shows what it will do and asks before doing it, unless given
``--yes``; without a terminal to ask on, it refuses (exit status 2) and changes nothing.
``gc --dry-run`` prints the plan only. Long runs show a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from journal._core import retention
from journal._model.ids import validate_id
from journal.errors import InvalidInput


def add_commands(command: Callable[..., argparse.ArgumentParser],
                 positive: Callable[[str], int]) -> None:
    p = command("delete", "delete sessions for good: events, index, archive (asks first)",
                "Delete sessions for good. A tombstone stays: later appends and reads raise "
                "SessionDeleted, and the id cannot be used again.")
    p.add_argument("sessions", metavar="SESSION", nargs="+")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")

    p = command("truncate", "drop a branch's events below a sequence, compacting the file")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--branch", default="main", metavar="B", help="branch (default: main)")
    p.add_argument("--before", type=positive, required=True, metavar="N",
                   help="the lowest sequence to keep")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")

    p = command("archive", "compress sessions into archive/ (reads go on; an append reopens)")
    p.add_argument("sessions", metavar="SESSION", nargs="+")

    p = command("gc", "apply the retention policies (shows the plan, asks first)",
                "Plan and apply the retention policies of --policy (default: "
                "<root>/retention.toml): max_age, max_count, archive_after, delete_after "
                "per session prefix. See the README for the file format.")
    p.add_argument("--policy", metavar="FILE", help="default: <root>/retention.toml")
    p.add_argument("--dry-run", "-n", action="store_true", help="print the plan only")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question.rstrip('?')}: refusing without --yes "
                           "(no terminal to ask on); nothing was changed")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_delete(ctx: Any, args: argparse.Namespace) -> int:
    for name in args.sessions:
        validate_id(name, "session_id")
    j = ctx.journal()
    sizes = {n: j.branches(n) for n in args.sessions}  # SessionDeleted / unknown first
    listing = ", ".join(f"{n} ({sum(h.values())} events)" for n, h in sizes.items())
    if not _confirm(f"delete {listing} for good?", args.yes):
        _note("nothing deleted")
        return 0
    for name in args.sessions:
        j.delete(name)
        print(f"deleted {name}")
    return 0


def cmd_truncate(ctx: Any, args: argparse.Namespace) -> int:
    validate_id(args.session, "session_id")
    validate_id(args.branch, "branch_id")
    j = ctx.journal()
    head = j.head(args.session, args.branch)
    if args.before > head + 1:
        raise InvalidInput(f"{args.session}/{args.branch} has head {head}: "
                           f"--before must be at most {head + 1}")
    question = (f"drop {args.session}/{args.branch} events below {args.before} "
                f"(head {head}) for good?")
    if not _confirm(question, args.yes):
        _note("nothing truncated")
        return 0
    first = j.truncate_before(args.session, args.branch, args.before)
    print(f"{args.session}/{args.branch}: events from {first} to {head} kept")
    return 0


def cmd_archive(ctx: Any, args: argparse.Namespace) -> int:
    for name in args.sessions:
        validate_id(name, "session_id")
    j = ctx.journal()
    for name in args.sessions:
        done = j.archive(name)
        print(f"archived {name}" if done else f"{name}: archived already")
    return 0


class _Bar:
    """A progress bar on a terminal; one line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.tty = total, sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, done: int, what: str) -> None:
        if not self.tty:
            _note(f"[{done}/{self.total}] {what}")
            return
        width = 30
        filled = width * done // max(self.total, 1)
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
              f"{what[:40]:<40}", end="", file=sys.stderr, flush=True)
        if done == self.total:
            print(f" {time.monotonic() - self.started:.1f}s", file=sys.stderr)


def cmd_gc(ctx: Any, args: argparse.Namespace) -> int:
    root: Path = ctx.root
    policies = retention.load_policies(Path(args.policy) if args.policy
                                       else root / "retention.toml")
    j = ctx.journal()
    actions = retention.plan(j, root, policies, time.time())
    for action in actions:
        print(action)
    if not actions:
        _note("gc: nothing to do")
        return 0
    if args.dry_run:
        _note(f"gc: {len(actions)} actions planned (dry run: nothing changed)")
        return 0
    if not _confirm(f"carry out these {len(actions)} actions?", args.yes):
        _note("nothing changed")
        return 0
    bar = _Bar(len(actions))
    for i, action in enumerate(actions, 1):
        retention.apply(j, action)
        bar.step(i, str(action).split("  (")[0])
    _note(f"gc: {len(actions)} actions done")
    return 0


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "delete": cmd_delete,
    "truncate": cmd_truncate,
    "archive": cmd_archive,
    "gc": cmd_gc,
}


# ----- `journal verify` of archives and truncated sessions ------------------------------------


def verify_sessions(root: Path) -> set[str]:
    """Archived sessions (their files are gone), for `journal verify`'s listing."""
    return set(retention.all_sessions(root))


def verify_hook(check: Any) -> bool:
    """Called by `journal verify` for each session before its own checks. Seeds each
    truncated branch with its truncation point (a compacted file starts there); checks an
    archived session's archive (frame checksum, SHA-256, then every line, reported as
    ``archive:line``). True when it checked the session itself."""
    import tempfile

    from journal._storage import archive as archives
    from journal._storage import tombstone
    from journal.errors import StorageError

    root = check.path.parent.parent
    marks = tombstone.load(root, check.session_id)
    for branch_id, floor in marks.floors.items():
        b = check.branches.setdefault(branch_id, type(check).Branch())
        for _ in range(floor - 1):  # stored nowhere on purpose: no gap, no index entry
            b.skip()
    if marks.deleted_at is not None:
        check.add(check.shown, 0, "deleted: a tombstone, no events", "note")
        return True
    if marks.archived is None or check.path.exists():
        return False
    path = archives.archive_path(root, check.session_id)
    try:
        data = archives.read(path, marks.archived.sha256)
    except StorageError as exc:
        check.add(path, 0, str(exc).removeprefix(f"{path}: "))
        return True
    if len(data) != marks.archived.length:
        check.add(path, 0, f"holds {len(data)} bytes, the marks say {marks.archived.length}")
    with tempfile.NamedTemporaryFile(prefix="journal-verify-") as tmp:
        tmp.write(data)
        tmp.flush()
        check.path, check.shown, check.size = Path(tmp.name), str(path), len(data)
        check._check_lines()
    return True
