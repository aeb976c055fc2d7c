"""Observation points: the core reports what it did (an fsync took so long, a writer
waited for a lease, a subscriber fell back to the file) to whoever listens.

Metrics (``journal.http``) and, later, logging register a listener. With none registered,
:func:`emit` is one truth test of an empty list, so the hot path pays next to nothing.
A listener must be quick and must not raise; an exception in one is swallowed so an
observer can never break an append.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["Listener", "add_listener", "emit", "remove_listener"]

Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def emit(name: str, **fields: Any) -> None:
    """Report one observation. Names in use: ``fsync`` (seconds), ``lease_wait``
    (seconds, session_id), ``subscriber_fallback`` (reason)."""
    if not _listeners:
        return
    for listener in tuple(_listeners):
        with contextlib.suppress(Exception):  # an observer must never break the journal
            listener(name, fields)
