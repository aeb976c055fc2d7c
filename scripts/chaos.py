#!/usr/bin/env python3
"""Chaos run: many writer and subscriber processes against one journal, faults at random.

For ``--duration`` seconds, ``--writers`` writer processes append to ``--sessions`` sessions
(two branches each, so they contend for the same leases), ``--subscribers`` processes follow
them live, and faults are injected at random, each kind on by default:

* ``kill``        SIGKILL of a random writer at a random moment (from outside);
* ``window-kill`` SIGKILL inside a chosen window of the append protocol (``JOURNAL_FAULTS``
  ``kill@P`` at after_begin, mid_write, after_fsync, before_commit or after_commit, drawn
  per spawned writer);
* ``zombie``      SIGSTOP of a writer until its lease has expired, then SIGCONT (from
  outside, and from inside the protocol with ``<point>=stop@P``);
* ``redis``       Redis killed and restarted with empty memory (``RedisServer.restart()``);
* ``pubsub``      ``CLIENT KILL TYPE pubsub``: every subscriber connection is cut;
* ``enospc``      a full disk: the data root is a small tmpfs that gets filled for a moment
  (when mounting works, i.e. as root); otherwise the ``enospc@P`` fault hook;
* ``slow-fsync``  ``fsync=sleep@P:S`` on some writers;
* ``lifecycle``   the life-cycle operations of issue 14, run by the orchestrator during the
  faults on the ``--lifecycle-sessions`` sessions (``chaos-life-N``, written like the others):
  ``delete`` (never all of them), ``truncate`` (``truncate_before`` a random sequence of a
  branch), ``archive`` and ``gc`` (a ``max_count`` policy). One that fails (Redis down, the
  lease busy, the disk full) is run again later, and at the end, until it is done.

Killed writers are replaced. Every writer logs each batch it attempts, each acknowledged
batch, each error it retried (same records until resolved) and each resolution. The checker
knows what each life-cycle operation removed, from the session's marks at the end: events of
a deleted session and events below a truncation point are "removed on purpose", not lost
(every other acknowledged event must be there); a deleted session stays deleted (reads and
appends raise ``SessionDeleted``, also after Redis lost everything); an archived session is
read through its archive; subscribers are checked against what is left. Subscribers
log every event they receive, in order. At the end the checker verifies the invariants
(nothing acknowledged is lost, nothing is stored twice, every branch is contiguous, every
unknown outcome resolved as the file says, no batch is torn, every subscriber saw exactly
the committed sequence from its start point to the final head, the journal still takes
appends, and a Redis that lost everything rebuilds the same view) and prints a report.
Exit status 0 only when every invariant holds.

    python scripts/chaos.py --quick                       # ~20 s
    python scripts/chaos.py --duration 300 --report chaos.md

The same file is the worker: ``chaos.py _writer ...`` and ``chaos.py _subscriber ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The orchestrator itself must never run with fault hooks: they are for its children.
_CHILD = len(sys.argv) > 1 and sys.argv[1] in ("_writer", "_subscriber")
if __name__ == "__main__" and not _CHILD:
    os.environ.pop("JOURNAL_FAULTS", None)
# The journal code under test: a snapshot taken when the run started (see --no-snapshot),
# so that edits to the working tree during a long run do not mix versions; else the repo's.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("JOURNAL_CHAOS_CODE") or str(REPO))

from journal import (  # noqa: E402
    AppendOutcomeUnknown,
    EventRecord,
    HistoryTruncated,
    InvalidInput,
    Journal,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
    SessionDeleted,
    StorageError,
)
from journal.testing import faults  # noqa: E402

BRANCHES = ("main", "alt")
WINDOWS = ("after_begin", "mid_write", "after_fsync", "before_commit", "after_commit")
STOP_POINTS = ("after_begin", "after_fsync", "before_commit")
# Errors after which a writer retries the very same records until the outcome is known.
RETRIED = (AppendOutcomeUnknown, RedisUnavailable, StorageError, LeaseTimeout)


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on this machine."""
    return time.monotonic()


class Log:
    """JSON lines appended with one write(2) each: a SIGKILL never leaves half a record
    except possibly the last one, which readers skip."""

    def __init__(self, path: Path | str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __call__(self, **item: Any) -> None:
        item.setdefault("t", round(now(), 6))
        os.write(self.fd, json.dumps(item, separators=(",", ":")).encode() + b"\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for raw in path.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue  # the torn last line of a killed process
    return out


# ============================================================================================
# The writer process
# ============================================================================================


def writer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chaos.py _writer")
    ap.add_argument("--root", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--sessions", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lease-ms", type=int, default=500)
    ap.add_argument("--batch-max", type=int, default=3)
    ap.add_argument("--pace-ms", type=float, default=5.0)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    log = Log(a.log)
    sessions = a.sessions.split(",")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    faults.configure_from_env()
    log(a="start", pid=os.getpid(), faults=os.environ.get("JOURNAL_FAULTS", ""))
    j = Journal(a.root, a.url, lease_ms=a.lease_ms, socket_timeout_s=2.0, lease_wait_s=30)
    while True:
        try:
            j.open()
            break
        except RedisUnavailable:
            if stopping.is_set():
                return 0
            time.sleep(0.05)
    counter = 0
    while not stopping.is_set():
        if not sessions:
            time.sleep(0.05)
            continue
        session = rng.choice(sessions)
        branch = BRANCHES[0] if rng.random() < 0.7 else BRANCHES[1]
        try:
            head = j.head(session, branch)
        except SessionDeleted:  # deleted on purpose (a lifecycle fault): write elsewhere
            log(a="session_deleted", s=session)
            sessions.remove(session)
            continue
        except Exception as exc:
            if not isinstance(exc, RedisUnavailable | LeaseTimeout):
                log(a="head_error", s=session, b=branch, err=type(exc).__name__,
                    msg=str(exc)[:200])
            time.sleep(0.02)
            continue
        n = rng.randint(1, a.batch_max)
        batch = []
        for k in range(n):
            counter += 1
            pad = "x" * rng.randint(0, 300)
            batch.append(EventRecord.new(session, branch, head + 1 + k, {
                "type": "UserMessage", "content": f"{a.name}-{counter}-{pad}"}))
        ids = [r.event_id for r in batch]
        log(a="try", s=session, b=branch, q=head + 1, ids=ids)
        errors = 0
        while True:  # resolve this batch: committed, or definitely not
            try:
                stored = j.append_batch(batch)
            except SequenceConflict as exc:
                if errors:
                    log(a="resolved", ids=ids, outcome="not_committed", head=exc.expected - 1)
                else:
                    log(a="conflict", ids=ids)
                break
            except SessionDeleted:
                # Committed before the delete or not: either way deleted on purpose.
                log(a="resolved", ids=ids, outcome="deleted")
                log(a="session_deleted", s=session)
                sessions.remove(session)
                break
            except Exception as exc:
                # RETRIED is expected; anything else (another JournalError, or worse, not a
                # JournalError at all) is a finding, but the outcome is just as unknown, so
                # the same records are retried and the run goes on.
                errors += 1
                unexpected = not isinstance(exc, RETRIED)
                msg = str(exc)[:200]
                if unexpected and exc.__traceback__ is not None:
                    frame = traceback.extract_tb(exc.__traceback__)[-1]
                    msg += f" (at {Path(frame.filename).name}:{frame.lineno})"
                log(a="error", ids=ids, s=session, b=branch, q=head + 1,
                    err=type(exc).__name__, msg=msg, n=errors, unexpected=unexpected)
                time.sleep(rng.uniform(0.005, 0.03))
                continue
            if [r.event_id for r in stored] != ids:
                log(a="bad_ack", ids=ids, got=[r.event_id for r in stored])
            log(a="ack", s=session, b=branch, q=stored[0].sequence, ids=ids)
            if errors:
                log(a="resolved", ids=ids, outcome="committed")
            break
        if a.pace_ms > 0:
            time.sleep(rng.uniform(0, 2 * a.pace_ms) / 1000)
    j.close()
    log(a="exit")
    return 0


# ============================================================================================
# The subscriber process
# ============================================================================================


def subscriber_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chaos.py _subscriber")
    ap.add_argument("--root", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--sessions", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--firehose", action="store_true")
    a = ap.parse_args(argv)
    from journal._io import subscriptions  # noqa: F401  (fails here if it is not importable)

    rng = random.Random(a.seed)
    log = Log(a.log)
    sessions = a.sessions.split(",")

    def open_journal() -> Journal:
        j = Journal(a.root, a.url, lease_ms=500, socket_timeout_s=2.0)
        while True:
            try:
                return j.open()
            except RedisUnavailable:
                time.sleep(0.05)

    def follow(session: str, branch: str) -> None:
        j = open_journal()
        while True:
            try:
                top = j.head(session, branch)
                break
            except SessionDeleted:
                log(a="ended", s=session, b=branch, reason="deleted")
                return
            except Exception:
                time.sleep(0.05)
        after = rng.randint(0, top)
        log(a="start", s=session, b=branch, after=after)
        while True:
            try:
                for rec in j.subscribe(session, branch, after_sequence=after):
                    log(s=rec.session_id, b=rec.branch_id, q=rec.sequence, id=rec.event_id)
                    after = rec.sequence
            except SessionDeleted:
                log(a="ended", s=session, b=branch, reason="deleted")
                return
            except HistoryTruncated as exc:  # told where the branch now starts: go on there
                log(a="truncated", s=session, b=branch, first=exc.first)
                after = max(after, exc.first - 1)
                continue
            except Exception as exc:
                # A finding: a subscription must never fail while Redis comes back. Resume
                # after the last event received, so the order check still covers the rest.
                log(a="crash", s=session, b=branch, err=f"{type(exc).__name__}: {exc}"[:500])
                time.sleep(0.2)

    def firehose() -> None:
        j = open_journal()
        log(a="start_all")
        last: dict[tuple[str, str], int] = {}
        restarted = False
        while True:
            try:
                for rec in j.subscribe_all("chaos", from_start=True):
                    key = (rec.session_id, rec.branch_id)
                    if restarted and rec.sequence <= last.get(key, 0):
                        continue  # the replay of a restarted firehose: already logged
                    log(s=rec.session_id, b=rec.branch_id, q=rec.sequence, id=rec.event_id)
                    last[key] = rec.sequence
            except Exception as exc:
                log(a="crash", err=f"{type(exc).__name__}: {exc}"[:500])
                restarted = True
                time.sleep(0.2)

    if a.firehose:
        threads = [threading.Thread(target=firehose, daemon=True)]
    else:
        threads = [threading.Thread(target=follow, args=(s, b), daemon=True)
                   for s in sessions for b in BRANCHES]
    for t in threads:
        t.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.2)
    # Daemon threads block in the iterator; they die with the process.
    os._exit(0)


# ============================================================================================
# The orchestrator
# ============================================================================================


@dataclass
class Proc:
    role: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    faults: str = ""
    window: str | None = None  # the protocol window with kill@P, if any
    killed_by_us: bool = False
    stopped_since: float | None = None
    stopped_by_us: bool = False
    errfile: Any = None


@dataclass
class Fault:
    kind: str
    t: float
    sessions: list[str]  # sessions whose appends it may delay; [] for subscriber faults
    end: float | None = None  # for faults that last (disk full): when it was lifted
    detail: str = ""


@dataclass
class Config:
    duration: float
    writers: int
    sessions: int
    subscribers: int
    seed: int
    lease_ms: int
    batch_max: int
    pace_ms: float
    fault_interval: float
    grace: float
    enabled: set[str]
    workdir: Path
    tmpfs_mb: int
    quick: bool
    windows: tuple[str, ...] = WINDOWS


@dataclass
class Run:
    cfg: Config
    root: Path
    url: str
    rng: random.Random
    server: Any
    sessions: list[str]
    tmpfs: bool = False
    procs: list[Proc] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    spawned: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    filler: Path | None = None
    filler_until: float = 0.0
    stop_hold_s: float = 0.0
    fault_log: Log | None = None
    life: list[str] = field(default_factory=list)  # sessions the lifecycle faults act on
    deleted: dict[str, float] = field(default_factory=dict)  # session -> when
    life_j: Any = None
    life_pending: list[list[Any]] = field(default_factory=list)  # [op, session, arg]
    life_done: Counter[str] = field(default_factory=Counter)

    # ----- processes ---------------------------------------------------------------------

    def _spawn(self, role: str, name: str, args: list[str], env_faults: str = "",
               window: str | None = None) -> Proc:
        env = dict(os.environ)
        env.pop("JOURNAL_FAULTS", None)
        if env_faults:
            env["JOURNAL_FAULTS"] = env_faults
        log = self.cfg.workdir / "logs" / f"{name}.jsonl"
        err = open(self.cfg.workdir / "logs" / f"{name}.stderr", "wb")  # noqa: SIM115
        popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), f"_{role}", "--log", str(log),
             "--root", str(self.root), "--url", self.url, "--sessions", ",".join(self.sessions),
             *args],
            env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
        )
        proc = Proc(role, name, popen, log, env_faults, window, errfile=err)
        self.procs.append(proc)
        return proc

    def writer_faults(self) -> tuple[str, str | None]:
        """The JOURNAL_FAULTS of a new writer: at most one action per point."""
        rng, on = self.rng, self.cfg.enabled
        rules: dict[str, str] = {}
        window = None
        if "window-kill" in on and rng.random() < 0.75:
            window = rng.choice(self.cfg.windows)
            rules[window] = f"kill@{rng.uniform(0.004, 0.02):.4f}"
        if "zombie" in on and rng.random() < 0.25:
            point = rng.choice([p for p in STOP_POINTS if p not in rules])
            rules[point] = f"stop@{rng.uniform(0.002, 0.01):.4f}"
        if "slow-fsync" in on and rng.random() < 0.35:
            rules["fsync"] = "sleep@0.2:0.05"
        if "enospc" in on and not self.tmpfs and rng.random() < 0.3:
            free = [p for p in ("after_begin", "fsync", "mid_write") if p not in rules]
            if free:
                rules[rng.choice(free)] = f"enospc@{rng.uniform(0.005, 0.02):.4f}"
        return ",".join(f"{k}={v}" for k, v in rules.items()), window

    def spawn_writer(self) -> Proc:
        self.spawned["writer"] += 1
        name = f"w{self.spawned['writer']:04d}"
        spec, window = self.writer_faults()
        return self._spawn("writer", name, [
            "--name", name, "--seed", str(self.rng.randrange(2**32)),
            "--lease-ms", str(self.cfg.lease_ms), "--batch-max", str(self.cfg.batch_max),
            "--pace-ms", str(self.cfg.pace_ms)], spec, window)

    def spawn_subscriber(self, index: int) -> Proc:
        self.spawned["subscriber"] += 1
        name = f"sub{index:02d}"
        extra = ["--firehose"] if index % 2 == 1 else []
        return self._spawn("subscriber", name,
                           ["--seed", str(self.rng.randrange(2**32)), *extra])

    def live(self, role: str) -> list[Proc]:
        return [p for p in self.procs if p.role == role and p.popen.poll() is None]

    def reap_writers(self) -> None:
        """Notice dead writers (counting the ones a fault hook killed) and replace them."""
        for p in self.procs:
            if p.role != "writer" or p.popen.returncode is not None:
                continue
            rc = p.popen.poll()
            if rc is None:
                continue
            if rc == -signal.SIGKILL and not p.killed_by_us:
                self.record(Fault(f"window-kill:{p.window}", now(),
                                         self.sessions_of(p), detail=p.name))
            elif rc not in (0, -signal.SIGKILL):
                tail = (self.cfg.workdir / "logs" / f"{p.name}.stderr").read_bytes()[-600:]
                self.crashes.append(f"writer {p.name} exited with status {rc}: "
                                    f"{tail.decode(errors='replace')}")

    def sessions_of(self, p: Proc) -> list[str]:
        """The session a writer was working on (its last attempt), else all of them."""
        last = None
        for item in read_log(p.log)[-6:]:
            if item.get("a") == "try":
                last = item["s"]
        return [last] if last else list(self.sessions)

    def tend_stopped(self) -> None:
        """Writers stopped (by us or by a stop hook) get SIGCONT once their lease expired."""
        t = now()
        for p in self.live("writer"):
            if _stopped(p.popen.pid):
                if p.stopped_since is None:
                    p.stopped_since = t
                    if not p.stopped_by_us:
                        self.record(Fault("zombie:stop-hook", t, self.sessions_of(p),
                                                 detail=p.name))
                elif t - p.stopped_since >= self.stop_hold_s:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.popen.pid, signal.SIGCONT)
            elif p.stopped_since is not None and t - p.stopped_since > 0.05:
                p.stopped_since = None
                p.stopped_by_us = False

    # ----- faults ------------------------------------------------------------------------

    def record(self, fault: Fault) -> None:
        self.faults.append(fault)
        if self.fault_log is not None:
            self.fault_log(kind=fault.kind, sessions=fault.sessions, detail=fault.detail)

    def inject(self) -> None:
        kinds = {"kill": 4, "zombie": 2, "redis": 1, "pubsub": 1.5, "enospc": 1,
                 "lifecycle": 1.5}
        choices = [k for k in kinds if k in self.cfg.enabled]
        if not self.tmpfs and "enospc" in choices:
            choices.remove("enospc")  # the hook does it, in the writers
        if self.filler is not None and "enospc" in choices:
            choices.remove("enospc")
        if not choices:
            return
        kind = self.rng.choices(choices, weights=[kinds[k] for k in choices])[0]
        t = now()
        if kind == "kill":
            victims = [p for p in self.live("writer") if p.stopped_since is None]
            if victims:
                p = self.rng.choice(victims)
                p.killed_by_us = True
                sessions = self.sessions_of(p)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, signal.SIGKILL)
                self.record(Fault("kill", t, sessions, detail=p.name))
        elif kind == "zombie":
            victims = [p for p in self.live("writer") if p.stopped_since is None]
            if victims:
                p = self.rng.choice(victims)
                p.stopped_by_us = True
                sessions = self.sessions_of(p)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, signal.SIGSTOP)
                self.record(Fault("zombie:sigstop", t, sessions, detail=p.name))
        elif kind == "redis":
            self.server.restart()
            self.record(Fault("redis-restart", t, list(self.sessions),
                                     end=now(), detail=f"{now() - t:.3f}s down"))
        elif kind == "pubsub":
            killed = 0
            import redis

            client = redis.Redis.from_url(self.url, socket_timeout=2)
            try:
                killed = int(client.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            except redis.RedisError as exc:
                self.notes.append(f"CLIENT KILL failed: {exc}")
            finally:
                client.close()
            self.record(Fault("pubsub-kill", t, [], detail=f"{killed} connections"))
        elif kind == "enospc":
            self.fill_disk()
        elif kind == "lifecycle":
            self.lifecycle()

    # ----- life-cycle operations (issue 14) ----------------------------------------------

    def lifecycle(self, op: str | None = None) -> None:
        """Queue one life-cycle operation (``op``, or one drawn) on a life session, then run
        what is queued."""
        alive = [s for s in self.life if s not in self.deleted
                 and not any(job[0] == "delete" and job[1] == s for job in self.life_pending)]
        if not alive:
            return
        ops = ["truncate", "archive", "gc"]
        if len(alive) > 1:  # never all of them: the others go on being written
            ops.append("delete")
        if op is None:
            op = self.rng.choice(ops)
        elif op not in ops:
            return
        session = self.rng.choice(alive)
        arg: Any = None
        if op == "truncate":
            arg = [self.rng.choice(BRANCHES), None]  # the sequence is drawn at the first try
        elif op == "gc":
            arg = self.rng.randint(5, 40)  # max_count
        self.life_pending.append([op, session, arg])
        self.run_lifecycle()

    def _life_journal(self) -> Journal:
        if self.life_j is None:
            j = Journal(self.root, self.url, lease_ms=self.cfg.lease_ms, socket_timeout_s=2.0,
                        lease_wait_s=2.0)
            j.open()
            self.life_j = j
        journal: Journal = self.life_j
        return journal

    def run_lifecycle(self) -> bool:
        """Run the queued operations; True when none is left. A failure that a caller is
        told to retry keeps the operation queued (a retry finishes the job)."""
        from journal._core import retention

        for job in list(self.life_pending):
            op, session, arg = job
            t = now()
            try:
                j = self._life_journal()
                detail = ""
                if op == "delete":
                    j.delete(session)
                    self.deleted.setdefault(session, t)
                elif op == "truncate":
                    branch = arg[0]
                    if arg[1] is None:
                        head = j.head(session, branch)
                        if head < 3:
                            self.life_pending.remove(job)
                            continue
                        arg[1] = self.rng.randint(2, head)
                    j.truncate_before(session, branch, arg[1])
                    detail = f"{branch} before {arg[1]}"
                elif op == "archive":
                    detail = "archived" if j.archive(session) else "already archived"
                else:
                    policy = self.cfg.workdir / "retention.toml"
                    policy.write_text(f'[[policy]]\nprefix = "{session}"\n'
                                      f"max_count = {arg}\n")
                    actions = [a for a in retention.plan(j, self.root,
                                                         retention.load_policies(policy),
                                                         time.time())
                               if a.session == session]  # -1 must not take -10 along
                    for action in actions:
                        retention.apply(j, action)
                    detail = f"max_count {arg}: " + ("; ".join(map(str, actions)) or "nothing")
            except SessionDeleted:
                pass  # deleted meanwhile: nothing left to do
            except InvalidInput as exc:
                if "no session" in str(exc) or (op == "truncate" and "is archived" in str(exc)):
                    # Drawn before any writer reached this session, or archived (by an archive
                    # queued for a retry, say) and not reopened by an append yet: nothing to
                    # act on (the one-line refusal an operator gets).
                    self.notes.append(f"lifecycle {op} {session}: {exc}")
                else:
                    self.crashes.append(f"lifecycle {op} {session} refused: {exc}")
                self.life_pending.remove(job)
                continue
            except (RedisUnavailable, LeaseTimeout, StorageError, AppendOutcomeUnknown,
                    OSError) as exc:
                self.notes.append(f"lifecycle {op} {session} will be retried: "
                                  f"{type(exc).__name__}: {str(exc)[:120]}")
                if isinstance(exc, RedisUnavailable) and self.life_j is not None:
                    with contextlib.suppress(Exception):
                        self.life_j.close()
                    self.life_j = None
                continue
            except Exception as exc:
                self.crashes.append(f"lifecycle {op} {session} raised {type(exc).__name__}: "
                                    f"{exc} (not one of the errors a caller is told to expect)")
            self.life_pending.remove(job)
            self.life_done[op] += 1
            # A delete has no "next append" in its session: no recovery time for it.
            self.record(Fault(f"lifecycle:{op}", t, [] if op == "delete" else [session],
                              end=now(), detail=f"{session} {detail}".strip()))
        return not self.life_pending

    def fill_disk(self) -> None:
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        slack = self.rng.randint(0, 3) * st.f_frsize
        self.filler = self.root / "filler.bin"
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, max(free - slack, st.f_frsize))
        finally:
            os.close(fd)
        hold = self.rng.uniform(0.3, 1.5)
        self.filler_until = now() + hold
        self.record(Fault("disk-full", now(), list(self.sessions),
                                 detail=f"{free // 1024} KiB filled for {hold:.2f}s"))

    def tend_disk(self, force: bool = False) -> None:
        if self.filler is not None and (force or now() >= self.filler_until):
            self.filler.unlink(missing_ok=True)
            self.filler = None
            for f in reversed(self.faults):
                if f.kind == "disk-full":
                    f.end = now()
                    break

    # ----- shutdown ----------------------------------------------------------------------

    def stop_writers(self, timeout: float) -> list[str]:
        """SIGTERM every writer: each finishes (resolves) its batch and exits."""
        for p in self.live("writer"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.popen.pid, signal.SIGTERM)
        deadline = now() + timeout
        while self.live("writer") and now() < deadline:
            for p in self.live("writer"):
                if _stopped(p.popen.pid):
                    # Hooks may stop it again: its lease must expire first, then wake it.
                    if p.stopped_since is None:
                        p.stopped_since = now()
                    elif now() - p.stopped_since >= self.stop_hold_s:
                        os.kill(p.popen.pid, signal.SIGCONT)
                        p.stopped_since = None
            time.sleep(0.02)
        self.reap_writers()
        hung = []
        for p in self.live("writer"):
            hung.append(p.name)
            p.killed_by_us = True
            p.popen.kill()
        return hung

    def kill_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=10)
            if p.errfile is not None:
                p.errfile.close()
                p.errfile = None


def _stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


# ============================================================================================
# Checking
# ============================================================================================


@dataclass
class Findings:
    rows: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)


@dataclass
class Removed:
    """What the life-cycle operations removed on purpose, from the sessions' marks."""

    deleted: set[str] = field(default_factory=set)
    floors: dict[tuple[str, str], int] = field(default_factory=dict)  # lowest stored sequence
    archived: set[str] = field(default_factory=set)

    def floor(self, session: str, branch: str) -> int:
        return self.floors.get((session, branch), 1)

    @classmethod
    def load(cls, root: Path, sessions: list[str]) -> Removed:
        from journal._storage import tombstone

        found = cls()
        for session in sessions:
            marks = tombstone.load(root, session)
            if marks.deleted_at is not None:
                found.deleted.add(session)
            if marks.archived is not None:
                found.archived.add(session)
            for branch, floor in marks.floors.items():
                found.floors[(session, branch)] = floor
        return found


# Per (session, branch): the event ids by sequence, None below a truncation point.
History = dict[tuple[str, str], list[str | None]]


def committed_from_files(root: Path, sessions: list[str], f: Findings,
                         removed: Removed) -> History:
    """Every (session, branch) -> event ids by sequence, straight from the files (or the
    archive of an archived session), with the corruption, gap and duplicate checks on the
    raw lines. A deleted session must have left no file and no archive."""
    from journal._storage import archive, tombstone

    history: History = {}
    gaps = dups = corrupt = 0
    seen: Counter[str] = Counter()
    for session in sessions:
        path = root / "events" / f"{session}.jsonl"
        zst = archive.archive_path(root, session)
        if session in removed.deleted:
            if path.exists() or zst.exists():
                f.fail(f"{session} is deleted but its file or archive is still there")
            continue
        seqs: dict[str, list[int]] = defaultdict(list)
        ids: dict[str, list[str]] = defaultdict(list)
        if path.exists():
            data = path.read_bytes()
        elif session in removed.archived:
            marks = tombstone.load(root, session)
            assert marks.archived is not None
            data = archive.read(zst, marks.archived.sha256)
        else:
            data = b""
        if data and not data.endswith(b"\n"):
            corrupt += 1
            f.fail(f"{path}: ends with a torn line after the final append")
        for lineno, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                corrupt += 1
                f.fail(f"{path}:{lineno}: not JSON")
                continue
            seqs[rec["branch_id"]].append(rec["sequence"])
            ids[rec["branch_id"]].append(rec["event_id"])
            seen[rec["event_id"]] += 1
        for branch in sorted(set(seqs) | set(BRANCHES)):
            got = seqs.get(branch, [])
            floor = removed.floor(session, branch)  # a compacted branch starts there
            if got != list(range(floor, floor + len(got))):
                bad = sum(1 for i, q in enumerate(got, floor) if q != i) or 1
                gaps += bad
                f.fail(f"{session}/{branch}: not contiguous from {floor} ({bad} out of place)")
            history[(session, branch)] = [None] * (floor - 1) + list(ids.get(branch, []))
    for event_id, n in seen.items():
        if n > 1:
            dups += n - 1
            f.fail(f"event {event_id} is stored {n} times")
    f.rows["corrupt lines"] = corrupt
    f.rows["duplicated"] = dups
    f.rows["gaps"] = gaps
    return history


def check_api_view(j: Journal, history: History, f: Findings, what: str,
                   removed: Removed) -> None:
    for session in sorted(removed.deleted):
        try:
            j.head(session)
            f.fail(f"{what}: deleted {session} still answers head")
        except SessionDeleted:
            pass
        except Exception as exc:
            f.fail(f"{what}: deleted {session}: {type(exc).__name__}: {exc}")
    for (session, branch), ids in history.items():
        floor = removed.floor(session, branch)
        got: list[str | None] = [None] * (floor - 1)
        try:
            head = j.head(session, branch)
            if floor > 1 and head >= floor - 1:
                try:  # below the point: told where it starts, never given less
                    j.read(session, branch, floor - 1, 1)
                    f.fail(f"{what}: {session}/{branch} read below its truncation point "
                           f"{floor} did not raise HistoryTruncated")
                except HistoryTruncated as exc:
                    if exc.first != floor:
                        f.fail(f"{what}: {session}/{branch} HistoryTruncated.first "
                               f"{exc.first}, the marks say {floor}")
            while len(got) < len(ids) + 1:
                page = j.read(session, branch, len(got) + 1, 5000)
                if not page:
                    break
                got += [r.event_id for r in page]
        except Exception as exc:
            f.fail(f"{what}: {session}/{branch}: {type(exc).__name__}: {exc}")
            continue
        if head != len(ids) or got != ids:
            f.fail(f"{what}: {session}/{branch} head {head}, read {len(got)} events, "
                   f"file has {len(ids)}; equal={got == ids}")


def check(run: Run, f: Findings, final_acks: list[dict[str, Any]], history: History,
          removed: Removed) -> None:
    position: dict[str, tuple[str, str, int]] = {}
    for (session, branch), stored in history.items():
        for i, event_id in enumerate(stored, 1):
            if event_id is not None:
                position[event_id] = (session, branch, i)

    def on_purpose(session: str, branch: str, sequence: int) -> str | None:
        """Why an event at this place may be missing: removed by a life-cycle operation."""
        if session in removed.deleted:
            return "deleted"
        if sequence < removed.floor(session, branch):
            return "truncated"
        return None

    gone: Counter[str] = Counter()  # acknowledged events removed on purpose, by why
    writer_logs = {p.name: read_log(p.log) for p in run.procs if p.role == "writer"}
    acked = 0
    lost = misplaced = 0
    tries = 0
    torn_batches = 0
    errors: Counter[str] = Counter()
    unknown_batches = 0
    other_batches = 0
    resolved: Counter[str] = Counter()
    wrong_resolution = 0
    abandoned = 0
    abandoned_present = 0
    conflicts = 0
    bad_acks = 0
    unexpected: Counter[str] = Counter()
    unexpected_example: dict[str, str] = {}
    for name, items in writer_logs.items():
        open_errors: dict[tuple[str, ...], dict[str, Any]] = {}
        tried: dict[tuple[str, ...], dict[str, Any]] = {}
        for item in items:
            kind = item.get("a")
            if kind == "try":
                tries += 1
                tried[tuple(item["ids"])] = item
                present = [i for i in item["ids"] if i in position]
                missing_on_purpose = all(
                    on_purpose(item["s"], item["b"], item["q"] + k)
                    for k, i in enumerate(item["ids"]) if i not in position)
                if present and len(present) != len(item["ids"]) and not missing_on_purpose:
                    torn_batches += 1
                    f.fail(f"{name}: batch {item['s']}/{item['b']} from {item['q']} is torn: "
                           f"{len(present)} of {len(item['ids'])} events committed")
            elif kind == "conflict":
                conflicts += 1
            elif kind in ("error", "head_error") and (
                    item.get("unexpected") or kind == "head_error"):
                where = "append" if kind == "error" else "head"
                unexpected[f"{where}: {item['err']}"] += 1
                unexpected_example.setdefault(f"{where}: {item['err']}", item.get("msg", ""))
            if kind == "error":
                errors[item["err"]] += 1
                key = tuple(item["ids"])
                if key not in open_errors:
                    if item["err"] == "AppendOutcomeUnknown":
                        unknown_batches += 1
                    else:
                        other_batches += 1
                    open_errors[key] = item
            elif kind == "resolved":
                key = tuple(item["ids"])
                open_errors.pop(key, None)
                resolved[item["outcome"]] += 1
                there = [i in position for i in item["ids"]]
                t = tried.get(key, {})
                whys = [on_purpose(t["s"], t["b"], t["q"] + k) if t else None
                        for k in range(len(there))]
                if item["outcome"] == "deleted":
                    ok = not any(there) and t.get("s") in removed.deleted
                elif item["outcome"] == "committed":
                    ok = all(a or b for a, b in zip(there, whys, strict=True))
                else:
                    ok = not any(there)
                if not ok:
                    wrong_resolution += 1
                    f.fail(f"{name}: resolution {item['outcome']} of {item['ids'][0]}.. "
                           f"disagrees with the file ({sum(there)}/{len(there)} there)")
            elif kind == "bad_ack":
                bad_acks += 1
                f.fail(f"{name}: the journal acknowledged other records: {item}")
            elif kind == "ack":
                for k, event_id in enumerate(item["ids"]):
                    acked += 1
                    where = position.get(event_id)
                    why = on_purpose(item["s"], item["b"], item["q"] + k)
                    if where is None and why is not None:
                        gone[why] += 1
                    elif where is None:
                        lost += 1
                        f.fail(f"{name}: acknowledged event {event_id} "
                               f"({item['s']}/{item['b']} {item['q'] + k}) is lost")
                    elif where != (item["s"], item["b"], item["q"] + k):
                        misplaced += 1
                        f.fail(f"{name}: acknowledged event {event_id} at "
                               f"{item['s']}/{item['b']} {item['q'] + k} sits at {where}")
        for ids, item in open_errors.items():
            # The writer died (SIGKILL) while it was still retrying: nobody resolves it
            # but the file. It must be there once (checked above) or not at all.
            abandoned += 1
            if any(i in position for i in ids):
                abandoned_present += 1
            _ = item
    for what, n in sorted(unexpected.items()):
        f.fail(f"{what} raised {n} times, not one of the errors a caller is told to expect "
               f"(e.g. {unexpected_example[what]!r})")
    for item in final_acks:
        acked += 1
        if position.get(item["ids"][0]) is None:
            lost += 1
            f.fail(f"the final append {item['ids'][0]} is lost")
    f.rows["append attempts (batches)"] = tries
    f.rows["sequence conflicts (contention)"] = conflicts
    f.rows["events acknowledged"] = acked
    f.rows["acknowledged, then deleted on purpose (delete)"] = gone["deleted"]
    f.rows["acknowledged, then removed on purpose (truncate, gc)"] = gone["truncated"]
    f.rows["lost"] = lost
    f.rows["misplaced"] = misplaced
    f.rows["torn batches"] = torn_batches
    f.rows["retried errors by type"] = ", ".join(
        f"{k} {v}" for k, v in sorted(errors.items())) or "none"
    f.rows["unknown outcomes (AppendOutcomeUnknown, batches)"] = unknown_batches
    f.rows["other errors retried with the same records (batches)"] = other_batches
    f.rows["resolved by retry: committed / not committed / deleted"] = (
        f"{resolved['committed']} / {resolved['not_committed']} / {resolved['deleted']}")
    f.rows["resolutions that disagree with the file"] = wrong_resolution
    f.rows["unresolved (writer killed while retrying): committed / not"] = (
        f"{abandoned_present} / {abandoned - abandoned_present}")
    f.rows["unexpected exceptions from the journal"] = sum(unexpected.values())
    if bad_acks:
        f.rows["wrong acknowledgements"] = bad_acks


def _acked_positions(run: Run) -> dict[tuple[str, str, int], str]:
    """(session, branch, sequence) -> event id of every acknowledged event."""
    acked: dict[tuple[str, str, int], str] = {}
    for p in run.procs:
        if p.role == "writer":
            for item in read_log(p.log):
                if item.get("a") == "ack":
                    for k, event_id in enumerate(item["ids"]):
                        acked[(item["s"], item["b"], item["q"] + k)] = event_id
    return acked


def _removed_stream_problem(have: list[tuple[int, str]], after: int, ids: list[str | None],
                            floor: int, deleted: bool,
                            acked: dict[tuple[str, str, int], str],
                            key: tuple[str, str]) -> str:
    """What is wrong with a subscriber's stream of a branch that lost events on purpose
    (deleted session, or truncated branch), or "" when nothing is. Events still stored must
    be exactly the file's; removed ones must be the acknowledged ones where known; the only
    jumps allowed skip removed history (they land at or below the truncation point)."""
    prev = after
    for q, event_id in have:
        if q != prev + 1 and q > floor:  # (a deleted session's marks keep its floors)
            return f"jumps from {prev} to {q}"
        if q <= prev:
            return f"goes back from {prev} to {q}"
        stored = ids[q - 1] if q <= len(ids) else None
        if stored is not None and stored != event_id:
            return f"sequence {q} is {event_id}, the file has {stored}"
        known = acked.get((key[0], key[1], q))
        if stored is None and known is not None and known != event_id:
            return f"sequence {q} is {event_id}, the acknowledged event was {known}"
        prev = q
    if not deleted and len(ids) > max(after, floor - 1) and prev != len(ids):
        return f"ends at {prev}, the branch at {len(ids)}"
    return ""


def check_subscribers(run: Run, history: History, f: Findings, removed: Removed) -> None:
    received = 0
    mismatched = 0
    streams = 0
    crashes: Counter[str] = Counter()
    acked = _acked_positions(run)
    for p in run.procs:
        if p.role != "subscriber":
            continue
        items = read_log(p.log)
        starts: dict[tuple[str, str], int] = {}
        got: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        firehose = False
        for item in items:
            if item.get("a") == "start":
                starts[(item["s"], item["b"])] = item["after"]
            elif item.get("a") == "start_all":
                firehose = True
            elif item.get("a") == "crash":
                crashes[f"{p.name}: {item.get('err', '')[:120]}"] += 1
            elif "q" in item:
                got[(item["s"], item["b"])].append((item["q"], item["id"]))
                received += 1
        keys = set(history) if firehose else set(starts)
        if firehose:  # the deleted sessions it followed before they were deleted
            keys |= {k for k in got if k[0] in removed.deleted}
        for key in sorted(keys):
            streams += 1
            after = 0 if firehose else starts[key]
            ids = history.get(key, [])
            have = got.get(key, [])
            floor = removed.floor(*key)
            if key[0] in removed.deleted or floor > 1:
                problem = _removed_stream_problem(have, after, ids, floor,
                                                  key[0] in removed.deleted, acked, key)
                if problem:
                    mismatched += 1
                    why = "deleted" if key[0] in removed.deleted else f"truncated before {floor}"
                    f.fail(f"subscriber {p.name} {key[0]}/{key[1]} from {after} ({why}): "
                           f"{problem}")
                continue
            want = list(enumerate(ids[after:], after + 1))
            if have != want:
                mismatched += 1
                first_bad = next((i for i, (x, y) in enumerate(zip(have, want, strict=False))
                                  if x != y), min(len(have), len(want)))
                f.fail(f"subscriber {p.name} {key[0]}/{key[1]} from {after}: got {len(have)} "
                       f"events, committed {len(want)}; first difference at index {first_bad}"
                       f" (got {have[first_bad:first_bad + 2]}, "
                       f"want {want[first_bad:first_bad + 2]})")
        for key in set(got) - keys:
            mismatched += 1
            f.fail(f"subscriber {p.name} received {key} it did not follow")
    for what, n in sorted(crashes.items()):
        f.fail(f"subscription raised {n}x (then resumed): {what}")
    f.rows["subscription failures (raised to the consumer)"] = sum(crashes.values())
    f.rows["subscriber streams checked"] = streams
    f.rows["events received by subscribers"] = received
    f.rows["subscriber streams that differ from the journal"] = mismatched


def recovery_times(run: Run, final_acks: list[dict[str, Any]]) -> dict[str, float]:
    """Per fault kind, the longest time from a fault (or the end of a lasting one) to the
    next acknowledged append in each session it may have delayed."""
    acks: dict[str, list[float]] = defaultdict(list)
    for p in run.procs:
        if p.role == "writer":
            for item in read_log(p.log):
                if item.get("a") == "ack":
                    acks[item["s"]].append(item["t"])
    for item in final_acks:
        acks[item["s"]].append(item["t"])
    for times in acks.values():
        times.sort()
    import bisect

    worst: dict[str, float] = {}
    for fault in run.faults:
        if not fault.sessions:
            continue
        start = fault.end if fault.end is not None else fault.t
        longest = 0.0
        for session in fault.sessions:
            if session in run.deleted:
                continue  # no next append in a session deleted on purpose
            times = acks.get(session, [])
            i = bisect.bisect_right(times, start)
            longest = max(longest, times[i] - start) if i < len(times) else math.inf
        kind = fault.kind.split(":")[0]
        worst[kind] = max(worst.get(kind, 0.0), longest)
    return worst


# ============================================================================================
# Main
# ============================================================================================


def try_mount_tmpfs(path: Path, size_mb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755",
                               "tmpfs", str(path)], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                       check=False)


def parse_args(argv: list[str]) -> Config:
    kinds = ["kill", "window-kill", "zombie", "redis", "pubsub", "enospc", "slow-fsync",
             "lifecycle"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None, help="seconds (default 300)")
    ap.add_argument("--quick", action="store_true", help="~20 s with small settings")
    ap.add_argument("--writers", type=int, default=None, help="writer processes (default 4)")
    ap.add_argument("--sessions", type=int, default=None, help="sessions (default 2)")
    ap.add_argument("--lifecycle-sessions", type=int, default=None,
                    help="more sessions, chaos-life-N, that the lifecycle faults act on "
                         "(default 2 with --quick, else 3; 0 with --no-lifecycle)")
    ap.add_argument("--subscribers", type=int, default=None,
                    help="subscriber processes (default 2; 0 for none)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lease-ms", type=int, default=400)
    ap.add_argument("--batch-max", type=int, default=3, help="largest append_batch (1: single)")
    ap.add_argument("--pace-ms", type=float, default=None,
                    help="mean pause between a writer's appends")
    ap.add_argument("--fault-interval", type=float, default=None,
                    help="mean seconds between injected faults")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="seconds subscribers get to reach the final heads")
    ap.add_argument("--tmpfs-mb", type=int, default=None, help="size of the data tmpfs")
    ap.add_argument("--windows", default=",".join(WINDOWS),
                    help="protocol windows for kill@P (comma-separated)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where logs and data go (default: a new temp dir)")
    ap.add_argument("--report", type=Path, default=None, help="write the report (markdown)")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (always on failure)")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the working tree's journal/ instead of a copy taken at start")
    for kind in kinds:
        ap.add_argument(f"--no-{kind}", action="store_true", help=f"do not inject {kind}")
    a = ap.parse_args(argv)
    quick = a.quick
    cfg = Config(
        duration=a.duration if a.duration is not None else (15.0 if quick else 300.0),
        writers=a.writers if a.writers is not None else (3 if quick else 4),
        sessions=a.sessions if a.sessions is not None else 2,
        subscribers=a.subscribers if a.subscribers is not None else 2,
        seed=a.seed if a.seed is not None else random.randrange(2**31),
        lease_ms=a.lease_ms,
        batch_max=max(1, a.batch_max),
        pace_ms=a.pace_ms if a.pace_ms is not None else (3.0 if quick else 5.0),
        fault_interval=a.fault_interval or (0.5 if quick else 1.5),
        grace=a.grace,
        enabled={k for k in kinds if not getattr(a, f"no_{k.replace('-', '_')}")},
        workdir=a.workdir or Path(tempfile.mkdtemp(prefix="journal-chaos-")),
        tmpfs_mb=a.tmpfs_mb or (64 if quick else 512),
        quick=quick,
        windows=tuple(w for w in a.windows.split(",") if w),
    )
    unknown = set(cfg.windows) - set(WINDOWS)
    if unknown or not cfg.windows:
        ap.error(f"--windows takes some of {','.join(WINDOWS)}")
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    cfg._report = a.report  # type: ignore[attr-defined]
    cfg._json = a.json  # type: ignore[attr-defined]
    cfg._keep = a.keep  # type: ignore[attr-defined]
    cfg._snapshot = not a.no_snapshot  # type: ignore[attr-defined]
    life = a.lifecycle_sessions if a.lifecycle_sessions is not None else (2 if quick else 3)
    cfg._life = life if "lifecycle" in cfg.enabled else 0  # type: ignore[attr-defined]
    return cfg


def orchestrate(cfg: Config) -> int:
    from journal.testing import RedisServer

    t0 = now()
    rng = random.Random(cfg.seed)
    (cfg.workdir / "logs").mkdir(exist_ok=True)
    root = cfg.workdir / "data"
    tmpfs = "enospc" in cfg.enabled and try_mount_tmpfs(root, cfg.tmpfs_mb)
    root.mkdir(parents=True, exist_ok=True)
    server = RedisServer(dir=cfg.workdir / "redis")
    server.start()
    life = [f"chaos-life-{i}" for i in range(cfg._life)]  # type: ignore[attr-defined]
    sessions = [f"chaos-{i}" for i in range(cfg.sessions)] + life
    run = Run(cfg, root, server.url, rng, server, sessions, tmpfs=tmpfs, life=life)
    run.stop_hold_s = cfg.lease_ms / 1000 * 1.5 + 0.1
    run.fault_log = Log(cfg.workdir / "logs" / "faults.jsonl")
    f = Findings()
    mode = "tmpfs filled with fallocate" if tmpfs else "fault hook enospc@P (no tmpfs)"
    print(f"chaos: {cfg.duration:g}s, {cfg.writers} writers, {cfg.sessions} sessions, "
          f"{cfg.subscribers} subscribers, seed {cfg.seed}, faults "
          f"{','.join(sorted(cfg.enabled)) or 'none'}; disk full: {mode}; workdir "
          f"{cfg.workdir}", flush=True)
    final_acks: list[dict[str, Any]] = []
    status = 1
    try:
        if cfg.subscribers:
            try:
                import journal._io.subscriptions  # noqa: F401
            except ImportError as exc:
                run.notes.append(f"subscriptions not importable ({exc}): no subscribers")
                cfg.subscribers = 0
        sub_starts = sorted([0.0] + [rng.uniform(0, cfg.duration / 3)
                                     for _ in range(max(cfg.subscribers - 1, 0))])
        sub_starts = sub_starts[:cfg.subscribers]
        for _ in range(cfg.writers):
            run.spawn_writer()
        start = now()
        end = start + cfg.duration
        next_fault = start + rng.expovariate(1 / cfg.fault_interval)
        # Each life-cycle operation runs at least once, at a fixed point of the run, besides
        # the ones drawn among the faults.
        life_schedule = [(start + cfg.duration * frac, op) for frac, op in (
            (0.25, "truncate"), (0.4, "archive"), (0.55, "gc"), (0.7, "delete"))
            if "lifecycle" in cfg.enabled and run.life]
        next_progress = start + 10
        subs_started = 0
        while now() < end:
            t = now()
            while subs_started < len(sub_starts) and t - start >= sub_starts[subs_started]:
                run.spawn_subscriber(subs_started)
                subs_started += 1
            run.reap_writers()
            while len(run.live("writer")) < cfg.writers:
                run.spawn_writer()
            run.tend_stopped()
            run.tend_disk()
            if t >= next_fault:
                run.inject()
                next_fault = now() + rng.expovariate(1 / cfg.fault_interval)
            while life_schedule and t >= life_schedule[0][0]:
                run.lifecycle(life_schedule.pop(0)[1])
            if t >= next_progress:
                next_progress += 10
                print(f"  t={t - start:5.0f}s  writers spawned {run.spawned['writer']}, "
                      f"faults {len(run.faults)}", flush=True)
            time.sleep(0.02)
        run.tend_disk(force=True)
        while subs_started < len(sub_starts):  # a run too short for its schedule
            run.spawn_subscriber(subs_started)
            subs_started += 1
        hung = run.stop_writers(timeout=max(30.0, cfg.lease_ms / 1000 * 20))
        if hung:
            f.fail(f"writers did not finish their last batch after SIGTERM: {hung}")
        # Life-cycle operations that failed during the faults: a retry finishes each.
        retry_until = now() + 30
        while not run.run_lifecycle() and now() < retry_until:
            time.sleep(0.5)
        if run.life_pending:
            f.fail(f"lifecycle operations not finished after 30 s of retries: "
                   f"{run.life_pending}")
        if run.life_j is not None:
            run.life_j.close()
        for p in run.procs:
            if p.role == "subscriber" and p.popen.poll() is not None:
                f.fail(f"subscriber {p.name} exited early with status {p.popen.returncode}")

        # The journal still takes appends after every fault, on every (session, branch).
        j = Journal(root, server.url, lease_ms=cfg.lease_ms, socket_timeout_s=5)
        j.open()
        appendable = True
        for session in sessions:
            if session in run.deleted:  # deleted stays deleted
                try:
                    j.append(EventRecord.new(session, "main", 1, {"type": "UserMessage",
                                                                   "content": "late"}))
                    f.fail(f"final append to deleted {session} was accepted")
                except SessionDeleted:
                    pass
                except Exception as exc:
                    f.fail(f"final append to deleted {session}: {type(exc).__name__}: {exc}, "
                           "not SessionDeleted")
                continue
            for branch in BRANCHES:
                for _ in range(20):
                    try:
                        rec = EventRecord.new(session, branch, j.head(session, branch) + 1,
                                              {"type": "UserMessage", "content": "final"})
                        j.append(rec)
                        final_acks.append({"s": session, "b": branch, "ids": [rec.event_id],
                                           "t": now()})
                        break
                    except SequenceConflict:
                        continue
                    except Exception as exc:
                        f.fail(f"final append to {session}/{branch}: {type(exc).__name__}: "
                               f"{exc}")
                        appendable = False
                        break
        f.rows["appendable after all faults"] = "yes" if appendable else "NO"

        # Subscribers get a grace period to reach the final heads, then are stopped.
        removed = Removed.load(root, sessions)
        history = committed_from_files(root, sessions, f, removed)
        deadline = now() + cfg.grace
        while now() < deadline and not _subscribers_caught_up(run, history):
            time.sleep(0.2)
        for p in run.live("subscriber"):
            p.popen.send_signal(signal.SIGTERM)
        for p in run.procs:
            if p.role == "subscriber":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=5)
        run.kill_all()

        for crash in run.crashes:
            f.fail(crash)
        check(run, f, final_acks, history, removed)
        check_subscribers(run, history, f, removed)
        check_api_view(j, history, f, "read with Redis state", removed)
        server.restart()  # Redis forgets everything: the rebuild path must agree
        j.close()
        j = Journal(root, server.url, lease_ms=cfg.lease_ms, socket_timeout_s=5).open()
        check_api_view(j, history, f, "read after Redis lost everything", removed)
        f.rows["lifecycle operations done"] = ", ".join(
            f"{op} {n}" for op, n in sorted(run.life_done.items())) or "none"
        f.rows["sessions deleted / archived at the end / branches truncated"] = (
            f"{len(removed.deleted)} / {len(removed.archived)} / {len(removed.floors)}")
        j.close()
        worst = recovery_times(run, final_acks)
        report = build_report(run, f, worst, history, now() - t0, mode)
        print(report, flush=True)
        if cfg._report:  # type: ignore[attr-defined]
            cfg._report.write_text(report)  # type: ignore[attr-defined]
        if cfg._json:  # type: ignore[attr-defined]
            cfg._json.write_text(json.dumps(  # type: ignore[attr-defined]
                {"rows": f.rows, "failures": f.failures, "faults": _fault_counts(run),
                 "recovery_s": worst, "seed": cfg.seed, "notes": run.notes},
                indent=2, default=str))
        status = 1 if f.failures else 0
    finally:
        run.tend_disk(force=True)
        run.kill_all()
        server.close()
        if status != 0 or cfg._keep:  # type: ignore[attr-defined]
            if tmpfs:
                with contextlib.suppress(OSError):
                    shutil.copytree(root, cfg.workdir / "data-copy")
            print(f"chaos: workdir kept at {cfg.workdir}", flush=True)
        if tmpfs:
            unmount(root)
        if status == 0 and not cfg._keep:  # type: ignore[attr-defined]
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    return status


def _subscribers_caught_up(run: Run, history: History) -> bool:
    for p in run.procs:
        if p.role != "subscriber" or p.popen.poll() is not None:
            continue
        last: dict[tuple[str, str], int] = {}
        follows: set[tuple[str, str]] = set()
        for item in read_log(p.log):
            if item.get("a") == "start":
                follows.add((item["s"], item["b"]))
            elif item.get("a") == "start_all":
                follows |= set(history)
            elif "q" in item:
                last[(item["s"], item["b"])] = item["q"]
        for key in follows:
            if last.get(key, 0) < len(history.get(key, [])):
                if (not history.get(key)) and key not in last:
                    continue
                return False
    return True


def _fault_counts(run: Run) -> dict[str, int]:
    counts: Counter[str] = Counter(f.kind for f in run.faults)
    slow = sum(1 for p in run.procs if "fsync=sleep" in p.faults)
    hook_enospc = sum(1 for p in run.procs if "enospc" in p.faults)
    if slow:
        counts["slow-fsync (writers with fsync=sleep@0.2:0.05)"] = slow
    if hook_enospc:
        counts["enospc hook (writers with enospc@P)"] = hook_enospc
    return dict(sorted(counts.items()))


def _violation_kind(message: str) -> str:
    for marker, kind in (("is torn", "torn batch"), ("disagrees with the file",
                         "resolution that disagrees with the file"),
                         ("is lost", "lost"), ("stored", "duplicated"),
                         ("not contiguous", "gap"), ("subscriber", "subscriber"),
                         ("subscription", "subscription error"),
                         ("not one of the errors", "unexpected exception"),
                         ("exited with status", "writer crashed"), ("read", "read view"),
                         ("final append", "not appendable")):
        if marker in message:
            return kind
    return "other"


def build_report(run: Run, f: Findings, worst: dict[str, float],
                 history: History, wall: float, mode: str) -> str:
    cfg = run.cfg
    counts = _fault_counts(run)
    enospc_seen = 0
    for p in run.procs:
        if p.role == "writer":
            enospc_seen += sum(1 for i in read_log(p.log)
                               if i.get("a") == "error" and "Errno 28" in i.get("msg", ""))
    lines = [
        f"### Chaos run: {cfg.duration:g} s, seed {cfg.seed}",
        "",
        f"{cfg.writers} writers on {cfg.sessions} + {len(run.life)} life-cycle sessions x "
        f"{len(BRANCHES)} branches, "
        f"{cfg.subscribers} subscribers, lease {cfg.lease_ms} ms, batches of 1..{cfg.batch_max}"
        f"; disk full via {mode}; wall time {wall:.0f} s; code {code_version()}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| trials (faults injected, all kinds) | {len(run.faults)} |",
        f"| writer processes spawned | {run.spawned['writer']} |",
    ]
    for kind, n in counts.items():
        lines.append(f"| fault: {kind} | {n} |")
    lines.append(f"| ENOSPC errors seen by writers | {enospc_seen} |")
    for key, value in f.rows.items():
        lines.append(f"| {key} | {value} |")
    total = sum(1 for ids in history.values() for i in ids if i is not None)
    lines.append(f"| events in the journal at the end | {total} |")
    for kind in sorted(worst):
        value = worst[kind]
        shown = "never" if math.isinf(value) else f"{value:.2f} s"
        lines.append(f"| longest recovery after {kind} (to next append in its session) "
                     f"| {shown} |")
    verdict = "PASS: every invariant holds" if not f.failures else (
        f"FAIL: {len(f.failures)} invariant violations")
    lines.append(f"| **result** | **{verdict}** |")
    if f.failures:
        lines += ["", "Violations, grouped (a few examples of each):", ""]
        groups: dict[str, list[str]] = defaultdict(list)
        for msg in f.failures:
            groups[_violation_kind(msg)].append(msg)
        for kind, msgs in groups.items():
            lines.append(f"- **{kind}** ({len(msgs)})")
            lines += [f"  - {m}" for m in msgs[:3]]
    if run.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in run.notes[:20]]
    return "\n".join(lines) + "\n"


def code_version() -> str:
    """The commit the journal code came from (and whether the tree had local changes)."""
    if os.environ.get("JOURNAL_CHAOS_VERSION"):
        return os.environ["JOURNAL_CHAOS_VERSION"]
    repo = REPO
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "journal"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes in journal/" if dirty.stdout.strip()
                                  else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_writer":
        return writer_main(argv[1:])
    if argv and argv[0] == "_subscriber":
        return subscriber_main(argv[1:])
    cfg = parse_args(argv)
    if cfg._snapshot and not os.environ.get("JOURNAL_CHAOS_CODE"):  # type: ignore[attr-defined]
        # Freeze the code under test, then start again on the copy.
        code = cfg.workdir / "code"
        shutil.copytree(REPO / "journal", code / "journal",
                        ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ, JOURNAL_CHAOS_CODE=str(code),
                   JOURNAL_CHAOS_VERSION=code_version() + " (snapshot taken at start)")
        env.pop("JOURNAL_FAULTS", None)
        args = [sys.executable, str(Path(__file__).resolve()), *argv]
        if "--workdir" not in argv:
            args += ["--workdir", str(cfg.workdir)]
        sys.stdout.flush()
        os.execve(sys.executable, args, env)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return orchestrate(cfg)
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
