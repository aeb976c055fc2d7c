"""Turn the settings into a redis-py client: one server, a Redis Cluster, or Sentinel.

Which one follows from the URL (and the ``cluster`` setting):

=========================================================  ==============================
``redis://[user:pass@]host:port[/db][?opts]``               one server (``rediss://``: TLS)
``unix://[user:pass@]/path/redis.sock[?db=N]``              one server on a unix socket
``redis+cluster://[user:pass@]h1:p1[,h2:p2...][?opts]``     Redis Cluster, seed nodes
``rediss+cluster://...``                                    Redis Cluster over TLS
``redis+sentinel://[user:pass@]s1:p1[,s2:p2...]/master[/db][?opts]``  Sentinel
``rediss+sentinel://...``                                   Sentinel, TLS to every node
=========================================================  ==============================

``cluster=True`` (``JOURNAL_CLUSTER=1``) with a plain ``redis://`` or ``rediss://`` URL means
the same as the ``+cluster`` form with that one seed. Cluster mode needs sharded pub/sub
(``JournalSettings`` forces ``sharded_pubsub`` on; an explicit ``sharded_pubsub=False`` is
refused). In cluster mode the database must be 0. Query options are redis-py's URL options
(``socket_timeout``, ``ssl_cert_reqs``, ``ssl_ca_certs``, ...) and win over the settings;
the sentinel URL also takes ``sentinel_username`` and ``sentinel_password`` for the
sentinels themselves (the user and password before ``@`` are for the data nodes).

Every client gets the journal's timeouts (``socket_timeout_s`` for connect and read) and a
30 s connection health check. Construction errors become :class:`RedisUnavailable` (cannot
connect) or :class:`InvalidInput` (a malformed URL), never a raw redis-py error.

Pub/sub on a cluster (:func:`sync_owners` and :func:`sync_pubsub_on`, their asyncio forms,
and :func:`sync_pubsub`/:func:`async_pubsub` for one channel): a subscription listens on
plain pub/sub connections, one to each primary that owns one of its channels' slots (one
for a single session; the sharded firehose groups its sessions per owner), not redis-py's
``ClusterPubSub``. The subscription's own health checks ping on each of those connections, and
its own reconnect logic stays the only one: ``ClusterPubSub`` pings through another
connection and migrates shard subscriptions by itself in the background. On every
reconnect the slot map is refreshed first, so a subscription follows a failover or a slot
migration to the new owner (Redis tells subscribers of a slot it loses with a
``sunsubscribe``; a killed node drops the connection).
"""

from __future__ import annotations

import math
import re
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode

import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.client
import redis.cluster
import redis.sentinel
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from journal.errors import InvalidInput, RedisUnavailable
from journal.settings import JournalSettings, redact_url

__all__ = [
    "CLIENT_ERRORS",
    "AsyncClient",
    "SyncClient",
    "Target",
    "async_client",
    "async_owners",
    "async_pubsub",
    "async_pubsub_on",
    "check_client",
    "client_options",
    "is_cluster",
    "parse_target",
    "sync_client",
    "sync_owners",
    "sync_pubsub",
    "sync_pubsub_on",
]

SyncClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"
AsyncClient: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"

#: What redis-py raises when Redis is unreachable or refuses. ``RedisClusterException``
#: (no slot owner known, no seed reachable, ...) does not derive from ``RedisError``.
CLIENT_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
_PLAIN_SCHEMES = {"redis", "rediss", "unix"}
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed journal Redis URL.

    ``url`` is a URL redis-py understands (``redis://``, ``rediss://`` or ``unix://``): the
    server, the first cluster seed, or (sentinel) the data nodes' options with the first
    sentinel as a placeholder host. ``seeds`` are every cluster seed or sentinel.
    """

    mode: Literal["single", "cluster", "sentinel"]
    url: str
    seeds: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def _hosts(hostlist: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for part in hostlist.split(","):
        match = _HOST_PORT.match(part.strip())
        if match is None:
            raise InvalidInput(f"cannot parse host {part!r} in redis URL {redact_url(url)}")
        host = match.group("v6") or match.group("host")
        port = int(match.group("port") or default_port)
        if not 0 < port < 65536:
            raise InvalidInput(f"port {port} out of range in redis URL {redact_url(url)}")
        out.append((host, port))
    return tuple(out)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_target(url: str, *, cluster: bool = False) -> Target:
    """Parse a journal Redis URL (see the module docstring). Raises :class:`InvalidInput`."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _PLAIN_SCHEMES | CLUSTER_SCHEMES.keys() | SENTINEL_SCHEMES.keys():
        raise InvalidInput(
            f"unsupported redis URL {redact_url(url)}: use redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
        )
    if scheme in _PLAIN_SCHEMES and not cluster:
        return Target("single", url)
    if scheme == "unix":
        raise InvalidInput("cluster mode needs TCP seed nodes: a unix:// URL cannot name a cluster")
    if scheme in SENTINEL_SCHEMES and cluster:
        raise InvalidInput("cluster=True does not go with a redis+sentinel:// URL; pick one")
    # scheme://[userinfo@]hostlist[/path][?query][#fragment]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostlist = netloc.rpartition("@")
    auth = f"{userinfo}{at}"
    path, _, query = tail.partition("?")
    query = query.partition("#")[0]
    if not hostlist:
        raise InvalidInput(f"no host in redis URL {redact_url(url)}")
    if scheme in SENTINEL_SCHEMES:
        seeds = _hosts(hostlist, 26379, url)
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise InvalidInput(
                f"a sentinel URL names the master and optionally a db: "
                f"redis+sentinel://host:port[,host:port]/MASTER[/DB], got {redact_url(url)}"
            )
        pairs = parse_qsl(query, keep_blank_values=True)
        sentinel_auth = {k: v for k, v in pairs if k in _SENTINEL_QUERY}
        kept = urlencode([(k, v) for k, v in pairs if k not in _SENTINEL_QUERY])
        db = parts[1] if len(parts) == 2 else "0"
        base = SENTINEL_SCHEMES[scheme]
        plain = f"{base}://{auth}{_netloc(*seeds[0])}/{db}" + (f"?{kept}" if kept else "")
        return Target("sentinel", plain, seeds, parts[0], sentinel_auth)
    seeds = _hosts(hostlist, 6379, url)
    if path.strip("/") not in ("", "0"):
        raise InvalidInput(f"Redis Cluster has only database 0, got {redact_url(url)}")
    base = CLUSTER_SCHEMES.get(scheme, scheme)
    plain = f"{base}://{auth}{_netloc(*seeds[0])}" + (f"?{query}" if query else "")
    return Target("cluster", plain, seeds)


def target_of(settings: JournalSettings, url: str | None = None) -> Target:
    """The target of ``url`` (default: the settings' URL), checked against the settings."""
    url = url if url is not None else settings.redis_url_value()
    if url is None:
        raise InvalidInput("no redis_url: set one (or JOURNAL_REDIS_URL), or use the embedded "
                           "server by opening the journal without a URL")
    target = parse_target(url, cluster=settings.cluster)
    if target.mode == "cluster" and not settings.sharded_pubsub:
        raise InvalidInput(
            "Redis Cluster mode needs sharded_pubsub=True (commit.lua publishes to the "
            "session's slot with SPUBLISH); the settings given have it off"
        )
    return target


def client_options(settings: JournalSettings) -> dict[str, Any]:
    """The connection options every journal client gets (URL query options win)."""
    timeout = settings.socket_timeout_s
    # RESP2: the journal uses nothing of RESP3, and redis-py's RESP3 parsers format every
    # pub/sub message into a debug log string (logged or not): ~10 µs per live event.
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
            "health_check_interval": 30, "protocol": 2}


class _KernelTimeouts:
    """Socket timeouts kept by the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking
    socket) instead of by Python: a Python socket with a timeout calls ``poll`` before every
    ``send`` and ``recv``, two extra syscalls per command on the append path. The limit is
    the same; a command that runs into it fails with a ``ConnectionError`` instead of a
    ``TimeoutError`` (both mean "Redis did not answer" to the journal). Only for plain TCP and
    unix sockets: TLS keeps Python's timeouts."""

    def __init__(self, *args: Any, kernel_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kernel_timeout = kernel_timeout

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        if self._kernel_timeout and sock.gettimeout() is None:
            seconds = int(self._kernel_timeout)
            micros = int((self._kernel_timeout - seconds) * 1_000_000)
            timeval = struct.pack("@ll", seconds, micros)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        return sock


class _TcpConnection(_KernelTimeouts, redis.connection.Connection):
    pass


class _UnixConnection(_KernelTimeouts, redis.connection.UnixDomainSocketConnection):
    pass


def _single_options(url: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options of a one-server blocking client: kernel-kept timeouts on TCP and unix
    sockets (see :class:`_KernelTimeouts`). A ``socket_timeout`` in the URL still wins, and
    brings Python's timeouts back."""
    scheme = url.partition("://")[0].lower()
    classes = {"redis": _TcpConnection, "unix": _UnixConnection}
    if scheme not in classes or not opts.get("socket_timeout"):
        return opts
    return {**opts, "connection_class": classes[scheme], "socket_timeout": None,
            "kernel_timeout": opts["socket_timeout"]}


def _url_options(url: str) -> dict[str, Any]:
    try:
        options: dict[str, Any] = dict(redis.connection.parse_url(url))  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise InvalidInput(f"bad redis URL {redact_url(url)}: {exc}") from None
    for name in ("host", "port", "path"):
        options.pop(name, None)
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True  # rediss: the sentinel pools pick their own TLS class
    return options


def _sentinel_kwargs(target: Target, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl"))}
    kwargs.update({k.removeprefix("sentinel_"): v for k, v in target.sentinel_auth.items()})
    return kwargs


class _SentinelRedis(redis.Redis):
    """The master client of a Sentinel set-up; ``close`` also closes the sentinel clients."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()


class _AsyncSentinelRedis(redis.asyncio.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def redis_error(exc: Exception, where: str) -> RedisUnavailable:
    """Translate a redis-py error. redis-py messages name host and port, never a password;
    ``where`` is already redacted."""
    if isinstance(exc, redis.ConnectionError) and "(11, 'Resource temporarily" in str(exc):
        # A kernel-kept socket timeout ran out (see _KernelTimeouts): say so plainly.
        return RedisUnavailable(f"redis at {where}: TimeoutError: Timeout reading from socket")
    return RedisUnavailable(f"redis at {where}: {type(exc).__name__}: {exc}")


def sync_client(settings: JournalSettings, url: str | None = None) -> SyncClient:
    """A blocking client for ``url`` (default: the settings' URL)."""
    target = target_of(settings, url)
    where = redact_url(url or settings.redis_url_value() or "")
    opts = client_options(settings)
    try:
        if target.mode == "single":
            return redis.Redis.from_url(target.url, **_single_options(target.url, opts))
        if target.mode == "cluster":
            seeds = [
                redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                for h, p in target.seeds[1:]
            ]
            return redis.cluster.RedisCluster.from_url(target.url, startup_nodes=seeds, **opts)
        options = {**opts, **_url_options(target.url)}
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.seeds), sentinel_kwargs=_sentinel_kwargs(target, options),
            **options,
        )
        assert target.service is not None
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service, redis_class=_SentinelRedis
        )
        return client
    except ValueError as exc:
        raise InvalidInput(f"bad redis URL {where}: {exc}") from None
    except CLIENT_ERRORS as exc:
        raise redis_error(exc, where) from None


def async_client(settings: JournalSettings, url: str | None = None) -> AsyncClient:
    """An asyncio client for ``url`` (default: the settings' URL). It connects lazily."""
    target = target_of(settings, url)
    where = redact_url(url or settings.redis_url_value() or "")
    opts = client_options(settings)
    try:
        if target.mode == "single":
            return redis.asyncio.Redis.from_url(target.url, **opts)
        if target.mode == "cluster":
            seeds = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in target.seeds[1:]]
            return redis.asyncio.cluster.RedisCluster.from_url(
                target.url, startup_nodes=seeds, **opts
            )
        options = {**opts, **_url_options(target.url)}
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.seeds), sentinel_kwargs=_sentinel_kwargs(target, options),
            **options,
        )
        assert target.service is not None
        client: redis.asyncio.Redis = sentinel.master_for(
            target.service, redis_class=_AsyncSentinelRedis
        )
        return client
    except ValueError as exc:
        raise InvalidInput(f"bad redis URL {where}: {exc}") from None
    except CLIENT_ERRORS as exc:
        raise redis_error(exc, where) from None


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def check_client(settings: JournalSettings, client: object) -> None:
    """Refuse a cluster client (given with ``redis_client=``) without sharded pub/sub."""
    if is_cluster(client) and not settings.sharded_pubsub:
        raise InvalidInput(
            "a Redis Cluster client needs sharded_pubsub=True (or cluster=True): commits "
            "publish to the session's own slot with SPUBLISH"
        )


# ----- pub/sub -------------------------------------------------------------------------------


def _owner_name(node: Any, channel: str) -> str:
    if node is None:  # only asked for a replica; typed Optional all the same
        raise SlotNotCoveredError(f"no node of the cluster serves the slot of {channel!r}")
    name: str = node.name
    return name


def sync_owners(client: SyncClient, channels: Sequence[str], *,
                refresh: bool = False) -> list[str]:
    """The node (``host:port``) of the primary that owns each channel's slot, or ``""`` for
    each off a cluster (the client's own server). The slot map is reloaded first when
    ``refresh``: after a lost connection the owner may have changed."""
    if not isinstance(client, redis.cluster.RedisCluster):
        return [""] * len(channels)
    if refresh:
        client.nodes_manager.initialize()
    return [_owner_name(client.get_node_from_key(c), c)  # type: ignore[no-untyped-call]
            for c in channels]


def sync_pubsub_on(client: SyncClient, owner: str) -> redis.client.PubSub:
    """A pub/sub object on one connection of its own: to ``owner`` (a name from
    :func:`sync_owners`) on a cluster, else to the client's server."""
    if isinstance(client, redis.cluster.RedisCluster):
        node = client.get_node(node_name=owner)  # type: ignore[no-untyped-call]
        if node is None:
            raise SlotNotCoveredError(f"node {owner} is no longer in the cluster's map")
        pubsub: redis.client.PubSub = client.get_redis_connection(node).pubsub()  # type: ignore[no-untyped-call]
        return pubsub
    plain: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    return plain


def sync_receive(pubsub: redis.client.PubSub, timeout: float) -> dict[str, Any] | None:
    """``pubsub.get_message(timeout=timeout)``, at one ``poll`` and one ``recv`` a message.

    redis-py's ``get_message`` asks whether the socket can be read by setting the socket's
    timeout, reading, and restoring the timeout (two ``ioctl`` around a ``poll`` and a
    ``recv``), then reads: about eight syscalls and 40 µs of CPU per live event. This is
    its ``parse_response`` step for step with only that question changed: a message
    already buffered is read at once, else one ``poll`` waits up to ``timeout`` for the
    socket to be readable (data, end of file or an error). Everything else is redis-py's
    own: the health-check ``PING`` and its reply, and on a connection error ``get_message``
    itself, whose retry reconnects and subscribes again or raises. The read is bounded by
    the socket's timeout (``socket_timeout_s``). Anything other than a plain socket with
    hiredis's reader (TLS, the pure-Python parser, a connection not up, no subscription
    yet) takes ``get_message`` itself."""
    conn = pubsub.connection
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    sock = getattr(parser, "_sock", None)
    health_reply = getattr(pubsub, "is_health_check_response", None)  # not in every redis-py
    if (conn is None or type(sock) is not socket.socket or not hasattr(reader, "has_data")
            or health_reply is None or not pubsub.subscribed
            or conn.should_reconnect()):
        message: dict[str, Any] | None = pubsub.get_message(timeout=timeout)
        return message
    pubsub.check_health()
    if not reader.has_data():
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(math.ceil(max(timeout, 0.0) * 1000)):
            return None
    try:
        response = conn.read_response(disconnect_on_error=False, push_request=True)
    except (redis.ConnectionError, redis.TimeoutError):
        # The read failed (a dead server, or close() shut the socket from another thread):
        # get_message itself takes over, so redis-py's retry reconnects and subscribes
        # again (or raises), and the wait after a reconnect stays bounded by ``timeout``.
        message = pubsub.get_message(timeout=timeout)
        return message
    if health_reply(response):
        pubsub.health_check_response_counter -= 1
        return None
    handled: dict[str, Any] | None = pubsub.handle_message(response)
    return handled


def sync_pubsub(client: SyncClient, channel: str, *, refresh: bool = False) -> redis.client.PubSub:
    """A pub/sub object on one connection: the client's own, or on a cluster the one of the
    primary that owns ``channel``'s slot (the slot map is reloaded first when ``refresh``)."""
    return sync_pubsub_on(client, sync_owners(client, [channel], refresh=refresh)[0])


async def async_owners(client: AsyncClient, channels: Sequence[str], *,
                       refresh: bool = False) -> list[str]:
    """The asyncio form of :func:`sync_owners`."""
    if not isinstance(client, redis.asyncio.cluster.RedisCluster):
        return [""] * len(channels)
    await client.initialize()
    if refresh:
        await client.nodes_manager.initialize()
    return [_owner_name(client.get_node_from_key(c), c) for c in channels]


def async_pubsub_on(client: AsyncClient, owner: str) -> redis.asyncio.client.PubSub:
    """The asyncio form of :func:`sync_pubsub_on`. On a cluster it opens a plain client on
    the owning primary, with the cluster's connection options (TLS, auth, timeouts)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        node = client.get_node(node_name=owner)
        if node is None:
            raise SlotNotCoveredError(f"node {owner} is no longer in the cluster's map")
        pool = redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        return redis.asyncio.Redis(connection_pool=pool).pubsub()
    return client.pubsub()


async def async_pubsub(
    client: AsyncClient, channel: str, *, refresh: bool = False
) -> redis.asyncio.client.PubSub:
    """The asyncio form of :func:`sync_pubsub`."""
    owners = await async_owners(client, [channel], refresh=refresh)
    return async_pubsub_on(client, owners[0])
