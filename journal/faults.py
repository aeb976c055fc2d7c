"""Fault points for tests: crash or stall a writer inside a chosen window of the protocol.

Disabled unless ``JOURNAL_FAULTS`` is set in the environment when the module is imported, so a
production process pays one global lookup per point. Format: ``point=action[,point=action]``
where action is ``kill`` (SIGKILL self), ``kill@P`` (with probability P), ``sleep:SECONDS``,
``stop`` (SIGSTOP self, a zombie writer until someone sends SIGCONT) or ``enospc`` (raise
ENOSPC). Points: ``after_begin``, ``mid_write`` (half the bytes are written, then the action),
``after_write``, ``after_fsync``, ``before_commit``, ``after_commit``, ``fsync`` (before the
fdatasync: use ``sleep:S`` for a slow disk).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time

_RULES: dict[str, str] = {}


def _load(spec: str) -> dict[str, str]:
    rules: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, action = item.partition("=")
        rules[point] = action
    return rules


def configure(spec: str | None) -> None:
    """Replace the active rules (tests call this in-process; children read the env var)."""
    _RULES.clear()
    if spec:
        _RULES.update(_load(spec))


configure(os.environ.get("JOURNAL_FAULTS"))


def enabled(point: str) -> bool:
    return bool(_RULES) and point in _RULES


def hit(point: str) -> None:
    """Run the action configured for ``point``, if any."""
    if not _RULES:
        return
    action = _RULES.get(point)
    if action is None:
        return
    name, _, arg = action.partition(":")
    name, _, chance = name.partition("@")
    if chance and random.random() >= float(chance):
        return
    if name == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif name == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif name == "sleep":
        time.sleep(float(arg or "1"))
    elif name == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
