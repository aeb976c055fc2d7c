"""The entry points of the pure protocols, for the shells that run them (the journals,
the subscriptions and the command). Each is a generator of the operations of
:mod:`journal._core.ops`; the drivers of ``journal._io.drivers`` execute them.

Where the pieces live: ``ops`` (the operations), ``state`` (``Env``, ``Core``, lease
clocks), ``append``, ``read``, ``rebuild`` (rebuild, tail recovery, roll-forward),
``pipeline`` (pipelined-commit bookkeeping) and ``group_commit``.
"""

from journal._core.append import append, release_held
from journal._core.ops import Steps, text
from journal._core.read import head, read, session_state
from journal._core.state import Core, Env

__all__ = ["Core", "Env", "Steps", "append", "head", "read", "release_held", "session_state",
           "text"]
