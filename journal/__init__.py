"""journal: a durable event journal for agent sessions, shared by many processes.

Each session's events live in a JSONL file (the truth, in the aiOS format); a Redis Lua script
checks the expected sequence before every durable write; Redis pub/sub carries committed
events to subscribers in every process.
"""

import logging as _logging

from journal import kinds
from journal._core.repair import RebuildResult
from journal._core.retry import TRANSIENT, RetryPolicy
from journal._io.journals import AsyncJournal, Journal
from journal._io.subscriptions import (
    AsyncSubscription,
    SubscriptionStats,
    SyncSubscription,
)
from journal._model.records import Actor, EventRecord, EventSchema, decode_line, encode_line
from journal.errors import (
    AppendOutcomeUnknown,
    CorruptLine,
    HistoryTruncated,
    InvalidId,
    InvalidInput,
    InvalidRecord,
    JournalError,
    LeaseTimeout,
    RecordTooLarge,
    RedisServerNotFound,
    RedisUnavailable,
    SequenceConflict,
    SessionDeleted,
    StorageError,
    SubscriptionIdle,
)
from journal.settings import JournalSettings

# Quiet by default, as a library should be: the application (or `journal -v`) decides
# where the "journal" logger's records go.
_logging.getLogger("journal").addHandler(_logging.NullHandler())

__all__ = [
    "TRANSIENT",
    "Actor",
    "AppendOutcomeUnknown",
    "AsyncJournal",
    "AsyncSubscription",
    "CorruptLine",
    "EventRecord",
    "EventSchema",
    "HistoryTruncated",
    "InvalidId",
    "InvalidInput",
    "InvalidRecord",
    "Journal",
    "JournalError",
    "JournalSettings",
    "LeaseTimeout",
    "RebuildResult",
    "RecordTooLarge",
    "RedisServerNotFound",
    "RedisUnavailable",
    "RetryPolicy",
    "SequenceConflict",
    "SessionDeleted",
    "StorageError",
    "SubscriptionIdle",
    "SubscriptionStats",
    "SyncSubscription",
    "decode_line",
    "encode_line",
    "kinds",
]
