"""The pub/sub announcement of a commit.

Small commits carry their records inline, so a subscriber needs no file read; a commit whose
lines exceed the inline limit carries only positions, and subscribers read it from the file.
The record lines are spliced in as raw JSON: no re-encoding on the write path.
"""

from __future__ import annotations

import msgspec

from journal._model.records import EventRecord


class Announcement(msgspec.Struct, frozen=True):
    """One commit: which events, where their lines start, and (when small) the records.

    On the wire the names are one letter each (``s b f l o n e``), since every commit
    publishes one; in code they read in full.
    """

    session_id: str = msgspec.field(name="s")
    branch_id: str = msgspec.field(name="b")
    first: int = msgspec.field(name="f")  # first sequence
    last: int = msgspec.field(name="l")  # last sequence
    offset: int = msgspec.field(name="o")  # byte offset of the first line
    committed: int = msgspec.field(name="n")  # committed length after this commit
    records: list[EventRecord] | None = msgspec.field(default=None, name="e")


class Positions(msgspec.Struct):
    """An announcement without its records (msgspec skips the unknown ``e`` unchecked): what
    a subscriber falls back to when the inline records fail to decode."""

    session_id: str = msgspec.field(name="s")
    branch_id: str = msgspec.field(name="b")
    first: int = msgspec.field(name="f")
    last: int = msgspec.field(name="l")


_decoder = msgspec.json.Decoder(Announcement)
_positions_decoder = msgspec.json.Decoder(Positions)


def encode_announcement(
    session_id: str,
    branch_id: str,
    first: int,
    last: int,
    offset: int,
    committed: int,
    lines: bytes | None,
) -> bytes:
    """The announcement's JSON. The ids are checked ids (letters, digits and ``._:-``): they
    need no escaping, so the head is formatted directly (one per commit: this is cheaper
    than a general encoder)."""
    head = b'{"s":"%b","b":"%b","f":%d,"l":%d,"o":%d,"n":%d' % (
        session_id.encode(), branch_id.encode(), first, last, offset, committed)
    if lines is None:
        return head + b"}"
    body = lines.rstrip(b"\n").replace(b"\n", b",")
    return head + b',"e":[' + body + b"]}"


def decode_announcement(data: bytes) -> Announcement:
    return _decoder.decode(data)


def decode_positions(data: bytes) -> Positions:
    return _positions_decoder.decode(data)
