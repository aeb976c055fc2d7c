"""journal.embedded: one private redis-server per root, shared by every process using it.

Every test stops the servers it started (the ``root`` fixture's ``finally``), so no daemon
outlives the test even when an assertion fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from journal import EventRecord, Journal
from journal.server.embedded import embedded_paths, embedded_status, ensure_embedded, stop_embedded


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    base = tmp_path / "data"
    try:
        yield base
    finally:
        stop_embedded(base)


@pytest.mark.timeout(30)
def test_start_reuse_status_stop(root: Path) -> None:
    assert embedded_status(root) is None
    url = ensure_embedded(root)
    paths = embedded_paths(root)
    assert url == f"unix://{paths.socket}?db=0"
    assert paths.socket == root.absolute() / "redis" / "redis.sock"
    status = embedded_status(root)
    assert status is not None and status.url == url
    assert ensure_embedded(root) == url  # reused, not restarted
    again = embedded_status(root)
    assert again is not None and again.pid == status.pid
    client = redis.Redis.from_url(url)
    try:
        # No persistence and no TCP port: the files are the truth, Redis is a cache.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("port") == {"port": "0"}
    finally:
        client.close()
    assert paths.pidfile.exists() and paths.logfile.exists()
    assert stop_embedded(root) == status.pid
    assert embedded_status(root) is None
    assert not paths.socket.exists()
    assert stop_embedded(root) is None  # idempotent


_START = textwrap.dedent(
    """
    import sys
    from journal.server.embedded import embedded_status, ensure_embedded
    url = ensure_embedded(sys.argv[1])
    status = embedded_status(sys.argv[1])
    print(url, status.pid if status else None)
    """
)


@pytest.mark.timeout(60)
def test_processes_starting_at_once_share_one_server(root: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _START, str(root)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            outputs.append(out.split())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len({tuple(o) for o in outputs}) == 1  # same URL, same pid
    status = embedded_status(root)
    assert status is not None and str(status.pid) == outputs[0][1]


@pytest.mark.timeout(30)
def test_long_root_falls_back_to_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(deep / "redis" / "redis.sock")) > 107
    try:
        url = ensure_embedded(deep)
        paths = embedded_paths(deep)
        assert paths.short_socket
        assert paths.socket.parent.parent == Path("/tmp")
        assert paths.socket.parent.name.startswith(f"journal-{os.getuid()}-")
        assert (paths.socket.parent.stat().st_mode & 0o777) == 0o700
        assert embedded_paths(deep) == paths  # the same root always maps to the same path
        assert paths.pidfile.parent == deep.absolute() / "redis"
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        stop_embedded(deep)
    assert not paths.socket.parent.exists()


@pytest.mark.timeout(30)
def test_journal_without_a_url_uses_the_embedded_server(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_REDIS_URL", raising=False)
    with Journal(root) as j:
        j.append(EventRecord.new("s1", "main", 1, {"type": "PhaseEntered", "phase": "sleep"}))
        assert j.head("s1") == 1
    assert embedded_status(root) is not None
    # Stopping loses nothing: the next server is empty and the state is rebuilt from files.
    stop_embedded(root)
    with Journal(root) as j:
        assert j.head("s1") == 1


@pytest.mark.timeout(30)
def test_stale_pidfile_is_replaced(root: Path) -> None:
    paths = embedded_paths(root)
    paths.dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    paths.pidfile.write_text(f"{dead.pid}\n")  # a process that no longer exists
    ensure_embedded(root)
    status = embedded_status(root)
    assert status is not None and status.pid != dead.pid
