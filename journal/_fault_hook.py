"""The one test seam on the write path: a fault hook that is ``None`` in production.

:mod:`journal.testing.faults` installs an object here to crash or stall a writer inside a
chosen window of the append protocol. While it is ``None`` each fault point costs one
global lookup and one comparison; nothing else of the test machinery is imported.
"""

from __future__ import annotations

from typing import Protocol


class FaultHook(Protocol):
    def wants(self, point: str) -> bool: ...

    def hit(self, point: str) -> None: ...


installed: FaultHook | None = None


def hit(point: str) -> None:
    """Run the installed hook's action for ``point``, if a hook is installed."""
    if installed is not None:
        installed.hit(point)


def wants(point: str) -> bool:
    return installed is not None and installed.wants(point)
