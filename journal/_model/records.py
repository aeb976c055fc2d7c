"""The aiOS event record (docs/format.md) and its JSONL codec, built on msgspec.

Reading is lossless: ``kind`` stays the exact JSON object that was read (unknown tags and extra
fields included), and the timestamp keeps its fraction digits, so a line read and written back
is byte-identical when it was already in canonical form. Writing is strict: see
:func:`prepare_for_write`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from journal._model.ids import DEFAULT_MAX_ID_LENGTH, validate_id
from journal.errors import InvalidRecord, RecordTooLarge
from journal.kinds import KindBase, check_kinds, kind_to_dict

__all__ = [
    "MAX_SEQUENCE",
    "Actor",
    "EventRecord",
    "EventSchema",
    "decode_line",
    "encode_line",
    "normalize_timestamp",
    "prepare_for_write",
]

# Redis Lua numbers are IEEE doubles: sequences above 2**53 would compare inexactly there.
MAX_SEQUENCE = 2**53 - 1
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024

Sequence = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQUENCE)]


class Actor(msgspec.Struct, omit_defaults=True):
    """Who caused an event: ``type`` is user, agent or system."""

    type: Literal["user", "agent", "system"]
    component: str | None = None


class EventSchema(msgspec.Struct):
    name: str = "aios-protocol"
    version: str = "0.1.0"


def _default_actor() -> Actor:
    return Actor(type="system", component="arcan-daemon")


class _UuidSource:
    """Random (version 4) UUIDs from the OS's random source, made in blocks.

    ``uuid.uuid4()`` asks the kernel for 16 bytes each time (a ``getrandom`` syscall, and a
    record takes two ids); reading 4 KiB at once makes that one syscall per 256 ids, and
    formatting them all at once is cheaper than one at a time. The bytes are the same
    quality as uuid4's. A forked child drops the inherited block, so a parent and its
    children never hand out the same ids (``os.register_at_fork``).
    """

    BLOCK = 4096

    def __init__(self) -> None:
        self._ids: Iterator[str] = iter(())
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._ids = iter(())

    def __call__(self) -> str:
        # No lock: next() on a list iterator is atomic under the GIL, and two threads that
        # find the block used up both make fresh ones from fresh bytes.
        for made in self._ids:
            return made
        ids = self._make_block()
        self._ids = iter(ids[1:])
        return ids[0]

    def _make_block(self) -> list[str]:
        h = os.urandom(self.BLOCK).hex()
        # RFC 9562: version 4 in the 13th hex digit, variant 0b10 in the top bits of the 17th.
        return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-"
                f"{'89ab'[int(h[i + 16], 16) & 3]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
                for i in range(0, len(h), 32)]


_new_uuid = _UuidSource()


_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


# The date and time (to the second) of the last timestamp found valid and canonical. An
# append checks each timestamp twice (making the record, decoding the lines it writes), a
# subscriber once more (decoding the announcement), and a writer's timestamps share their
# second: for those, only the fraction and the "Z" are left to check.
_last_second: str | None = None


def normalize_timestamp(value: str) -> str:
    """Validate an RFC 3339 timestamp and convert it to UTC with ``Z``.

    The fraction digits are kept as text: Python's datetime stops at microseconds, aiOS
    writes nanoseconds, and we must not lose them.
    """
    global _last_second
    if type(value) is str and value[:19] == _last_second:
        rest = value[19:]  # canonical: "Z" or ".<1 to 9 digits>Z", as the pattern says
        if rest == "Z" or (3 <= len(rest) <= 11 and rest[0] == "." and rest[-1] == "Z"
                           and rest[1:-1].isdecimal()):  # (isdecimal: what \d matches)
            return value
    m = _TIMESTAMP.fullmatch(value)
    if m is None:
        raise InvalidRecord(f"timestamp {value!r} is not RFC 3339 (e.g. 2026-02-21T10:15:30Z)")
    date, clock, fraction, offset = m.groups()
    try:
        whole = datetime.fromisoformat(f"{date}T{clock}")
    except ValueError as exc:
        raise InvalidRecord(f"timestamp {value!r} is not a valid date/time: {exc}") from None
    fraction = fraction or ""
    if offset in ("Z", "z"):
        if value[10] == "T" and offset == "Z":
            if type(value) is str:
                _last_second = value[:19]
            return value
    else:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        whole -= sign * timedelta(hours=hours, minutes=minutes)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


# The formatted second of the last _now_timestamp: formatting a datetime costs more than
# the rest of making a record, and a busy writer makes many records per second.
_now_second: tuple[int, str] = (-1, "")


def _now_timestamp() -> str:
    # Nanosecond digits, as aiOS writes them; time_ns keeps them exact.
    global _now_second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached, whole = _now_second
    if seconds != cached:
        whole = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _now_second = (seconds, whole)
    return f"{whole}.{nanos:09d}Z"


class EventRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event, with the docs/format.md fields in their serialized order."""

    event_id: str
    session_id: str
    agent_id: str = msgspec.field(default_factory=_new_uuid)
    branch_id: str
    sequence: Sequence
    timestamp: str
    actor: Actor = msgspec.field(default_factory=_default_actor)
    schema: EventSchema = msgspec.field(default_factory=EventSchema)
    causation_id: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    digest: str | None = None
    kind: dict[str, Any]

    def __post_init__(self) -> None:
        # Runs on decode too: readers accept any offset and hold UTC.
        self.timestamp = normalize_timestamp(self.timestamp)

    @classmethod
    def new(
        cls,
        session_id: str,
        branch_id: str,
        sequence: int,
        kind: KindBase | Mapping[str, Any],
        **fields: Any,
    ) -> EventRecord:
        """A fresh record as aiOS makes one: new UUIDs, default actor and schema, now in UTC."""
        fields.setdefault("event_id", _new_uuid())
        fields.setdefault("timestamp", _now_timestamp())
        return cls(
            session_id=session_id,
            branch_id=branch_id,
            sequence=sequence,
            kind=kind_to_dict(kind),
            **fields,
        )

    def to_line(self) -> bytes:
        """The record's JSONL line, exactly as the journal writes it (compact JSON in the
        aiOS field order, optional fields left out when null, ending in ``\\n``)."""
        return encode_line(self)

    @classmethod
    def from_line(cls, line: bytes | str) -> EventRecord:
        """Decode one JSONL line as the journal reads it (``kind`` kept as it is, timestamps
        normalized to UTC ``Z``). Raises :class:`journal.InvalidRecord` on a bad line."""
        try:
            return decode_line(line)
        except DECODE_ERRORS as exc:
            if isinstance(exc, InvalidRecord):
                raise
            raise InvalidRecord(f"invalid record line: {exc}") from None

    @property
    def kind_type(self) -> str:
        """The ``kind`` tag, e.g. ``"PhaseEntered"``."""
        return str(self.kind.get("type", ""))

    @property
    def datetime(self) -> datetime:
        """The timestamp as an aware datetime (microsecond precision)."""
        m = _TIMESTAMP.fullmatch(self.timestamp)
        assert m is not None
        fraction = (m.group(3) or ".0")[1:7].ljust(6, "0")
        return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{fraction}+00:00")


#: Everything decoding a line can raise on bad bytes: msgspec's errors, invalid UTF-8, a
#: bad timestamp (InvalidRecord), and nesting too deep to decode.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError,
    InvalidRecord,
)

_WRITE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.EncodeError, TypeError, UnicodeEncodeError, *DECODE_ERRORS
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EventRecord)


def encode_line(record: EventRecord) -> bytes:
    """One compact JSON line, newline-terminated."""
    return _encoder.encode(record) + b"\n"


def decode_line(line: bytes | str) -> EventRecord:
    """Decode one line (trailing whitespace allowed).

    Raises msgspec errors (or InvalidRecord for a bad timestamp) on bad input, and nothing
    else: invalid UTF-8 and nesting too deep to decode become ``msgspec.DecodeError`` too, so
    a damaged byte in a file is reported as a corrupt line, never as a crash.
    """
    try:
        return _decoder.decode(line)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"{type(exc).__name__}: {exc}") from None


def prepare_for_write(
    records: Iterable[EventRecord],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    max_id_length: int = DEFAULT_MAX_ID_LENGTH,
) -> tuple[list[EventRecord], bytes]:
    """Check a contiguous batch for one (session, branch) and encode it.

    Everything is checked before a single byte is written: ids, types, the kind (strictly),
    contiguity, unique event ids and the line size. Returns the records (with ``kind`` as a
    plain mapping) and the bytes to append.

    Types are checked by decoding the very lines we will write with the typed decoder
    (msgspec does not check types in ``__init__``): one encode and one decode of the whole
    batch, both in C, and what is checked is exactly what lands on disk.
    """
    batch = list(records)
    if not batch:
        raise InvalidRecord("an append needs at least one record")
    first = batch[0]
    if not isinstance(first, EventRecord):
        raise InvalidRecord(f"expected an EventRecord, got {type(first).__name__}")
    session_id, branch_id = first.session_id, first.branch_id
    validate_id(session_id, "session_id", max_id_length)
    validate_id(branch_id, "branch_id", max_id_length)
    plain: list[dict[str, Any]] = []  # kinds encoded from here and dropped: no copy needed
    for i, record in enumerate(batch):
        if type(record) is not EventRecord and not isinstance(record, EventRecord):
            raise InvalidRecord(f"expected an EventRecord, got {type(record).__name__}")
        if record.session_id != session_id or record.branch_id != branch_id:
            raise InvalidRecord("a batch must hold one session and one branch")
        kind = record.kind
        if type(kind) is dict:
            plain.append(kind)
        else:
            batch[i] = msgspec.structs.replace(record, kind=kind_to_dict(kind))
    check_kinds(plain)
    try:
        data = _encoder.encode_lines(batch)
        out = _decoder.decode_lines(data)
    except _WRITE_ERRORS as exc:
        # (a lone surrogate cannot be encoded as UTF-8; a wrong type fails the decode)
        raise InvalidRecord(f"invalid record: {exc}") from None
    if any(c.timestamp != r.timestamp for c, r in zip(out, batch, strict=True)):
        data = _encoder.encode_lines(out)  # an offset was normalized to UTC
    seen_ids: set[str] = set()
    sequence = start = out[0].sequence
    for record in out:
        if record.sequence != sequence:
            raise InvalidRecord(
                f"a batch must be contiguous: record {sequence - start} has sequence "
                f"{record.sequence}, expected {sequence}"
            )
        sequence += 1
        if record.event_id in seen_ids:
            raise InvalidRecord(f"event_id {record.event_id!r} appears twice in one batch")
        seen_ids.add(record.event_id)
    if len(data) > max_record_bytes:
        # Some line may be over the limit. JSON escapes a newline inside a string, so the
        # lines are exactly the pieces between newlines.
        for record, line in zip(out, data.split(b"\n"), strict=False):
            if len(line) + 1 > max_record_bytes:
                raise RecordTooLarge(
                    f"record {record.sequence} encodes to {len(line) + 1} bytes, "
                    f"over the limit of {max_record_bytes}"
                )
    return out, data
