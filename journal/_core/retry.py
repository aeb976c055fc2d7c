"""Which append errors are worth retrying, and after how long: the one copy of the rules
that ``Journal``/``AsyncJournal`` apply around ``append`` (``retry=RetryPolicy(...)``)
and ``append_next``. Pure: the caller passes the attempt number and a random number.

- ``AppendOutcomeUnknown``: transient. Retry the same record (same ``event_id``): it is then
  stored once, by this retry or by the attempt whose reply was lost.
- ``RedisUnavailable``: transient. Retry the same record once Redis answers.
- ``LeaseTimeout``: transient. Another writer held the session; wait, then retry.
- ``SequenceConflict``: final for ``append``; ``append_next`` reads the head again.
- ``InvalidInput`` (and subclasses), ``CorruptLine``, ``StorageError``: final. Fix the
  input, the file or the disk first.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from journal._model.records import EventRecord
from journal.errors import (
    AppendOutcomeUnknown,
    InvalidInput,
    JournalError,
    LeaseTimeout,
    RedisUnavailable,
    SequenceConflict,
)

__all__ = ["TRANSIENT", "Head", "Pause", "Put", "RetryPolicy", "advance", "append_next",
           "append_with_retry"]

log = logging.getLogger("journal.retry")

TRANSIENT: tuple[type[JournalError], ...] = (AppendOutcomeUnknown, RedisUnavailable, LeaseTimeout)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry an append whose failure may be transient.

    ``attempts`` counts every try, the first one included; the delay before retry ``n``
    (1, 2, ...) is ``backoff_s * 2**(n-1)``, capped at ``max_backoff_s``, with full jitter
    (a random part of it) so that writers that failed together do not retry together.
    ``conflicts`` bounds the head re-reads of ``append_next``.
    """

    attempts: int = 5
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    conflicts: int = 100

    def __post_init__(self) -> None:
        for name in ("attempts", "conflicts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"RetryPolicy.{name} must be an integer >= 1, got {value!r}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not (
                0 <= value < float("inf")
            ):
                raise InvalidInput(f"RetryPolicy.{name} must be a number >= 0, got {value!r}")

    def delay(self, error: BaseException, attempt: int, rand: float) -> float | None:
        """Seconds to wait before trying again after try number ``attempt`` (1-based)
        failed with ``error``; None when the error is final or the tries are used up.
        ``rand`` is a uniform random number in [0, 1)."""
        if not isinstance(error, TRANSIENT) or attempt >= self.attempts:
            return None
        return self._backoff(attempt, rand)

    def conflict_delay(self, conflicts: int, rand: float) -> float | None:
        """``append_next``: the pause before re-reading the head after conflict number
        ``conflicts``; None when they are used up. Short: another writer just succeeded."""
        if conflicts >= self.conflicts:
            return None
        return rand * 0.002 * min(conflicts, 10)

    def _backoff(self, attempt: int, rand: float) -> float:
        return rand * min(self.backoff_s * 2.0 ** (attempt - 1), float(self.max_backoff_s))


# ----- the retry loops, once for both journals (sans-IO, like protocol.py) ----------------


@dataclass(frozen=True, slots=True)
class Put:
    """Append this record (the journal's plain ``append``); the result is the stored record."""

    record: EventRecord


@dataclass(frozen=True, slots=True)
class Head:
    """Read the head of a branch."""

    session_id: str
    branch_id: str


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


Plan = Generator[Put | Head | Pause, Any, EventRecord]


def append_with_retry(
    policy: RetryPolicy, record: EventRecord, rand: Callable[[], float] = random.random
) -> Plan:
    """``append(record)``, retried by ``policy`` while the failure is transient."""
    attempt = 0
    while True:
        attempt += 1
        try:
            stored: EventRecord = yield Put(record)
            return stored
        except JournalError as exc:
            delay = policy.delay(exc, attempt, rand())
            if delay is None:
                raise
            log.info("append retry %d after %s", attempt, type(exc).__name__, extra={
                "event": "append_retry", "session_id": record.session_id,
                "branch_id": record.branch_id, "sequence": record.sequence,
                "attempt": attempt, "error": type(exc).__name__, "delay_s": delay})
            yield Pause(delay)


def append_next(
    policy: RetryPolicy, session_id: str, branch_id: str,
    make: Callable[[int], EventRecord], rand: Callable[[], float] = random.random,
) -> Plan:
    """Append ``make(head + 1)``; on a conflict read the head again. A transient failure is
    retried at the *same* sequence with the same record: an outcome that is unknown is
    settled before we move on, so the event is never stored twice."""
    conflicts = 0
    while True:
        top: int = yield Head(session_id, branch_id)
        try:
            return (yield from append_with_retry(policy, make(top + 1), rand))
        except SequenceConflict:
            conflicts += 1
            delay = policy.conflict_delay(conflicts, rand())
            if delay is None:
                raise
            yield Pause(delay)


def advance(steps: Generator[Any, Any, Any], result: Any,
            error: BaseException | None) -> tuple[bool, Any]:
    """Feed one outcome to a generator of steps: (True, its return value) or (False, the
    next step)."""
    try:
        return False, (steps.send(result) if error is None else steps.throw(error))
    except StopIteration as stop:
        return True, stop.value
