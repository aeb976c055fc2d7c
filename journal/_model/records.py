"""The aiOS event record (docs/format.md) and its JSONL codec, built on msgspec.

Reading is lossless: ``kind`` stays the exact JSON object that was read (unknown tags and extra
fields included), and the timestamp keeps its fraction digits, so a line read and written back
is byte-identical when it was already in canonical form. Writing is strict: see
:func:`prepare_for_write`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from journal._model.ids import DEFAULT_MAX_ID_LENGTH, validate_id
from journal.errors import InvalidRecord, RecordTooLarge
from journal.kinds import KindBase, kind_to_dict

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
    """Random (version 4) UUIDs from the OS's random source, read in blocks.

    ``uuid.uuid4()`` asks the kernel for 16 bytes each time (a ``getrandom`` syscall, and a
    record takes two ids); reading 4 KiB at once makes that one syscall per 256 ids. The
    bytes are the same quality as uuid4's. A forked child drops the inherited block, so a
    parent and its children never hand out the same bytes (``os.register_at_fork``).
    """

    BLOCK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a lock held at fork time would stay held
        self._block = b""
        self._pos = 0

    def __call__(self) -> str:
        with self._lock:
            pos = self._pos
            if pos + 16 > len(self._block):
                self._block, pos = os.urandom(self.BLOCK), 0
            self._pos = pos + 16
            n = int.from_bytes(self._block[pos : pos + 16])
        # RFC 9562: version 4 in bits 48-51, variant 0b10 in bits 64-65.
        n = (n & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_new_uuid = _UuidSource()


_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


# The last timestamp found valid and already canonical. An append checks the same
# timestamp three times (making the record, copying it with its checked kind, decoding the
# line it writes); this makes the second and third a comparison.
_last_canonical: str | None = None


def normalize_timestamp(value: str) -> str:
    """Validate an RFC 3339 timestamp and convert it to UTC with ``Z``.

    The fraction digits are kept as text: Python's datetime stops at microseconds, aiOS
    writes nanoseconds, and we must not lose them.
    """
    global _last_canonical
    if type(value) is str and value == _last_canonical:
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
                _last_canonical = value
            return value
    else:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        whole -= sign * timedelta(hours=hours, minutes=minutes)
    return whole.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _now_timestamp() -> str:
    # Nanosecond digits, as aiOS writes them; time_ns keeps them exact.
    import time

    ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
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

    Types are checked by decoding the very line we will write with the typed decoder
    (msgspec does not check types in ``__init__``): one encode and one decode, both in C,
    and what is checked is exactly what lands on disk.
    """
    batch = list(records)
    if not batch:
        raise InvalidRecord("an append needs at least one record")
    first = batch[0]
    if not isinstance(first, EventRecord):
        raise InvalidRecord(f"expected an EventRecord, got {type(first).__name__}")
    validate_id(first.session_id, "session_id", max_id_length)
    validate_id(first.branch_id, "branch_id", max_id_length)
    out: list[EventRecord] = []
    lines: list[bytes] = []
    seen_ids: set[str] = set()
    for i, record in enumerate(batch):
        if not isinstance(record, EventRecord):
            raise InvalidRecord(f"expected an EventRecord, got {type(record).__name__}")
        if record.session_id != first.session_id or record.branch_id != first.branch_id:
            raise InvalidRecord("a batch must hold one session and one branch")
        kind = kind_to_dict(record.kind)
        if kind is not record.kind:
            record = msgspec.structs.replace(record, kind=kind)
        try:
            line = encode_line(record)
            checked = _decoder.decode(line)
        except _WRITE_ERRORS as exc:
            # (a lone surrogate cannot be encoded as UTF-8; a wrong type fails the decode)
            raise InvalidRecord(f"invalid record: {exc}") from None
        if checked.timestamp != record.timestamp:
            line = encode_line(checked)  # an offset was normalized to UTC
        if checked.sequence != first.sequence + i:
            raise InvalidRecord(
                f"a batch must be contiguous: record {i} has sequence {checked.sequence}, "
                f"expected {first.sequence + i}"
            )
        if checked.event_id in seen_ids:
            raise InvalidRecord(f"event_id {checked.event_id!r} appears twice in one batch")
        seen_ids.add(checked.event_id)
        if len(line) > max_record_bytes:
            raise RecordTooLarge(
                f"record {checked.sequence} encodes to {len(line)} bytes, "
                f"over the limit of {max_record_bytes}"
            )
        out.append(checked)
        lines.append(line)
    return out, b"".join(lines)
