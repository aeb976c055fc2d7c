"""Id validation: ids are checked before they touch a path or a Redis key.

A session id becomes a file name (``<root>/events/<sid>.jsonl``) and a Redis hash tag
(``{sid}``), so the grammar excludes path separators, NUL, braces and glob characters, and a
leading dot (``.``, ``..`` and hidden files).
"""

from __future__ import annotations

import re

from journal.errors import InvalidId

DEFAULT_MAX_ID_LENGTH = 128
_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]+")


# Ids already found valid (their characters and first character; the length limit is
# checked on every call). A writer validates the same few ids on every append; the
# regular expression runs once per id instead. Only exact ``str`` values are kept, so a
# subclass with its own comparison never stands in for a checked id.
_valid: set[str] = set()
_VALID_MAX = 4096


def validate_id(value: object, what: str = "id", max_length: int = DEFAULT_MAX_ID_LENGTH) -> str:
    """Return ``value`` if it is a valid session or branch id, else raise :class:`InvalidId`."""
    if type(value) is str and value in _valid and len(value) <= max_length:
        return value
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_length:
        raise InvalidId(f"{what} must be 1 to {max_length} characters, got {len(value)}")
    if _ID_CHARS.fullmatch(value) is None:
        raise InvalidId(f"{what} {value!r} may only hold the characters [A-Za-z0-9._:-]")
    if value.startswith("."):
        raise InvalidId(f"{what} {value!r} must not start with '.'")
    if type(value) is str:
        if len(_valid) >= _VALID_MAX:
            _valid.clear()  # a plain bound: a cleared id is checked again, once
        _valid.add(value)
    return value
