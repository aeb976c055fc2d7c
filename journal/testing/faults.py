"""Fault points for tests: crash or stall a writer inside a chosen window of the protocol.

Nothing happens unless a test calls :func:`configure` (in-process) or a child process calls
:func:`configure_from_env`, which reads ``JOURNAL_FAULTS``. Either installs a hook in
``journal._fault_hook``; the production path only checks that hook for ``None``.

Format: ``point=action[,point=action]`` where action is ``kill`` (SIGKILL self), ``kill@P``
(with probability P), ``sleep:SECONDS``, ``stop`` (SIGSTOP self, a zombie writer until
someone sends SIGCONT) or ``enospc`` (raise ENOSPC). Points: ``after_begin``, ``mid_write``
(half the bytes are written, then the action), ``after_write``, ``after_fsync``,
``before_commit``, ``after_commit``, ``fsync`` (before the fdatasync: use ``sleep:S`` for a
slow disk), ``before_take_back`` (a write failed: before its bytes are cut).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time

from journal import _fault_hook

ENV = "JOURNAL_FAULTS"


class _Rules:
    def __init__(self, spec: str) -> None:
        self.rules: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, action = item.partition("=")
            self.rules[point] = action

    def wants(self, point: str) -> bool:
        return point in self.rules

    def hit(self, point: str) -> None:
        action = self.rules.get(point)
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


def configure(spec: str | None) -> None:
    """Replace the active rules; ``None`` or ``""`` removes the hook."""
    _fault_hook.installed = _Rules(spec) if spec else None


def configure_from_env() -> None:
    """For child processes that tests start with ``JOURNAL_FAULTS`` in their environment."""
    configure(os.environ.get(ENV))
