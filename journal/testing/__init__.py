"""Test support shipped with the package: a throw-away ``redis-server`` (:class:`RedisServer`),
the fault hooks of :mod:`journal.testing.faults`, and :mod:`journal.testing.fake_driver`
(scripted Redis replies and a fake clock for the pure protocols). Never imported by
``import journal``."""

from journal.testing.redis_server import RedisServer

__all__ = ["RedisServer"]
