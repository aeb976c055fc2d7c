"""The one vocabulary of operations the pure protocols ask their drivers to run.

The append, read, head and rebuild protocols (and the subscription state machine) are
generators that yield these and receive their results; the sync and async drivers of
``journal._io`` run them. A Redis error comes back as a
:class:`~journal.errors.RedisUnavailable` thrown into the generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lua:
    """Run one of the scripts in ``journal/_core/lua`` (by file stem)."""

    script: str
    keys: list[str]
    args: list[str | int | bytes]


@dataclass(frozen=True, slots=True)
class Call:
    """Run one plain Redis command."""

    args: tuple[str | int | bytes, ...]


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run blocking file work (the async driver moves it to a worker thread)."""

    fn: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long (the protocols compute it from their injected clock and jitter)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Send:
    """Send a commit script without waiting for its reply (a pipelined commit)."""

    session_id: str
    lua: Lua


@dataclass(frozen=True, slots=True)
class Collect:
    """The reply of the session's pipelined commit, once Redis ran it (None: none pending,
    or another caller already read it)."""

    session_id: str


Op = Lua | Call | Blocking | Sleep | Send | Collect
Steps = Generator[Op, Any, T]


def text(value: Any) -> str:
    """A Redis reply as ``str`` (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)
