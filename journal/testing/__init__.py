"""Test support shipped with the package: a throw-away ``redis-server`` (:class:`RedisServer`)
and the fault hooks of :mod:`journal.testing.faults`. Never imported by ``import journal``."""

from journal.testing.redis_server import RedisServer

__all__ = ["RedisServer"]
