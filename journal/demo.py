"""``journal demo`` and ``journal fleet``: an agent fleet sharing sessions, watched live.

The demo shows what the journal is for, in a few seconds and with real processes:

1. An embedded Redis starts for a temporary root (or ``--root``; ``--redis-url`` uses an
   existing server instead).
2. ``--workers`` worker processes (``journal fleet``) act as agents on ``--sessions`` shared
   sessions. Every worker picks sessions at random, so several write to the same session at
   once and collide; each uses the aiOS loop: read the head, append at head + 1, and on a
   :class:`~journal.SequenceConflict` read the head again and retry. They write aiOS events:
   ``SessionCreated`` + ``PhaseEntered{sleep}`` open a session (one atomic batch: exactly one
   worker wins), then ``ToolCallRequested`` / ``ToolCallStarted`` / ``ToolCallCompleted`` /
   ``Message`` turns, and a ``BranchCreated`` opens the branch ``explore``, which gets turns
   of its own. Each worker records every event id the journal acknowledged.
3. A subscriber process follows every (session, branch) with ``subscribe`` and shows the feed
   live: a single updating line on a terminal, plain periodic lines otherwise.
4. Then everything is checked: no gap and no duplicate on any branch, every acknowledged
   event in the file at its sequence, every event seen by the subscriber exactly once, and
   ``verify`` finds nothing.
5. A summary table, and exit status 0 only if every check passed.

``journal fleet`` is one such worker on its own, long-lived by default: it is what
``compose.yaml`` scales with ``docker compose up --scale worker=3``.

The subscriber is run as ``python -m journal.demo subscriber SPEC`` by the demo itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from . import argtypes
from .errors import (
    AppendOutcomeUnknown,
    JournalError,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
)
from .journal import AsyncJournal, Journal
from .records import Actor, EventRecord
from .settings import redact_url

__all__ = ["add_demo_arguments", "add_fleet_arguments", "run_demo", "run_fleet"]

BRANCH = "explore"  # the one extra branch of every session (fixed: subscribers know it)
BRANCHES = ("main", BRANCH)
TOOLS = ("fs.read", "fs.write", "web.search", "shell.exec", "kb.lookup")
STATUS_EVERY = 10.0  # seconds between status lines of a long-lived worker
PAGE = 1000


# ----- arguments -----------------------------------------------------------------------------


_COUNT = argtypes.integer(1, 64)
_SECONDS = argtypes.seconds(24 * 3600)
_TURNS = argtypes.integer(0)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_COUNT, default=4, metavar="N",
                   help="worker processes (default: 4)")
    p.add_argument("--sessions", type=_COUNT, default=3, metavar="N",
                   help="sessions, each shared by every worker (default: 3)")
    p.add_argument("--duration", type=_SECONDS, default=3.0, metavar="S",
                   help="seconds the workers write for (default: 3)")
    p.add_argument("--pause", type=_SECONDS, default=0.0, metavar="S",
                   help="pause of each worker between turns (default: 0)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary root (it is always kept when a check fails)")


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=_COUNT, default=3, metavar="N",
                   help="how many sessions the fleet shares (default: 3)")
    p.add_argument("--prefix", default="fleet", metavar="P",
                   help="session ids are P-1 .. P-N (default: fleet)")
    p.add_argument("--duration", type=_SECONDS, default=0.0, metavar="S",
                   help="stop after S seconds (default: 0, run until stopped)")
    p.add_argument("--turns", type=_TURNS, default=0, metavar="N",
                   help="stop after N turns (default: 0, no limit)")
    p.add_argument("--pause", type=_SECONDS, default=0.0, metavar="S",
                   help="sleep between turns (default: 0)")
    p.add_argument("--worker-id", default=None, metavar="ID",
                   help="name in the events' actor (default: HOSTNAME-PID)")
    p.add_argument("--acked", default=None, metavar="FILE",
                   help="append one JSON line per acknowledged event to FILE")
    p.add_argument("--json", action="store_true",
                   help="print only a final JSON line of counters (for the demo)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")


# ----- the worker ----------------------------------------------------------------------------


@dataclass
class FleetStats:
    worker: str
    appends: int = 0  # events acknowledged
    conflicts: int = 0  # SequenceConflicts retried
    unknown: int = 0  # appends retried because their outcome was unknown
    unavailable: int = 0  # appends retried because Redis was unavailable or busy
    turns: int = 0
    sessions_created: int = 0
    branches_created: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "started"}
        out["elapsed"] = round(time.monotonic() - self.started, 3)
        return out


class _Stop(Exception):
    """The worker's deadline passed while it was waiting to retry."""


class FleetWorker:
    """One agent of the fleet: the aiOS append loop against shared sessions."""

    def __init__(self, open_journal: Callable[[], Journal], args: argparse.Namespace) -> None:
        self.open_journal = open_journal
        self.args = args
        self.name = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.rng = random.Random(args.seed)
        self.sessions = [f"{args.prefix}-{i}" for i in range(1, args.sessions + 1)]
        self.agent_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"journal-fleet:{self.name}"))
        self.actor = Actor(type="agent", component=self.name)
        self.stats = FleetStats(self.name)
        self.next_seq: dict[tuple[str, str], int] = {}
        self.known_branch: set[str] = set()  # sessions whose explore branch exists
        self.deadline = time.monotonic() + args.duration if args.duration else None
        self.acked: IO[str] | None = None
        self.stopping = False  # set by SIGTERM: finish the current turn, then stop

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _wait(self, seconds: float) -> None:
        if self.stopping:
            raise _Stop()
        if self.deadline is not None and time.monotonic() + seconds >= self.deadline + 5:
            raise _Stop()  # bounded: a worker never outlives its deadline by much
        time.sleep(seconds)

    def _journal(self) -> Journal:
        # Redis may not be up yet (compose starts everything at once): wait for it.
        delay = 0.1
        while True:
            try:
                return self.open_journal()
            except RedisUnavailable as exc:
                self._log(f"waiting for Redis: {exc}")
                self._wait(delay)
                delay = min(delay * 2, 2.0)

    def _log(self, message: str) -> None:
        print(f"fleet {self.name}: {message}", file=sys.stderr, flush=True)

    def _ack(self, record: EventRecord) -> None:
        self.stats.appends += 1
        if self.acked is not None:
            self.acked.write(json.dumps({
                "e": record.event_id, "s": record.session_id, "b": record.branch_id,
                "q": record.sequence, "t": time.time(),
            }) + "\n")

    def _retry_same(self, j: Journal, records: list[EventRecord]) -> list[EventRecord]:
        """Append ``records`` at their sequence. An unknown outcome, a busy lease or an
        unreachable Redis is retried with the very same records: the journal resolves it
        (the retry finds them stored, or commits them). A conflict propagates."""
        delay = 0.02
        while True:
            try:
                return j.append_batch(records)
            except AppendOutcomeUnknown:
                self.stats.unknown += 1
            except (RedisUnavailable, LeaseTimeout) as exc:
                self.stats.unavailable += 1
                self._log(f"retrying: {exc}")
            self._wait(delay)
            delay = min(delay * 2, 1.0)

    def _head(self, j: Journal, session: str, branch: str) -> int:
        delay = 0.02
        while True:
            try:
                return j.head(session, branch)
            except RedisUnavailable as exc:
                self.stats.unavailable += 1
                self._log(f"retrying: {exc}")
                self._wait(delay)
                delay = min(delay * 2, 1.0)

    def append(self, j: Journal, session: str, branch: str, kind: dict[str, Any],
               **fields: Any) -> EventRecord:
        """The aiOS loop: append at the cached next sequence (seeded from head + 1); on a
        conflict read the head again and retry with the same event id."""
        key = (session, branch)
        event_id = str(uuid.uuid4())
        while True:
            if key not in self.next_seq:
                self.next_seq[key] = self._head(j, session, branch) + 1
            record = EventRecord.new(session, branch, self.next_seq[key], kind,
                                     event_id=event_id, agent_id=self.agent_id,
                                     actor=self.actor, **fields)
            try:
                stored = self._retry_same(j, [record])[0]
            except SequenceConflict:
                self.stats.conflicts += 1
                del self.next_seq[key]
                continue
            self.next_seq[key] = stored.sequence + 1
            self._ack(stored)
            return stored

    def open_session(self, j: Journal, session: str) -> None:
        """SessionCreated then PhaseEntered{sleep}, as one batch at 1..2: one worker wins."""
        if self.next_seq.get((session, "main"), 0) > 2:
            return
        if self._head(j, session, "main") >= 2:
            self.next_seq.setdefault((session, "main"), 3)
            return
        kinds: list[dict[str, Any]] = [
            {"type": "SessionCreated", "name": f"fleet session {session}",
             "config": {"created_by": self.name, "tools": list(TOOLS)}},
            {"type": "PhaseEntered", "phase": "sleep"},
        ]
        batch = [
            EventRecord.new(session, "main", i + 1, kind, agent_id=self.agent_id,
                            actor=self.actor)
            for i, kind in enumerate(kinds)
        ]
        batch[1].causation_id = batch[0].event_id
        try:
            stored = self._retry_same(j, batch)
        except SequenceConflict:
            self.next_seq.pop((session, "main"), None)
            return  # another worker opened it first
        self.stats.sessions_created += 1
        for record in stored:
            self._ack(record)
        self.next_seq[(session, "main")] = 3

    def open_branch(self, j: Journal, session: str) -> None:
        """A BranchCreated at sequence 1 of ``explore``, forked at main's head."""
        if session in self.known_branch:
            return
        if self._head(j, session, BRANCH) > 0:
            self.known_branch.add(session)
            return
        fork = self._head(j, session, "main")
        record = EventRecord.new(
            session, BRANCH, 1,
            {"type": "BranchCreated", "new_branch_id": BRANCH, "fork_point_seq": fork,
             "name": f"explore an alternative plan from main#{fork}"},
            agent_id=self.agent_id, actor=self.actor,
        )
        try:
            stored = self._retry_same(j, [record])[0]
        except SequenceConflict:
            self.known_branch.add(session)  # someone else forked it
            return
        self.stats.branches_created += 1
        self.known_branch.add(session)
        self.next_seq[(session, BRANCH)] = 2
        self._ack(stored)

    def turn(self, j: Journal) -> None:
        """One agent turn in a random session: a tool call and the assistant's answer."""
        session = self.rng.choice(self.sessions)
        self.open_session(j, session)
        branch = "main"
        main_next = self.next_seq.get((session, "main"), 0)
        if session not in self.known_branch and main_next > 6 and self.rng.random() < 0.5:
            self.open_branch(j, session)
        if session in self.known_branch and self.rng.random() < 0.35:
            branch = BRANCH
        tool = self.rng.choice(TOOLS)
        call_id = f"call-{uuid.uuid4().hex[:12]}"
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        turn = str(uuid.uuid4())
        started = time.monotonic()
        requested = self.append(j, session, branch, {
            "type": "ToolCallRequested", "call_id": call_id, "tool_name": tool,
            "arguments": {"query": f"step {self.stats.turns} of {self.name}"},
        }, correlation_id=turn)
        running = self.append(j, session, branch, {
            "type": "ToolCallStarted", "tool_run_id": run_id, "tool_name": tool,
        }, correlation_id=turn, causation_id=requested.event_id)
        done = self.append(j, session, branch, {
            "type": "ToolCallCompleted", "tool_run_id": run_id, "call_id": call_id,
            "tool_name": tool, "result": {"ok": True, "items": self.rng.randint(0, 9)},
            "duration_ms": int((time.monotonic() - started) * 1000), "status": "ok",
        }, correlation_id=turn, causation_id=running.event_id)
        self.append(j, session, branch, {
            "type": "Message", "role": "assistant",
            "content": f"{self.name} used {tool} on {branch}",
            "token_usage": {"prompt_tokens": 120, "completion_tokens": 24, "total_tokens": 144},
        }, correlation_id=turn, causation_id=done.event_id)
        self.stats.turns += 1

    def run(self) -> None:
        last_status = time.monotonic()
        j = self._journal()
        while not self._expired() and not self.stopping:
            if self.args.turns and self.stats.turns >= self.args.turns:
                break
            self.turn(j)
            if self.args.pause:
                time.sleep(self.args.pause)
            if not self.args.json and time.monotonic() - last_status >= STATUS_EVERY:
                last_status = time.monotonic()
                self._status()

    def _status(self) -> None:
        s = self.stats
        rate = s.appends / max(time.monotonic() - s.started, 1e-9)
        print(f"fleet {self.name}: {s.appends} events ({rate:.0f}/s), {s.turns} turns, "
              f"{s.conflicts} conflicts retried", flush=True)


def run_fleet(open_journal: Callable[[], Journal], args: argparse.Namespace) -> int:
    """``journal fleet``: run one worker until its limits, SIGTERM or Ctrl-C."""
    from .ids import validate_id

    validate_id(f"{args.prefix}-{args.sessions}", "--prefix")
    worker = FleetWorker(open_journal, args)

    def on_sigterm(signum: int, frame: object) -> None:
        # `docker compose stop` sends SIGTERM: end after the turn in progress, so that no
        # append is cut between its write and its acknowledgement.
        worker.stopping = True

    with contextlib.suppress(ValueError):  # only possible in the main thread
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if args.acked:
            worker.acked = open(args.acked, "a", encoding="utf-8")  # noqa: SIM115
        if not args.json:
            print(f"fleet {worker.name}: appending to {', '.join(worker.sessions)}", flush=True)
        worker.run()
    except _Stop:
        pass
    finally:
        if worker.acked is not None:
            worker.acked.close()
        if args.json:
            print(json.dumps(worker.stats.as_dict()), flush=True)
        else:
            worker._status()
    return 0


# ----- the subscriber process ----------------------------------------------------------------


class Progress:
    """The live display: one updating line on a terminal (``\\r``), periodic lines otherwise.
    Session and branch openings are printed as lines of their own as they happen."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.count = 0
        self.started = time.monotonic()
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.last = ""
        self.drawn = 0.0
        self.printed = -1
        self.streams: set[tuple[str, str]] = set()

    def event(self, record: EventRecord) -> None:
        self.count += 1
        self.streams.add((record.session_id, record.branch_id))
        self.last = f"{record.session_id}/{record.branch_id}#{record.sequence} {record.kind_type}"
        kind = record.kind
        who = record.actor.component or record.actor.type
        if record.kind_type == "SessionCreated":
            self.line(f"  + {record.session_id}: SessionCreated by {who}")
        elif record.kind_type == "BranchCreated":
            self.line(f"  + {record.session_id}: BranchCreated {kind.get('new_branch_id')} "
                      f"at main#{kind.get('fork_point_seq')} by {who}")

    def rate(self) -> float:
        now = time.monotonic()
        self.window.append((now, self.count))
        # Keep the newest sample that is at least a second old: the rate of the last second
        # whether we are asked every 0.1 s (terminal) or every second (log).
        while len(self.window) > 2 and now - self.window[1][0] >= 1.0:
            self.window.popleft()
        span = now - self.window[0][0]
        return (self.count - self.window[0][1]) / span if span > 0.05 else 0.0

    def text(self) -> str:
        return (f"  feed: {self.count:>6} events  {self.rate():>6.0f}/s  "
                f"{len(self.streams)} branches  last {self.last or '-'}")

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + "\n")
            self.drawn = 0.0  # redraw the progress line below it
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def tick(self) -> None:
        now = time.monotonic()
        if self.tty and now - self.drawn >= 0.1:
            width = shutil.get_terminal_size((100, 24)).columns
            self.stream.write("\r\x1b[K" + self.text()[: width - 1])
            self.stream.flush()
            self.drawn = now
        elif not self.tty and now - self.drawn >= 1.0 and self.count != self.printed:
            # A log gets a line a second, and only when something happened.
            self.printed = self.count
            self.stream.write(self.text() + "\n")
            self.stream.flush()
            self.drawn = now

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        text = f"  feed: {self.count} events in {elapsed:.1f} s, last {self.last or '-'}"
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()


async def _subscriber(spec: dict[str, Any]) -> int:
    url = os.environ.get("JOURNAL_REDIS_URL") or None
    journal = AsyncJournal(spec["root"], url)
    await journal.open()
    progress = Progress(sys.stdout, sys.stdout.isatty())
    seen: list[tuple[str, str, str, int, float]] = []
    last: dict[tuple[str, str], int] = {}

    async def follow(session: str, branch: str) -> None:
        async for record in journal.subscribe(session, branch, after_sequence=0):
            seen.append((record.event_id, session, branch, record.sequence, time.time()))
            last[(session, branch)] = record.sequence
            progress.event(record)

    tasks = [
        asyncio.create_task(follow(session, branch), name=f"{session}/{branch}")
        for session in spec["sessions"]
        for branch in BRANCHES
    ]
    # Let every subscription reach its listening state before the workers are let go.
    await asyncio.sleep(0.2)
    Path(spec["ready"]).write_text("ready\n")
    expect: dict[tuple[str, str], int] | None = None
    give_up = time.monotonic() + spec["timeout"]
    status = 0
    try:
        while True:
            await asyncio.sleep(0.05)
            progress.tick()
            failed = [t for t in tasks if t.done()]
            if failed:
                exc = failed[0].exception()
                print(f"subscriber: {failed[0].get_name()} ended: {exc!r}", file=sys.stderr)
                status = 1
                break
            if expect is None and os.path.exists(spec["expect"]):
                raw = json.loads(Path(spec["expect"]).read_text())
                expect = {(s, b): h for s, heads in raw.items() for b, h in heads.items()}
                give_up = min(give_up, time.monotonic() + spec["grace"])
            if expect is not None and all(last.get(k, 0) >= h for k, h in expect.items()):
                break
            if time.monotonic() >= give_up:
                print("subscriber: gave up waiting for the rest of the feed", file=sys.stderr)
                status = 1
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await journal.close()
        progress.finish()
        with open(spec["seen"], "w", encoding="utf-8") as out:
            for event_id, session, branch, sequence, at in seen:
                out.write(json.dumps({"e": event_id, "s": session, "b": branch,
                                      "q": sequence, "t": at}) + "\n")
    return status


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def subscriber_main(argv: list[str]) -> int:
    """``python -m journal.demo subscriber SPEC``: the demo's live subscriber process."""
    if len(argv) != 2 or argv[0] != "subscriber":
        print("usage: python -m journal.demo subscriber SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(_subscriber(spec))
    except KeyboardInterrupt:
        return 130
    except JournalError as exc:
        print(f"subscriber: error: {exc}", file=sys.stderr)
        return 1


# ----- the demo ------------------------------------------------------------------------------


@dataclass
class Check:
    ok: bool
    text: str


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(min(int(q), 99), 1) - 1]


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.1f} ms"


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _kill_all(procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _child_env(redis_url: str, root: Path, durability: str | None) -> dict[str, str]:
    # The URL goes by environment, not argv: a password must not show up in `ps`.
    env = dict(os.environ)
    env["JOURNAL_REDIS_URL"] = redis_url
    env["JOURNAL_ROOT"] = str(root)
    if durability is not None:
        env["JOURNAL_DURABILITY"] = durability
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_demo(args: argparse.Namespace, *, root: Path | None, redis_url: str | None,
             durability: str | None) -> int:
    """``journal demo``: start, run, watch, verify, summarize. 0 only if every check passed."""
    from .embedded import embedded_status, ensure_embedded, stop_embedded

    temporary = root is None
    root = Path(tempfile.mkdtemp(prefix="journal-demo-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    started_redis = False
    passed = ran = False
    out = sys.stdout
    try:
        if redis_url is None:
            started_redis = embedded_status(root) is None
            redis_url = ensure_embedded(root)
            how = "embedded, started for this demo" if started_redis else "embedded, reused"
        else:
            how = "given by --redis-url"
        run_id = uuid.uuid4().hex[:6]
        prefix = f"demo-{run_id}"
        sessions = [f"{prefix}-{i}" for i in range(1, args.sessions + 1)]
        print(f"journal demo: {args.workers} worker processes x {args.sessions} shared sessions "
              f"for {args.duration:g} s (durability "
              f"{durability or os.environ.get('JOURNAL_DURABILITY') or 'fsync'})", file=out)
        print(f"  root      {root}{' (temporary)' if temporary else ''}", file=out)
        print(f"  redis     {redact_url(redis_url)} ({how})", file=out)
        print(f"  sessions  {', '.join(sessions)} (branches main, {BRANCH})", file=out)
        print("", file=out)
        print("live feed (a subscriber process, one subscription per session and branch):",
              file=out)
        out.flush()
        ran = True
        passed, lines = _run(args, root, work, redis_url, durability, sessions, prefix)
        for line in lines:
            print(line, file=out)
        return 0 if passed else 1
    finally:
        if started_redis:
            with contextlib.suppress(JournalError):  # never mask the demo's own outcome
                stop_embedded(root)
        # A failed run is evidence: keep it. A run that never started leaves nothing behind.
        if args.keep or (ran and not passed):
            print(f"kept for inspection: {root}", file=out)
        elif temporary:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, root: Path, work: Path, redis_url: str,
         durability: str | None, sessions: list[str], prefix: str) -> tuple[bool, list[str]]:
    env = _child_env(redis_url, root, durability)
    spec = {
        "root": str(root), "sessions": sessions, "ready": str(work / "ready"),
        "expect": str(work / "expect.json"), "seen": str(work / "seen.jsonl"),
        "timeout": args.duration + 60.0, "grace": 15.0,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    procs: list[subprocess.Popen[Any]] = []
    try:
        subscriber = subprocess.Popen(
            [sys.executable, "-m", "journal.demo", "subscriber", str(work / "spec.json")],
            env=env, stdin=subprocess.DEVNULL,
        )
        procs.append(subscriber)
        deadline = time.monotonic() + 30
        while not os.path.exists(spec["ready"]):
            if subscriber.poll() is not None or time.monotonic() > deadline:
                return False, ["FAIL: the subscriber did not start"]
            time.sleep(0.02)
        began = time.monotonic()
        workers = []
        for i in range(1, args.workers + 1):
            argv = [sys.executable, "-m", "journal.cli", "fleet", "--json",
                    "--sessions", str(args.sessions), "--prefix", prefix,
                    "--duration", str(args.duration), "--pause", str(args.pause),
                    "--worker-id", f"worker-{i}", "--acked", str(work / f"acked-{i}.jsonl")]
            workers.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
            procs.append(workers[-1])
        stats: list[dict[str, Any]] = []
        failures: list[str] = []
        for i, proc in enumerate(workers, start=1):
            try:
                stdout, stderr = proc.communicate(timeout=args.duration + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                failures.append(f"worker-{i} did not finish in time")
            if proc.returncode != 0:
                failures.append(f"worker-{i} exited {proc.returncode}: "
                                f"{stderr.strip().splitlines()[-1:] or ''}")
            with contextlib.suppress(ValueError, IndexError):
                stats.append(json.loads(stdout.strip().splitlines()[-1]))
        # The workers' own clocks (from their first append attempt): process start-up is
        # not part of the write rate.
        writing = max((float(s.get("elapsed", 0.0)) for s in stats),
                      default=time.monotonic() - began)
        last_ack = max((a["t"] for i in range(1, args.workers + 1)
                        for a in _read_jsonl(work / f"acked-{i}.jsonl")), default=time.time())

        with Journal(root, redis_url) as j:
            heads = {s: j.branches(s) for s in sessions}
            tmp = work / "expect.json.tmp"
            tmp.write_text(json.dumps(heads))
            os.replace(tmp, spec["expect"])  # atomic: the subscriber never reads half a file
            try:
                subscriber.wait(timeout=spec["grace"] + 10)
            except subprocess.TimeoutExpired:
                failures.append("the subscriber did not finish")
            else:
                if subscriber.returncode != 0:
                    failures.append(f"the subscriber exited {subscriber.returncode}")
            records = {
                (s, b): _read_branch(j, s, b, h) for s, hs in heads.items() for b, h in hs.items()
            }
        return _verify_and_summarize(args, root, work, sessions, heads, records, stats,
                                     failures, writing, last_ack)
    finally:
        _kill_all(procs)


def _read_branch(j: Journal, session: str, branch: str, head: int) -> list[EventRecord]:
    out: list[EventRecord] = []
    while len(out) < head:
        page = j.read(session, branch, len(out) + 1, min(PAGE, head - len(out)))
        if not page:
            break
        out.extend(page)
    return out


def _verify_and_summarize(
    args: argparse.Namespace, root: Path, work: Path, sessions: list[str],
    heads: dict[str, dict[str, int]], records: dict[tuple[str, str], list[EventRecord]],
    stats: list[dict[str, Any]], failures: list[str], writing: float, last_ack: float,
) -> tuple[bool, list[str]]:
    from .verify import verify_report

    checks: list[Check] = [Check(False, f) for f in failures]
    where: dict[str, tuple[str, str, int]] = {}
    created: dict[str, float] = {}
    duplicates = 0
    gaps = []
    for (session, branch), recs in records.items():
        sequences = [r.sequence for r in recs]
        if sequences != list(range(1, heads[session][branch] + 1)):
            gaps.append(f"{session}/{branch}")
        for r in recs:
            if r.event_id in where:
                duplicates += 1
            where[r.event_id] = (session, branch, r.sequence)
            created[r.event_id] = r.datetime.timestamp()
    total = sum(len(r) for r in records.values())
    branch_count = sum(len(h) for h in heads.values())
    checks.append(Check(
        not gaps and not duplicates,
        f"{len(sessions)} sessions, {branch_count} branches, {total} events: "
        + ("no gap, no duplicate" if not gaps and not duplicates
           else f"gaps on {', '.join(gaps) or 'none'}, {duplicates} duplicate event ids"),
    ))
    shape_bad = []
    for (session, branch), recs in records.items():
        want = (["SessionCreated", "PhaseEntered"] if branch == "main" else ["BranchCreated"])
        if [r.kind_type for r in recs[: len(want)]] != want:
            shape_bad.append(f"{session}/{branch}")
    checks.append(Check(
        not shape_bad,
        "aiOS shape: SessionCreated + PhaseEntered{sleep} open every session, "
        "BranchCreated opens every branch" if not shape_bad
        else f"aiOS shape broken on {', '.join(shape_bad)}",
    ))

    acked = [a for i in range(1, args.workers + 1) for a in _read_jsonl(work / f"acked-{i}.jsonl")]
    lost = [a for a in acked if where.get(a["e"]) != (a["s"], a["b"], a["q"])]
    checks.append(Check(
        not lost and len(acked) == total,
        f"{len(acked)} acknowledged events, all in the files at their sequence"
        if not lost and len(acked) == total
        else f"{len(lost)} acknowledged events missing or misplaced; "
             f"{len(acked)} acked vs {total} stored",
    ))

    seen = list(_read_jsonl(work / "seen.jsonl"))
    counts = collections.Counter(s["e"] for s in seen)
    twice = sum(1 for c in counts.values() if c > 1)
    missed = len(set(where) - set(counts))
    foreign = len(set(counts) - set(where))
    checks.append(Check(
        not twice and not missed and not foreign,
        f"the subscriber saw each of the {total} events exactly once"
        if not twice and not missed and not foreign
        else f"subscriber: {missed} missed, {twice} seen more than once, {foreign} unknown",
    ))

    report = verify_report(root, sessions)
    checks.append(Check(
        not report.findings,
        "journal verify: no findings" if not report.findings
        else f"journal verify: {len(report.findings)} findings, e.g. {report.findings[0]}",
    ))

    lags = sorted(max(s["t"] - created[s["e"]], 0.0) for s in seen if s["e"] in created)
    last_seen = max((s["t"] for s in seen), default=last_ack)
    conflicts = sum(s.get("conflicts", 0) for s in stats)
    unknown = sum(s.get("unknown", 0) + s.get("unavailable", 0) for s in stats)
    appended = sum(s.get("appends", 0) for s in stats)
    passed = all(c.ok for c in checks)

    lines = ["", "verification"]
    lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.text}" for c in checks]
    lines += ["", "sessions"]
    width = max(len(s) for s in sessions)
    for session in sessions:
        path = root / "events" / f"{session}.jsonl"
        size = path.stat().st_size if path.exists() else 0
        branches = ", ".join(f"{b} {h}" for b, h in sorted(heads[session].items(),
                                                           key=lambda kv: kv[0] != "main"))
        lines.append(f"  {session:<{width}}  {size:>9,} bytes  {branches}")
    rows = [
        ("workers", f"{args.workers} processes, {len(stats)} reported"),
        ("events", f"{total:,} ({appended:,} acknowledged to workers)"),
        ("sessions", f"{len(sessions)} ({branch_count} branches)"),
        ("conflicts retried", f"{conflicts:,}" + (f" (+{unknown} other retries)" if unknown
                                                  else "")),
        ("appends per second", f"{total / writing:,.0f} over {writing:.1f} s"
         if writing > 0 else "n/a"),
        ("subscriber lag", f"p50 {_ms(_percentile(lags, 50))}, p99 {_ms(_percentile(lags, 99))},"
                           f" max {_ms(lags[-1] if lags else float('nan'))}"
                           " (event created -> seen)"),
        ("final lag", f"{_ms(max(last_seen - last_ack, 0.0))} (last ack -> subscriber caught up)"),
        ("result", "PASS" if passed else "FAIL"),
    ]
    lines += ["", "summary"]
    lines += [f"  {name:<20} {value}" for name, value in rows]
    return passed, lines


if __name__ == "__main__":
    sys.exit(subscriber_main(sys.argv[1:]))
