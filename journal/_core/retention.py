"""Retention policies per session prefix, and the plan ``journal gc`` carries out.

The policy file is TOML (``<root>/retention.toml`` unless given), one ``[[policy]]`` table
per prefix; a session follows the policy with the longest matching prefix::

    [[policy]]
    prefix = "ci-"          # "" matches every session
    max_age = "30d"         # drop events older than this, per branch (truncate_before)
    max_count = 1000        # keep the newest N events per branch (truncate_before)
    archive_after = "7d"    # archive a session idle this long (no event newer)
    delete_after = "90d"    # delete a session idle this long

Durations are a number with ``s``, ``m``, ``h`` or ``d``, or a bare number of days. Every
field but ``prefix`` is optional. Planning only reads; :func:`apply` runs the plan through
the journal's own ``delete``, ``truncate_before`` and ``archive``.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from journal._model.ids import validate_id
from journal._model.records import EventRecord
from journal._storage import tombstone
from journal.errors import HistoryTruncated, InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FIELDS = {"prefix", "max_age", "max_count", "archive_after", "delete_after"}


@dataclass(frozen=True)
class Policy:
    prefix: str
    max_age_s: float | None = None
    max_count: int | None = None
    archive_after_s: float | None = None
    delete_after_s: float | None = None


@dataclass(frozen=True)
class Action:
    session: str
    op: str  # "delete" | "truncate" | "archive"
    reason: str
    branch: str | None = None
    sequence: int | None = None

    def __str__(self) -> str:
        what = f"{self.op} {self.session}"
        if self.op == "truncate":
            what += f" {self.branch} before {self.sequence}"
        return f"{what}  ({self.reason})"


def duration(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value) * 86400
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(value))
    if not match:
        raise InvalidInput(f"{where}: {value!r} is not a duration like 30d, 12h, 15m or 45s")
    return float(match[1]) * _UNITS[match[2]]


def load_policies(path: Path) -> list[Policy]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"no retention policy file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML: {exc}") from None
    tables = data.get("policy")
    if not isinstance(tables, list) or not tables:
        raise InvalidInput(f"{path}: no [[policy]] tables")
    out = []
    for i, t in enumerate(tables, 1):
        where = f"{path}: policy {i}"
        unknown = set(t) - _FIELDS
        if unknown:
            raise InvalidInput(f"{where}: unknown field {sorted(unknown)[0]!r}")
        prefix = t.get("prefix")
        if not isinstance(prefix, str):
            raise InvalidInput(f"{where}: needs prefix = \"...\" (\"\" for every session)")
        if prefix:
            validate_id(prefix, "prefix")
        count = t.get("max_count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise InvalidInput(f"{where}: max_count must be an integer >= 1")
        out.append(Policy(
            prefix,
            duration(t["max_age"], where) if "max_age" in t else None,
            count,
            duration(t["archive_after"], where) if "archive_after" in t else None,
            duration(t["delete_after"], where) if "delete_after" in t else None,
        ))
    return out


def policy_for(policies: list[Policy], session: str) -> Policy | None:
    matches = [p for p in policies if session.startswith(p.prefix)]
    return max(matches, key=lambda p: len(p.prefix)) if matches else None


class _Reader(Protocol):
    def branches(self, session_id: str) -> dict[str, int]: ...

    def read(self, session_id: str, branch_id: str = ..., from_sequence: int = ...,
             limit: int = ...) -> list[EventRecord]: ...


def all_sessions(root: Path) -> list[str]:
    """Sessions with a file or an archive, and no tombstone."""
    names = {p.name.removesuffix(".jsonl") for p in (root / "events").glob("*.jsonl")}
    names |= {p.name.removesuffix(".jsonl.zst") for p in (root / "archive").glob("*.jsonl.zst")}
    return sorted(n for n in names if tombstone.load(root, n).deleted_at is None)


def _time(record: EventRecord) -> float:
    return dt.datetime.fromisoformat(record.timestamp.replace("Z", "+00:00")).timestamp()


def _events(j: _Reader, session: str, branch: str, first: int) -> Iterator[EventRecord]:
    while True:
        page = j.read(session, branch, first, 1000)
        yield from page
        if len(page) < 1000:
            return
        first = page[-1].sequence + 1


def plan(j: _Reader, root: Path, policies: list[Policy], now: float) -> list[Action]:
    actions: list[Action] = []
    for session in all_sessions(root):
        policy = policy_for(policies, session)
        if policy is None:
            continue
        marks = tombstone.load(root, session)
        heads = j.branches(session)
        last_event = 0.0
        for branch, head in heads.items():
            floor = marks.floors.get(branch, 1)
            if head >= floor:
                last_event = max(last_event, _time(j.read(session, branch, head, 1)[0]))
        idle = now - last_event if last_event else float("inf")
        if policy.delete_after_s is not None and idle >= policy.delete_after_s:
            actions.append(Action(session, "delete", f"idle {_days(idle)}"))
            continue
        if marks.archived is None or (root / "events" / f"{session}.jsonl").exists():
            for branch, head in sorted(heads.items()):
                cut, reason = _cut(j, session, branch, head, marks.floors.get(branch, 1),
                                   policy, now)
                if cut is not None:
                    actions.append(Action(session, "truncate", reason, branch, cut))
            if policy.archive_after_s is not None and idle >= policy.archive_after_s:
                actions.append(Action(session, "archive", f"idle {_days(idle)}"))
    return actions


def _cut(j: _Reader, session: str, branch: str, head: int, floor: int, policy: Policy,
         now: float) -> tuple[int | None, str]:
    cut, reasons = floor, []
    if policy.max_count is not None and head - floor + 1 > policy.max_count:
        cut = head - policy.max_count + 1
        reasons.append(f"max_count {policy.max_count}")
    if policy.max_age_s is not None:
        oldest_kept = head + 1
        try:
            for record in _events(j, session, branch, cut):
                if now - _time(record) < policy.max_age_s:
                    oldest_kept = record.sequence
                    break
        except HistoryTruncated:
            pass
        if oldest_kept > cut:
            cut = oldest_kept
            reasons.append(f"max_age {_days(policy.max_age_s)}")
    return (cut, ", ".join(reasons)) if cut > floor else (None, "")


def _days(seconds: float) -> str:
    if seconds == float("inf"):
        return "no events"
    return f"{seconds / 86400:.1f}d"


class _Journal(_Reader, Protocol):
    def delete(self, session_id: str) -> None: ...

    def truncate_before(self, session_id: str, branch_id: str, sequence: int) -> int: ...

    def archive(self, session_id: str) -> bool: ...


def apply(j: _Journal, action: Action) -> None:
    if action.op == "delete":
        j.delete(action.session)
    elif action.op == "truncate":
        assert action.branch is not None and action.sequence is not None
        j.truncate_before(action.session, action.branch, action.sequence)
    else:
        j.archive(action.session)


Progress = Callable[[int, int, Action], None]
