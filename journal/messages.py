"""The pub/sub announcement of a commit.

Small commits carry their records inline, so a subscriber needs no file read; a commit whose
lines exceed the inline limit carries only positions, and subscribers read it from the file.
The record lines are spliced in as raw JSON: no re-encoding on the write path.
"""

from __future__ import annotations

import msgspec

from .records import EventRecord


class Announcement(msgspec.Struct, frozen=True):
    s: str  # session id
    b: str  # branch id
    f: int  # first sequence
    l: int  # last sequence  # noqa: E741
    o: int  # byte offset of the first line
    n: int  # committed length after this commit
    e: list[EventRecord] | None = None  # the records, when small enough


_decoder = msgspec.json.Decoder(Announcement)


def encode_announcement(
    session_id: str,
    branch_id: str,
    first: int,
    last: int,
    offset: int,
    committed: int,
    lines: bytes | None,
) -> bytes:
    head = msgspec.json.encode(
        {"s": session_id, "b": branch_id, "f": first, "l": last, "o": offset, "n": committed}
    )
    if lines is None:
        return head
    body = lines.rstrip(b"\n").replace(b"\n", b",")
    return head[:-1] + b',"e":[' + body + b"]}"


def decode_announcement(data: bytes) -> Announcement:
    return _decoder.decode(data)
