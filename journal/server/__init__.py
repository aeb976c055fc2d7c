"""Locating and running ``redis-server``: the binary, the detached daemon, and the embedded
server that a root gets when no Redis URL is configured."""

from journal.server._process import (
    ENV_REDIS_SERVER,
    daemon_status,
    find_redis_server,
    redis_server_version,
    start_daemon,
    stop_daemon,
)

__all__ = [
    "ENV_REDIS_SERVER",
    "daemon_status",
    "find_redis_server",
    "redis_server_version",
    "start_daemon",
    "stop_daemon",
]
