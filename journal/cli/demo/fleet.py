"""``journal fleet``: one worker of the agent fleet, appending aiOS turns with the retry loop."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from journal._io.journals import Journal
from journal._model.records import Actor, EventRecord
from journal.errors import (
    AppendOutcomeUnknown,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
)

BRANCH = "explore"  # the one extra branch of every session (fixed: subscribers know it)
BRANCHES = ("main", BRANCH)
TOOLS = ("fs.read", "fs.write", "web.search", "shell.exec", "kb.lookup")
STATUS_EVERY = 10.0  # seconds between status lines of a long-lived worker
PAGE = 1000


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
                "event_id": record.event_id, "session_id": record.session_id,
                "branch_id": record.branch_id, "sequence": record.sequence,
                "acked_at": time.time(),
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
    from journal._model.ids import validate_id

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


