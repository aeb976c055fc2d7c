"""What the protocols keep between calls, and the inputs they get instead of calling the
world: :class:`Env` (clock, lease tokens, jitter), :class:`Core` (settings plus the leases
this process holds), and the lease clocks and backoff computed from them.

Nothing here reads the clock, draws a random number or makes an id by itself: a test passes
an ``Env`` with a scripted clock and drives every lease window deterministically.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journal._core.keys import SessionKeys, session_keys
from journal._storage.session_file import SessionStore
from journal.errors import JournalError, LeaseTimeout
from journal.settings import JournalSettings


def _new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Env:
    """The protocols' view of the world. The defaults are the real clock and randomness."""

    now: Callable[[], float] = time.monotonic  # seconds, monotonic
    token: Callable[[], str] = _new_token  # a fresh, unique lease token
    jitter: Callable[[float, float], float] = random.uniform  # a delay in [low, high]


class LeaseLost(JournalError):
    """Internal: our lease may have expired before we touched the file."""


class Fenced(LeaseLost):
    """Internal: Redis no longer has our lease (it restarted, or the lease expired), though
    our own clock may still trust it: a step that destroys bytes must not run."""


def trusted_s(lease_ms: int) -> float:
    """How long we trust a lease of ``lease_ms`` from before the call that granted it was
    sent: 80 % of it, less a margin for the clock and the trip to Redis (20 ms, or a fifth
    of the lease for the short holds, lease_hold_ms, of a busy writer)."""
    seconds = lease_ms / 1000
    return seconds * 0.8 - min(0.02, seconds * 0.2)


class LeaseClock:
    """Our own, conservative view of the lease: it starts before the begin call was sent,
    and we stop trusting it a safety margin before it expires."""

    __slots__ = ("_now", "deadline")  # one or two per append

    def __init__(self, env: Env, lease_ms: int) -> None:
        self._now = env.now
        self.deadline = env.now() + trusted_s(lease_ms)

    def valid(self) -> bool:
        return self._now() < self.deadline

    def lasts(self, seconds: float) -> bool:
        """Whether we still trust the lease ``seconds`` from now."""
        return self._now() + seconds < self.deadline

    def guard(self) -> None:
        if not self.valid():
            raise LeaseLost("the writer lease may have expired")


@dataclass(slots=True)
class Held:
    """A lease this process kept after its last commit (for ``lease_hold_ms``). While it is
    valid by our own clock nobody else can write the session, so the next append checks
    its sequence against these heads locally and skips the begin round trip. The commit
    still checks the lease in Redis, so a wrong clock can cost a retry, never an event."""

    token: str
    clock: LeaseClock
    committed: int
    heads: dict[str, int]
    pending: bool = False  # its commit was sent, and the reply is not read yet
    reply: Any = 1  # the commit's reply: 1 means the lease is still ours


class Backoff:
    """Bounded exponential backoff with jitter while another writer holds the lease."""

    __slots__ = ("_env", "deadline", "delay")  # one per append, mostly unused

    def __init__(self, env: Env, timeout_s: float) -> None:
        self._env = env
        self.deadline = env.now() + timeout_s
        self.delay = 0.001

    def next(self, pttl_ms: int | None = None) -> float:
        if self._env.now() >= self.deadline:
            raise LeaseTimeout("gave up waiting for the session's writer lease")
        delay = self._env.jitter(self.delay / 2, self.delay)
        self.delay = min(self.delay * 2, 0.05)
        if pttl_ms is not None and pttl_ms > 0:
            delay = min(delay, pttl_ms / 1000)
        return delay


_WORK_BASE_MS = 2000
_READ_BYTES_PER_MS = 4000  # 4 MB/s: far below any disk's sequential read
REWRITE_BYTES_PER_MS = 1000  # 1 MB/s: a compaction's rewrite, an archive's zstd level 10

_CONTENDED_S = 1.0  # how long a session counts as contended after we met another writer


@dataclass
class Core:
    """Settings plus the names, stores and leases derived from them, and the ``Env``."""

    settings: JournalSettings
    env: Env = field(default_factory=Env)
    # Leases kept after a commit, per session. Appends of one session are serialized
    # within a process (the journals' group queue), so one append at a time reads and
    # replaces these.
    held: dict[str, Held] = field(default_factory=dict, init=False)
    # Sessions where this process met another writer lately. An idle holder makes waiters
    # wait out its hold, so a contended session is not held at all for a while.
    contended_until: dict[str, float] = field(default_factory=dict, init=False)
    _stores: dict[str, SessionStore] = field(default_factory=dict, init=False, repr=False)
    # Every append needs its session's key names: made once, not per append.
    _keys: dict[str, SessionKeys] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.settings.root)
        self.publish = "SPUBLISH" if self.settings.sharded_pubsub else "PUBLISH"

    def hold_ms(self, session_id: str) -> int:
        """How long to keep the lease after a commit: 0 while the session is contended."""
        until = self.contended_until.get(session_id)
        if until is not None:
            if self.env.now() < until:
                return 0
            del self.contended_until[session_id]
        return self.settings.lease_hold_ms

    def keeps_hold(self, clock: LeaseClock, hold_ms: int) -> bool:
        """Whether a commit on a held lease may leave the lease's expiry as it is: while
        the hold that ``clock`` trusts has more than half its trust left. Redis then runs
        one call less per commit (no ``PEXPIRE``), and the writer keeps ``clock``, which
        started before the commit that set that expiry was sent."""
        return clock.lasts(trusted_s(hold_ms) / 2)

    def contended(self, session_id: str) -> None:
        if len(self.contended_until) > 4096:
            self.contended_until.clear()
        self.contended_until[session_id] = self.env.now() + _CONTENDED_S

    def lease_clock(self, lease_ms: int) -> LeaseClock:
        return LeaseClock(self.env, lease_ms)

    def work_lease_ms(self, size: int, bytes_per_ms: int = _READ_BYTES_PER_MS) -> int:
        """The lease for work that goes through a session's file once (a rebuild reads it,
        a life-cycle operation rewrites or compresses it): 2 s plus ``size`` bytes at a slow
        ``bytes_per_ms``, at least the writer lease, at most ``rebuild_lease_ms``. A holder
        that dies then stops the session's writers for about as long as its work would have
        taken, not for ``rebuild_lease_ms`` (two minutes by default). Work that outruns it
        tries again with ``rebuild_lease_ms``."""
        settings = self.settings
        return min(settings.rebuild_lease_ms,
                   max(settings.lease_ms, _WORK_BASE_MS + size // bytes_per_ms))

    @property
    def rebuild_wait_ms(self) -> int:
        """How long a rebuild waits, once Redis lost every lease, before it reads the file
        and lets writers in: a holder that still trusts its own clock may act that long,
        a writer on its held lease (``lease_hold_ms``) or a step that destroys bytes after
        Redis confirmed its lease (``fence_ms``, see ``rebuild.fence``)."""
        return max(self.settings.lease_hold_ms, self.settings.fence_ms)

    def backoff(self) -> Backoff:
        return Backoff(self.env, self.settings.lease_wait_s)

    def keys(self, session_id: str) -> SessionKeys:
        keys = self._keys.get(session_id)
        if keys is None:
            if len(self._keys) >= 4096:
                self._keys.clear()  # a plain bound, as for the stores
            keys = self._keys[session_id] = session_keys(self.settings.key_prefix, session_id)
        return keys

    def store(self, session_id: str) -> SessionStore:
        store = self._stores.get(session_id)
        if store is None:
            if len(self._stores) >= 4096:
                self._stores.clear()  # a plain bound; stores are cheap to make again
            store = self._stores[session_id] = SessionStore(
                self.root, session_id, self.settings.view_catch_up_s)
        return store


def pairs(heads: dict[str, int]) -> list[str | int | bytes]:
    """Branch heads as the flat ``branch, head, ...`` arguments of the commit script."""
    out: list[str | int | bytes] = []
    for branch, head in heads.items():
        out += [branch, head]
    return out


def heads_of(fields: dict[str, str]) -> dict[str, int]:
    """The branch heads of a state hash (fields ``h:<branch>``)."""
    return {k[2:]: int(v) for k, v in fields.items() if k.startswith("h:")}
