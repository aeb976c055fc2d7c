"""The worker-group protocol, written once, without I/O.

A :class:`Worker` is one member of a group. Its methods are generators of the journal's own
operations (:mod:`journal._core.ops`): the groups' Lua scripts (:func:`script`), file work
and sleeps, and the journal's read and branches protocols, run inline with ``yield from``. A
Redis failure comes back as :class:`~journal.errors.RedisUnavailable` thrown into the
generator. The journal's driver runs them (``journal._run``), so the shells (``shell.py``)
contain only the awaits.

The life of a session in a worker:

1. **Discover** (every ``scan_s``, while the worker holds less than its fair share): list the
   session files, and ask ``claim.lua`` for each session that no one holds. The script
   compares the journal's heads with the group's checkpoints in the same slot, and claims
   only a session with work. An empty cache is seeded from the checkpoint file first, and an
   empty journal state is rebuilt from the event file (``j.branches``).
2. **Claim**: the script hands out the next fence of the session, and the worker writes that
   fence to the checkpoint file before its first delivery, so fences only grow, even across
   a Redis restart.
3. **Deliver** one event at a time per session, in order per branch, read from the file in
   pages. The start of a run of deliveries is marked in Redis (``step.lua``: the attempt
   number survives a crash); the mark rides on the commit before it.
4. **Ack** is local while the claim is surely ours (our clock is well inside ``claim_ms``
   since Redis last extended it). The acks are **committed** by ``step.lua``, which checks
   the claim token and moves the checkpoint, atomically: every ``commit_every`` acks or
   ``commit_s`` seconds of a session, when it catches up with the head or the end of a page,
   before a nack, an extend or a release, and at once when the claim's time is nearly up
   (so a zombie's ack is refused). A commit marks the next event, and the holder may then
   deliver up to ``commit_every`` events before its next commit. A holder that dies inside
   that run makes the next holder go event by event over it (one commit per event), so an
   event that kills its workers still counts its attempts and is parked. The durable
   checkpoint file follows the commits at most ``flush_s`` later (and at every release).
5. **Release** at an event boundary when the worker holds more than its fair share
   (ceil(sessions / live workers)), or at close. A lost claim (expired, reset, Redis
   restarted) just drops the session: its next holder starts from the last checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from journal._core import scripts
from journal._core.ops import Blocking, Lua, Sleep
from journal._core.ops import Steps as _CoreSteps
from journal._core.ops import text as _text
from journal._groups.keys import SessionGroupKeys, registry_keys, session_group_keys
from journal._groups.store import Checkpoint, GroupStore
from journal._model.records import EventRecord
from journal._storage import tombstone
from journal.errors import InvalidInput, RedisUnavailable, SessionDeleted

Steps = _CoreSteps[Any]
Read = Callable[[str, str, int, int], _CoreSteps[list[EventRecord]]]
Branches = Callable[[str], _CoreSteps[dict[str, int]]]


def script(name: str, keys: list[str], args: Sequence[str | int]) -> Lua:
    """Run ``journal/_groups/lua/<name>.lua`` (the journal's driver knows these scripts)."""
    return Lua(scripts.group(name), keys, list(args))


Start = Literal["earliest", "latest"]


@dataclass(frozen=True, slots=True)
class ConsumeOptions:
    start: Start = "earliest"  # where a new group starts: every event, or only new ones
    claim_ms: int = 10_000  # a claim not extended for this long expires: redelivery window
    max_attempts: int = 5  # deliveries of one event before it is parked
    backoff_s: float = 0.5  # first nack delay (doubled per attempt, up to backoff_max_s)
    backoff_max_s: float = 30.0
    poll_s: float = 0.1  # an idle holder looks at its sessions' heads this often
    scan_s: float = 1.0  # discovery of unheld sessions with work, and reconciliation
    flush_s: float = 1.0  # the durable checkpoint file trails Redis by at most this
    page_size: int = 200  # events per file read
    commit_every: int = 100  # acks of a session committed together (1: every ack at once)
    commit_s: float = 0.05  # ... or after this long: a crash redelivers at most these
    on_poison: Literal["park", "halt"] = "park"  # after max_attempts: park it, or halt the session
    max_idle_s: float | None = None  # stop iterating after this long without a delivery

    @classmethod
    def parse(cls, options: dict[str, Any]) -> ConsumeOptions:
        unknown = set(options) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"unknown consume option(s): {', '.join(sorted(unknown))}")
        opts = cls(**options)
        if opts.start not in ("earliest", "latest"):
            raise InvalidInput(f"start must be 'earliest' or 'latest', got {opts.start!r}")
        if opts.on_poison not in ("park", "halt"):
            raise InvalidInput(f"on_poison must be 'park' or 'halt', got {opts.on_poison!r}")
        if (opts.claim_ms < 100 or opts.max_attempts < 1 or opts.page_size < 1
                or opts.commit_every < 1 or opts.commit_s < 0):
            raise InvalidInput("claim_ms must be >= 100, max_attempts, page_size and "
                               "commit_every >= 1, commit_s >= 0")
        return opts


@dataclass(slots=True)
class Delivery:
    """One event handed to a handler: its position, attempt and fencing token."""

    event: EventRecord
    attempt: int
    fence: int
    token: str
    replay: bool = False  # a parked event redelivered by `journal group replay-parked`

    @property
    def session_id(self) -> str:
        return self.event.session_id

    @property
    def branch_id(self) -> str:
        return self.event.branch_id

    @property
    def sequence(self) -> int:
        return self.event.sequence


@dataclass(slots=True)
class Held:
    """A session this worker holds."""

    keys: SessionGroupKeys
    token: str
    fence: int
    ckpt: dict[str, int]  # committed: Redis accepted these under our claim
    heads: dict[str, int] = field(default_factory=dict)
    buffer: dict[str, deque[EventRecord]] = field(default_factory=dict)
    inflight: bool = False
    acked: dict[str, int] = field(default_factory=dict)  # acked since the last commit
    pending: int = 0  # how many acks that is
    committed_at: float = 0.0
    mark: tuple[str, int, int] | None = None  # (branch, sequence, attempt) marked by a commit
    run: dict[str, int] = field(default_factory=dict)  # branch -> last sequence of the run
    cautious: dict[str, int] = field(default_factory=dict)  # branch -> commit each ack up to
    unmarked: tuple[str, int] | None = None  # the delivery in flight, when a run started it
    valid_until: float = 0.0  # our conservative view of the claim (monotonic clock)
    not_before: dict[str, float] = field(default_factory=dict)  # nack delays per branch
    polled: float = -math.inf
    dirty: bool = False
    flushed_at: float = 0.0
    replay_seen: str | None = None
    replays: deque[tuple[str, int]] = field(default_factory=deque)

    def done(self, branch: str) -> int:
        """The last handled sequence of a branch (acked, committed or not)."""
        return max(self.ckpt.get(branch, 0), self.acked.get(branch, 0))

    def has_work(self) -> bool:
        return bool(self.replays) or any(h > self.done(b) for b, h in self.heads.items())


def fair_share(sessions: int, workers: int) -> int:
    """How many sessions one worker may hold: the sessions split over the live workers."""
    return max(1, math.ceil(sessions / max(1, workers)))


def backoff(opts: ConsumeOptions, attempt: int) -> float:
    return float(min(opts.backoff_max_s, opts.backoff_s * 2 ** max(0, attempt - 1)))


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def heads_of(state: dict[str, str]) -> dict[str, int]:
    return {f[2:]: int(v) for f, v in state.items() if f.startswith("h:")}


def checkpoints_of(fields: dict[str, str]) -> dict[str, int]:
    return {f[2:]: int(v) for f, v in fields.items() if f.startswith("c:")}


def _deleted(root: Path, sid: str) -> bool:
    """The session's tombstone is on disk (one failed ``open`` when there are no marks)."""
    return tombstone.load(root, sid).deleted_at is not None


class Worker:
    """One worker of a group: the whole protocol, fed results by a shell."""

    def __init__(
        self,
        *,
        group: str,
        worker: str,
        root: Path,
        prefix: str,
        list_sessions: Callable[[], list[str]],
        read: Read,
        branches: Branches,
        options: ConsumeOptions,
        max_id_length: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self.worker = worker
        self.prefix = prefix
        self.opts = options
        self.store = GroupStore(root, group, max_id_length)
        self.root = root
        self.registry = registry_keys(prefix, group)
        self.list_sessions = list_sessions
        self.read, self.branches = read, branches  # the journal's protocols, checked input
        self.clock = clock
        self.held: dict[str, Held] = {}
        self.order: deque[str] = deque()  # round-robin over held sessions
        self.workers = 1
        self.sessions_seen = 0
        self.next_heartbeat = -math.inf
        self.next_scan = -math.inf
        self.next_sweep = -math.inf
        # the sweep over held sessions (polls, commits, flushes) need not run per delivery
        self.sweep_s = min(options.poll_s, options.commit_s or options.poll_s,
                           options.flush_s) / 2
        self.last_delivery = clock()
        self.ready = False
        self.closed = False
        self.stats: dict[str, int] = {"claimed": 0, "released": 0, "lost": 0, "delivered": 0,
                                      "acked": 0, "refused": 0, "parked": 0, "halted": 0,
                                      "deleted": 0}

    # ----- the consumer loop --------------------------------------------------------------

    def next_delivery(self) -> Steps:
        """The next delivery, or None once ``max_idle_s`` passed without one."""
        if not self.ready:
            yield from self._create_group()
            self.ready = True
        failures = 0
        while not self.closed:
            try:
                yield from self._maintain()
                d = yield from self._pick()
                failures = 0
            except RedisUnavailable:
                failures += 1
                yield Sleep(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0))
                continue
            except SessionDeleted as exc:  # its events are gone: nothing more to deliver
                yield from self._drop_deleted(exc.session_id)
                continue
            now = self.clock()
            if d is not None:
                self.last_delivery = now
                self.stats["delivered"] += 1
                return d
            if self.opts.max_idle_s is not None and now - self.last_delivery > self.opts.max_idle_s:
                return None
            yield Sleep(self.opts.poll_s / 2)
        return None

    def _create_group(self) -> Steps:
        """A group starting at "latest" writes every existing session's heads as its first
        checkpoints (create-only, so racing first workers agree); sessions created later
        start at their first event."""
        if (yield Blocking(lambda: (self.store.dir / "group.json").exists())):
            return
        if self.opts.start == "latest":
            for sid in (yield Blocking(self.list_sessions)):
                heads: dict[str, int] = yield from self.branches(sid)
                first = Checkpoint(0, dict(heads), "start")
                yield Blocking(partial(self.store.write, sid, first, create_only=True))
        yield Blocking(self._write_group_marker)

    def _write_group_marker(self) -> None:
        import json

        self.store.dir.mkdir(parents=True, exist_ok=True)
        marker = self.store.dir / "group.json"
        tmp = marker.with_name(f".group.{self.worker}.tmp")
        tmp.write_text(json.dumps({"start": self.opts.start, "created": time.time()}))
        tmp.replace(marker)

    def _maintain(self) -> Steps:
        now = self.clock()
        if now >= self.next_heartbeat:
            self.workers = int((yield self._heartbeat()))
            self.next_heartbeat = now + self.opts.claim_ms / 3000
        yield from self._balance()
        if now >= self.next_sweep:
            self.next_sweep = now + self.sweep_s
            yield from self._sweep(now)
        if now >= self.next_scan:
            self.next_scan = now + self.opts.scan_s
            yield from self._discover()

    def _sweep(self, now: float) -> Steps:
        for sid in list(self.held):
            h = self.held.get(sid)
            if h is None or h.inflight:
                continue
            stale = h.pending and now - h.committed_at >= self.opts.commit_s
            if stale and (yield from self._commit(sid, h)) is None:
                continue
            idle = not any(h.buffer.get(b) for b in h.buffer)
            due = now - h.polled >= (self.opts.poll_s if idle else self.opts.claim_ms / 3000)
            if due:
                yield from self._poll(sid, h)
            if sid in self.held and h.dirty and now - h.flushed_at >= self.opts.flush_s:
                yield from self._flush(sid, h)

    def _heartbeat(self, leave: bool = False) -> Lua:
        r = self.registry
        ttl = self.opts.claim_ms
        return script("heartbeat", [r.workers, r.load],
                      [self.worker, ttl, len(self.held), "1" if leave else "0"])

    def share(self) -> int:
        return fair_share(self.sessions_seen, self.workers)

    def _balance(self) -> Steps:
        """Cooperative and incremental: above our fair share, give back sessions that are at
        an event boundary (nothing in flight), the ones with the least work first."""
        excess = len(self.held) - self.share()
        if excess <= 0:
            return
        candidates = sorted((s for s, h in self.held.items() if not h.inflight),
                            key=lambda s: self.held[s].has_work())
        for sid in candidates[:excess]:
            yield from self._release(sid)

    def _release(self, sid: str) -> Steps:
        """Commit, write the checkpoint down, and give the claim back (a deleted session's
        is only given back: see :meth:`_drop_deleted`)."""
        if (yield Blocking(partial(_deleted, self.root, sid))):
            # Deleted: it is no longer listed, so the balance gives it back first.
            yield from self._drop_deleted(sid)
            return
        h = self.held[sid]
        if h.pending and (yield from self._commit(sid, h)) is None:
            return  # the claim was gone: lost, not released
        del self.held[sid]
        self.order.remove(sid)
        yield from self._write_checkpoint(sid, h)
        yield script("release", [h.keys.claim], [h.token])
        self.stats["released"] += 1

    def _drop_deleted(self, sid: str) -> Steps:
        """The session was deleted (issue 14): stop delivering it and give its claim back.
        No checkpoint is written: there is nothing left to resume. (It is no longer listed,
        so no worker claims it again.)"""
        h = self.held.pop(sid, None)
        self.stats["deleted"] += 1
        if h is None:
            return  # it went while we tried to claim it
        self.order.remove(sid)
        yield script("release", [h.keys.claim], [h.token])

    def _lose(self, sid: str) -> Steps:
        """Our claim is gone. What Redis accepted under it is still progress: write it down
        (the file refuses it if a newer claim wrote already)."""
        h = self.held.pop(sid, None)
        if h is None:
            return
        self.order.remove(sid)
        if (yield Blocking(partial(_deleted, self.root, sid))):
            # The session was deleted meanwhile (a delete can outlast the claim): there is
            # nothing to resume, and no checkpoint file may bring its folder back.
            self.stats["deleted"] += 1
            return
        self.stats["lost"] += 1
        if h.dirty:
            yield from self._write_checkpoint(sid, h)

    def _write_checkpoint(self, sid: str, h: Held) -> Steps:
        ckpt = Checkpoint(h.fence, dict(h.ckpt), h.token)
        written = yield Blocking(lambda: self.store.write(sid, ckpt))
        h.dirty, h.flushed_at = False, self.clock()
        return written

    def _flush(self, sid: str, h: Held) -> Steps:
        if not (yield from self._write_checkpoint(sid, h)):
            yield from self._lose(sid)  # a newer claim wrote the file: ours is stale

    def _poll(self, sid: str, h: Held) -> Steps:
        h.polled = sent = self.clock()
        r = yield script("poll", [h.keys.group, h.keys.claim, h.keys.state],
                         [h.token, self.opts.claim_ms])
        if not int(r[0]):
            yield from self._lose(sid)
            return
        h.valid_until = sent + self.opts.claim_ms * 0.8 / 1000
        heads = heads_of(_pairs(r[1]))
        if not heads:  # the journal's state is gone (Redis restarted): rebuild it from the file
            heads = dict((yield from self.branches(sid)))
        h.heads = heads
        replay = None if r[2] is None else _text(r[2])
        if replay != h.replay_seen:
            h.replay_seen = replay
            if replay is not None:
                pending = yield Blocking(lambda: self.store.parked(sid))
                h.replays = deque((p.branch_id, p.sequence) for p in pending
                                  if p.state == "replaying")

    def _discover(self) -> Steps:
        sessions: list[str] = list((yield Blocking(self.list_sessions)))
        self.sessions_seen = len(sessions)
        random.shuffle(sessions)  # workers starting together should not all try the same one
        for sid in sessions:
            if len(self.held) >= self.share():
                return
            if sid not in self.held:
                yield from self._try_claim(sid)

    def _try_claim(self, sid: str) -> Steps:
        keys = session_group_keys(self.prefix, self.group, sid)
        for _ in range(3):
            r = yield script("claim", [keys.group, keys.claim, keys.state],
                             [self.worker, self.opts.claim_ms, "0"])
            status = _text(r[0])
            if status == "seed":
                yield from self._seed(sid, keys)
                continue
            if status == "nostate":
                yield from self.branches(sid)
                continue
            if status != "ok":
                return
            sent = self.clock()
            token = _text(r[1])
            fields = _pairs(r[2])
            h = Held(keys, token, int(token.split(":", 1)[0]), checkpoints_of(fields))
            h.valid_until = sent + self.opts.claim_ms * 0.8 / 1000
            # The fence goes to the file before any delivery (see store.py).
            first = Checkpoint(h.fence, dict(h.ckpt), token)
            if not (yield Blocking(partial(self.store.write, sid, first))):
                yield script("release", [keys.claim], [token])
                return
            h.flushed_at = self.clock()
            self.held[sid] = h
            self.order.append(sid)
            self.stats["claimed"] += 1
            yield from self._poll(sid, h)
            return

    def _seed(self, sid: str, keys: SessionGroupKeys) -> Steps:
        """Redis lost the group's cache of this session (or never had it): load the file."""
        ckpt = (yield Blocking(lambda: self.store.read(sid))) or Checkpoint()
        parked = yield Blocking(lambda: self.store.parked(sid))
        replay = any(p.state == "replaying" for p in parked)
        halted = next((f"{p.branch_id}#{p.sequence}" for p in parked if p.state == "halted"), "")
        flat: list[str | int] = [ckpt.fence, "1" if replay else "0", halted]
        for b, s in ckpt.branches.items():
            flat += [b, s]
        yield script("seed", [keys.group], flat)

    # ----- picking the next delivery ------------------------------------------------------

    def _pick(self) -> Steps:
        for _ in range(len(self.order)):
            sid = self.order[0]
            self.order.rotate(-1)
            h = self.held.get(sid)
            if h is None or h.inflight:
                continue
            d = yield from self._next_of(sid, h)
            if d is not None:
                return d
        return None

    def _next_of(self, sid: str, h: Held) -> Steps:
        if h.replays:
            branch, seq = h.replays[0]
            if not (yield from self._confirm(sid, h)):
                return None
            found = yield from self.read(sid, branch, seq, 1)
            if not found:
                h.replays.popleft()
                return None
            h.inflight = True
            return Delivery(found[0], 1, h.fence, h.token, replay=True)
        now = self.clock()
        for branch, head in sorted(h.heads.items()):
            seq = h.done(branch) + 1
            if seq > head or now < h.not_before.get(branch, 0.0):
                continue
            buf = h.buffer.setdefault(branch, deque())
            while buf and buf[0].sequence < seq:
                buf.popleft()
            if not buf or buf[0].sequence != seq:
                buf.clear()
                buf.extend((yield from self.read(sid, branch, seq, self.opts.page_size)))
                if not buf or buf[0].sequence != seq:
                    continue
            attempt = yield from self._start(sid, h, branch, seq)
            if attempt is None:
                return None
            if attempt > self.opts.max_attempts:
                # Its holders kept dying in the handler: park it without running it again.
                if not (yield from self._poison(sid, h, buf[0], attempt - 1,
                                                "worker lost mid-handler")):
                    return None
                if sid not in self.held:  # halted: the session was given back
                    return None
                continue
            if (yield Blocking(partial(_deleted, self.root, sid))):
                # Deleted since the page was read: nothing of it is delivered any more.
                raise SessionDeleted(sid)
            h.inflight = True
            return Delivery(buf[0], attempt, h.fence, h.token)
        return None

    def _commit(self, sid: str, h: Held, mark: tuple[str, int] | None = None,
                served: str = "") -> Steps:
        """One fenced step: commit the acks since the last one, mark ``mark`` as the start
        of a delivery and extend the claim. The attempt of the marked delivery (0 without a
        mark), or None when the claim is lost (then so are the uncommitted acks: their
        events go to the next holder)."""
        sent = self.clock()
        acks: list[str | int] = [x for b, q in h.acked.items() for x in (b, q)]
        mb, mq = mark or ("", 0)
        r = yield script("step", [h.keys.group, h.keys.claim],
                         [h.token, self.opts.claim_ms, mb, mq, served, *acks])
        if not int(r[0]):
            self.stats["refused"] += 1
            yield from self._lose(sid)
            return None
        h.valid_until = sent + self.opts.claim_ms * 0.8 / 1000
        h.committed_at = sent
        if h.acked:
            for b, q in h.acked.items():
                h.ckpt[b] = max(q, h.ckpt.get(b, 0))
                h.run.pop(b, None)  # Redis no longer holds a mark on b beyond this commit
            h.acked.clear()
            h.pending = 0
            h.dirty = True
        attempt = int(r[1])
        h.mark = None
        if mark is not None:
            h.mark = (mb, mq, attempt)
            if attempt > 1:  # a redelivery: its last holder may have run this far unmarked
                h.run.pop(mb, None)
                h.cautious[mb] = max(h.cautious.get(mb, 0), mq + self.opts.commit_every - 1)
            elif mq > h.cautious.get(mb, 0):
                h.run[mb] = mq + self.opts.commit_every - 1
            else:
                h.run.pop(mb, None)
        return attempt

    def _confirm(self, sid: str, h: Held) -> Steps:
        """Commit, extend the claim, and learn whether it is still ours."""
        return (yield from self._commit(sid, h)) is not None

    def _start(self, sid: str, h: Held, branch: str, seq: int) -> Steps:
        """The attempt number of a delivery about to start, or None when the claim is lost.
        Inside a run that a commit marked, no Redis call is needed, unless the claim has
        gone quiet since (a paused worker must look again before it runs a handler)."""
        h.unmarked = None
        if self.clock() < h.valid_until:
            if h.mark is not None and h.mark[:2] == (branch, seq):
                return h.mark[2]
            if seq <= h.run.get(branch, 0):
                h.unmarked = (branch, seq)
                return 1
        return (yield from self._commit(sid, h, (branch, seq)))

    # ----- settling a delivery ------------------------------------------------------------

    def settle(self, steps: Steps, d: Delivery) -> Steps:
        """Run an ack/nack/extend. Redis gone mid-way: the outcome is unknown, so the claim
        is given up and the answer is False (the next holder redelivers if it must)."""
        try:
            return (yield from steps)
        except RedisUnavailable:
            self.stats["refused"] += 1
            yield from self._lose(d.session_id)
            return False

    def ack(self, d: Delivery) -> Steps:
        """Ack ``d``: locally while the claim is surely ours, committed (fenced) in batches.
        False: the claim is no longer ours (the event will be delivered again by the next
        holder)."""
        sid = d.session_id
        h = self.held.get(sid)
        if h is None or h.token != d.token:
            self.stats["refused"] += 1
            return False
        if d.replay:
            return (yield from self._ack_replay(sid, h, d))
        branch, seq = d.branch_id, d.sequence
        h.inflight = False
        h.acked[branch] = max(seq, h.acked.get(branch, 0))
        h.pending += 1
        buf = h.buffer.get(branch)
        if buf and buf[0].sequence == seq:
            buf.popleft()
        now = self.clock()
        nxt = seq + 1 if seq < h.heads.get(branch, 0) else None
        if (h.pending < self.opts.commit_every and now - h.committed_at < self.opts.commit_s
                and now < h.valid_until and seq >= h.cautious.get(branch, 0)
                and nxt is not None and buf):
            self.stats["acked"] += 1
            return True
        mark = (branch, nxt) if nxt is not None else None
        if (yield from self._commit(sid, h, mark)) is None:
            return False
        self.stats["acked"] += 1
        if self.clock() - h.flushed_at >= self.opts.flush_s:
            yield from self._flush(sid, h)
        return True

    def _ack_replay(self, sid: str, h: Held, d: Delivery) -> Steps:
        h.inflight = False
        if not (yield from self._confirm(sid, h)):
            return False
        yield Blocking(lambda: self.store.log(sid, {
            "op": "done", "branch": d.branch_id, "sequence": d.sequence, "fence": h.fence}))
        h.replays.popleft()
        if not h.replays and h.replay_seen is not None:
            yield from self._commit(sid, h, served=h.replay_seen)
        return True

    def nack(self, d: Delivery, delay_s: float | None, error: str) -> Steps:
        """Deliver ``d`` again after ``delay_s`` (default: exponential backoff); after
        ``max_attempts`` park it durably with ``error`` and go on with the session (or halt
        the session, with ``on_poison="halt"``)."""
        sid = d.session_id
        h = self.held.get(sid)
        if h is None or h.token != d.token:
            self.stats["refused"] += 1
            return False
        if d.replay:  # a replayed event failed again: it stays parked
            h.inflight = False
            h.replays.popleft()
            return (yield from self._confirm(sid, h))
        h.inflight = False
        if d.attempt >= self.opts.max_attempts:
            if not (yield from self._confirm(sid, h)):
                return False
            return (yield from self._poison(sid, h, d.event, d.attempt, error))
        # The redelivery must count this attempt: a delivery a run started is marked now.
        pos = (d.branch_id, d.sequence)
        if (yield from self._commit(sid, h, pos if h.unmarked == pos else None)) is None:
            return False
        h.mark, h.unmarked = None, None
        h.run.pop(d.branch_id, None)
        wait = backoff(self.opts, d.attempt) if delay_s is None else max(0.0, delay_s)
        h.not_before[d.branch_id] = self.clock() + wait
        return True

    def _poison(self, sid: str, h: Held, event: EventRecord, attempts: int, error: str) -> Steps:
        """An event failed ``max_attempts`` times: park it and go on, or halt the session."""
        if self.opts.on_poison == "halt":
            return (yield from self._halt(sid, h, event, attempts, error))
        return (yield from self._park(sid, h, event, attempts, error))

    def _park(self, sid: str, h: Held, event: EventRecord, attempts: int, error: str) -> Steps:
        yield Blocking(partial(self.store.log, sid, self._parked_entry(h, event, attempts, error)))
        self.stats["parked"] += 1
        h.inflight = True
        return (yield from self.ack(Delivery(event, attempts, h.fence, h.token)))

    def _halt(self, sid: str, h: Held, event: EventRecord, attempts: int, error: str) -> Steps:
        """Write the halt down (durably, so a Redis restarted empty keeps it), commit what
        was acked before it, mark the session halted (fenced) and give it back: no worker
        claims it until ``journal group replay-parked`` or ``reset``."""
        entry = {**self._parked_entry(h, event, attempts, error), "halt": True}
        yield Blocking(partial(self.store.log, sid, entry))
        if not (yield from self._confirm(sid, h)):
            return False
        where = f"{event.branch_id}#{event.sequence}"
        if not int((yield script("halt", [h.keys.group, h.keys.claim], [h.token, where]))):
            self.stats["refused"] += 1
            yield from self._lose(sid)
            return False
        self.stats["halted"] += 1
        yield from self._release(sid)
        return True

    def _parked_entry(self, h: Held, event: EventRecord, attempts: int,
                      error: str) -> dict[str, Any]:
        return {"op": "park", "branch": event.branch_id, "sequence": event.sequence,
                "attempts": attempts, "error": error[:2000], "event_id": event.event_id,
                "worker": self.worker, "fence": h.fence}

    def extend(self, d: Delivery) -> Steps:
        h = self.held.get(d.session_id)
        if h is None or h.token != d.token:
            return False
        return (yield from self._confirm(d.session_id, h))

    def close(self) -> Steps:
        """Write every checkpoint down, give every claim back, leave the registry."""
        self.closed = True
        for sid in list(self.held):  # an unsettled delivery goes to the next holder
            yield from self._release(sid)
        yield self._heartbeat(leave=True)
