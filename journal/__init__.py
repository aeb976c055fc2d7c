"""journal: a durable event journal for agent sessions, shared by many processes.

Each session's events live in a JSONL file (the truth, in the aiOS format); a Redis Lua script
checks the expected sequence before every durable write; Redis pub/sub carries committed
events to subscribers in every process.
"""

from journal import kinds
from journal._io.journals import AsyncJournal, Journal
from journal._model.records import Actor, EventRecord, EventSchema
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
)
from journal.settings import JournalSettings

__all__ = [
    "Actor",
    "AppendOutcomeUnknown",
    "AsyncJournal",
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
    "RecordTooLarge",
    "RedisServerNotFound",
    "RedisUnavailable",
    "SequenceConflict",
    "SessionDeleted",
    "StorageError",
    "kinds",
]
