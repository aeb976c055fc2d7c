"""What ``journal group status|parked|replay-parked|reset`` does (the CLI only parses).

Exit statuses follow the command's: 0 ok, 2 bad input (unknown group, invalid id, a reset
beyond the head), 4 Redis unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from journal._groups.engine import _pairs, checkpoints_of, script
from journal._groups.keys import session_group_keys
from journal._groups.shell import SyncDeliveries, make_worker
from journal._groups.store import Checkpoint
from journal.errors import InvalidInput

if TYPE_CHECKING:
    from journal._io.journals import Journal


def add_group_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "parked", "replay-parked", "reset"])
    p.add_argument("group", metavar="GROUP")
    p.add_argument("--session", metavar="S", help="reset: the session (required)")
    p.add_argument("--branch", metavar="B", help="reset: only this branch (default: every one)")
    p.add_argument("--to", type=int, metavar="SEQ",
                   help="reset: the new checkpoint; delivery resumes at SEQ + 1 (0: replay all)")
    p.add_argument("--json", action="store_true", help="status/parked: one JSON document")


def run_group(j: Journal, args: argparse.Namespace) -> int:
    shell = SyncDeliveries(j, make_worker(j, args.group, "admin", {}))
    if not (shell.worker.store.dir / "group.json").exists():
        raise InvalidInput(f"no worker group {args.group!r} under {j.settings.root}")
    action = {"status": _status, "parked": _parked, "replay-parked": _replay,
              "reset": _reset}[args.action]
    return action(j, shell, args)


def status(j: Journal, group: str) -> dict[str, Any]:
    """Workers, claims, checkpoints and lag per session (also used by tests and the demo)."""
    shell = SyncDeliveries(j, make_worker(j, group, "admin", {}))
    return _collect(j, shell)


def create_group(j: Journal, group: str, start: str = "earliest") -> None:
    """Create ``group`` now (otherwise its first worker does): with ``start="latest"`` the
    events already in the journal are not delivered, sessions created later are, fully."""
    shell = SyncDeliveries(j, make_worker(j, group, "admin", {"start": start}))
    shell.run(shell.worker._create_group())


def _collect(j: Journal, shell: SyncDeliveries) -> dict[str, Any]:
    w = shell.worker
    reg = w.registry
    rows: list[Any] = j.redis.zrange(reg.workers, 0, -1, withscores=True)
    workers = {_s(m): int(t) for m, t in rows}
    load = {_s(k): int(v) for k, v in j.redis.hgetall(reg.load).items()}
    sessions: list[dict[str, Any]] = []
    total = 0
    for sid in j.sessions():
        keys = session_group_keys(w.prefix, w.group, sid)
        heads = j.branches(sid)
        fields = _pairs([x for kv in j.redis.hgetall(keys.group).items() for x in kv])
        if fields:
            ckpt, source = checkpoints_of(fields), "redis"
        else:
            found = w.store.read(sid)
            ckpt, source = (found.branches if found else {}), "file"
        holder = j.redis.get(keys.claim)
        lag = {b: h - ckpt.get(b, 0) for b, h in heads.items()}
        total += sum(lag.values())
        sessions.append({"session": sid, "holder": _s(holder) if holder else None,
                         "checkpoints": ckpt, "heads": heads, "lag": lag, "source": source,
                         "halted": fields.get("halted")})
    listed = [{"worker": k, "expires_ms": v, "sessions": load.get(k, 0)}
              for k, v in sorted(workers.items())]
    return {"group": w.group, "workers": listed, "sessions": sessions, "lag": total}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _status(j: Journal, shell: SyncDeliveries, args: argparse.Namespace) -> int:
    st = _collect(j, shell)
    if args.json:
        print(json.dumps(st))
        return 0
    print(f"group {st['group']}: {len(st['workers'])} worker(s), total lag {st['lag']}")
    for w in st["workers"]:
        print(f"  worker {w['worker']}  holds {w['sessions']}")
    for s in st["sessions"]:
        branches = ", ".join(f"{b} {s['checkpoints'].get(b, 0)}/{h} (lag {s['lag'][b]})"
                             for b, h in sorted(s["heads"].items()))
        halted = f"  HALTED at {s['halted']}" if s["halted"] else ""
        print(f"  {s['session']}  {s['holder'] or '-'}  {branches}{halted}")
    return 0


def _parked(j: Journal, shell: SyncDeliveries, args: argparse.Namespace) -> int:
    parked = shell.worker.store.parked()
    if args.json:
        print(json.dumps([p.__dict__ if hasattr(p, "__dict__") else _row(p) for p in parked]))
        return 0
    for p in parked:
        print(f"{p.session_id}/{p.branch_id}#{p.sequence}  {p.state}  attempts {p.attempts}  "
              f"{p.error}")
    print(f"{len(parked)} parked event(s)", file=sys.stderr)
    return 0


def _row(p: Any) -> dict[str, Any]:
    return {k: getattr(p, k) for k in p.__slots__}


def _replay(j: Journal, shell: SyncDeliveries, args: argparse.Namespace) -> int:
    """Parked events are redelivered to their session's holder; a halted session goes on
    from its halted event (its attempts start over)."""
    store = shell.worker.store
    asked = resumed = 0
    for p in store.parked():
        if p.state == "halted":
            store.log(p.session_id, {"op": "resume", "branch": p.branch_id,
                                     "sequence": p.sequence})
            _move(j, shell, p.session_id, [p.branch_id], p.sequence - 1)
            resumed += 1
        elif p.state == "parked":
            store.log(p.session_id, {"op": "replay", "branch": p.branch_id,
                                     "sequence": p.sequence})
            keys = session_group_keys(shell.worker.prefix, shell.worker.group, p.session_id)
            shell.run(_one(keys.group))
            asked += 1
    print(f"{asked} parked event(s) queued for replay, {resumed} halted session(s) resumed")
    return 0


def _one(key: str) -> Any:
    return (yield script("replay", [key], []))


def _reset(j: Journal, shell: SyncDeliveries, args: argparse.Namespace) -> int:
    if not args.session or args.to is None:
        raise InvalidInput("reset needs --session S and --to SEQ")
    if args.to < 0:
        raise InvalidInput(f"--to must be >= 0, got {args.to}")
    heads = j.branches(args.session)
    branches = [args.branch] if args.branch else sorted(heads)
    for b in branches:
        if args.to > heads.get(b, 0):
            raise InvalidInput(f"--to {args.to} is beyond the head of {args.session}/{b} "
                               f"({heads.get(b, 0)})")
    for p in shell.worker.store.parked(args.session):  # a reset also ends a halt
        if p.state == "halted":
            shell.worker.store.log(args.session, {"op": "resume", "branch": p.branch_id,
                                                  "sequence": p.sequence})
    fence = _move(j, shell, args.session, branches, args.to)
    print(f"{args.session}: {', '.join(branches) or '(no branches)'} reset to {args.to} "
          f"(fence {fence}; the holder, if any, lost its claim)")
    return 0


def _move(j: Journal, shell: SyncDeliveries, sid: str, branches: list[str], to: int) -> int:
    """Move checkpoints under a new fence (ending any claim and any halt), in Redis and in
    the durable file."""
    w = shell.worker
    keys = session_group_keys(w.prefix, w.group, sid)
    fence = int(shell.run(_reset_steps(w, sid, keys, branches, to)))
    fields = _pairs([x for kv in j.redis.hgetall(keys.group).items() for x in kv])
    w.store.write(sid, Checkpoint(fence, checkpoints_of(fields), f"{fence}:reset"))
    return fence


def _reset_steps(w: Any, sid: str, keys: Any, branches: list[str], to: int) -> Any:
    yield from w._seed(sid, keys)
    flat: list[str | int] = []
    for b in branches:
        flat += [b, to]
    return int((yield script("reset", [keys.group, keys.claim], flat)))
