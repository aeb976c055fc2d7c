"""A private, throw-away ``redis-server`` child process for tests, benchmarks and scripts.

:class:`RedisServer` listens on a free loopback port or a unix socket, without persistence,
and is killed and reaped when closed (or garbage-collected). Tests kill and restart it to
inject faults. The password, if any, goes to the server on its stdin, never its argv.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self
from urllib.parse import quote

from journal.errors import InvalidInput, RedisServerNotFound, RedisUnavailable
from journal.server._process import (
    _DEFAULT_START_TIMEOUT,
    _DEFAULT_STOP_TIMEOUT,
    _KILL_WAIT,
    _LOOPBACK,
    Address,
    _config_text,
    _free_port,
    _ping,
    _read_tail,
    _redact,
    _unix_path,
    find_redis_server,
)

__all__ = ["RedisServer"]

# --------------------------------------------------------------------------------------
# RedisServer: one child process owned by this Python process
# --------------------------------------------------------------------------------------


class _Resources:
    """What must be released even if the owner never calls close().

    Kept apart from :class:`RedisServer` so that ``weakref.finalize`` can hold it without
    keeping the server object alive; the finalizer runs on garbage collection or at
    interpreter exit, so no server process or temp dir outlives a forgotten handle.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.tmpdir: Path | None = None

    def kill(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            try:
                proc.wait(timeout=_KILL_WAIT)
            except subprocess.TimeoutExpired as exc:
                raise RedisUnavailable(
                    f"redis-server pid {proc.pid} did not exit {_KILL_WAIT:.0f}s after SIGKILL"
                ) from exc
        self.forget_process()

    def forget_process(self) -> None:
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def release(self) -> None:
        try:
            self.kill()
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None


class RedisServer:
    """A handle on one private ``redis-server`` child process.

    Listens on loopback TCP (``port``; a free one is picked when neither ``port`` nor
    ``unix_socket`` is given), on a unix socket (``unix_socket``; TCP is then disabled
    with ``--port 0``), or on both when both are given (``url`` then names the socket).
    Nothing is persisted, so :meth:`restart` always comes back empty.

    Use as a context manager, or call :meth:`start` and later :meth:`close`. A handle
    that is dropped without either is still cleaned up when garbage-collected or at
    interpreter exit (via ``weakref.finalize``, not ``__del__``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: str | Path | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        dir: Path | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise InvalidInput(f"port must be in 1..65535, got {port}")
        if isinstance(extra_args, str):
            raise InvalidInput("extra_args must be a sequence of arguments, not one string")
        self._requested_port = port
        self._unix_socket = _unix_path(unix_socket) if unix_socket is not None else None
        self._binary = binary
        self._extra_args = tuple(extra_args)
        self._password = password
        self._dir = Path(dir).absolute() if dir is not None else None
        # The TCP port in use: fixed at the first start so restart() comes back on it.
        self._port: int | None = port
        self._log_offset = 0
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)

    # -- properties --------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _LOOPBACK

    @property
    def port(self) -> int | None:
        """The TCP port, or None when only a unix socket is used (or before start)."""
        return self._port

    @property
    def unix_socket(self) -> Path | None:
        return self._unix_socket

    @property
    def binary(self) -> str | None:
        """The binary in use; resolved by :func:`find_redis_server` at the first start."""
        return self._binary

    @property
    def dir(self) -> Path | None:
        """The server's working directory (a temp dir unless one was given)."""
        return self._dir if self._dir is not None else self._res.tmpdir

    @property
    def log_path(self) -> Path | None:
        directory = self.dir
        return directory / "redis-server.log" if directory is not None else None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        proc = self._res.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def address(self) -> Address:
        """What to connect to: the unix socket path, else ``(host, port)``."""
        if self._unix_socket is not None:
            return str(self._unix_socket)
        if self._port is None:
            raise RedisUnavailable("redis-server has not been started yet; no port chosen")
        return (_LOOPBACK, self._port)

    @property
    def url(self) -> str:
        """A redis-py URL: ``redis://[:PASSWORD@]127.0.0.1:PORT/0`` or
        ``unix://[:PASSWORD@]/path?db=0``. Holds the password: do not log it."""
        if self._password is None:
            return self._url("")
        return self._url(f":{quote(self._password, safe='')}@")

    @property
    def redacted_url(self) -> str:
        """:attr:`url` with the password replaced by ``***``, safe to log."""
        return self._url(":***@" if self._password is not None else "")

    def _url(self, auth: str) -> str:
        address = self.address
        if isinstance(address, str):
            return f"unix://{auth}{quote(address)}?db=0"
        return f"redis://{auth}{address[0]}:{address[1]}/0"

    def __repr__(self) -> str:
        try:
            where = self.redacted_url
        except RedisUnavailable:
            where = "not started"
        return f"<RedisServer {where} pid={self.pid}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = _DEFAULT_START_TIMEOUT) -> Self:
        """Start the server and wait (up to ``timeout`` seconds) until it answers PING.

        Raises:
            RedisServerNotFound: no binary (see :func:`find_redis_server`).
            RedisUnavailable: the server exited or did not answer in time; the message
                carries the tail of its log. The process is killed and reaped first.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        if self._binary is None:
            self._binary = find_redis_server()
        if self._dir is None and self._res.tmpdir is None:
            self._res.tmpdir = Path(tempfile.mkdtemp(prefix="journal-redis-"))
        elif self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        # A port we picked ourselves may be grabbed by someone else before redis binds
        # it; try again with a fresh one. A port the caller chose (or that restart() must
        # keep) is never swapped.
        picking = self._port is None and self._unix_socket is None
        attempts = 3 if picking else 1
        for attempt in range(attempts):
            if picking:
                self._port = _free_port()
            try:
                self._start_once(timeout)
                return self
            except RedisUnavailable as exc:
                if attempt + 1 < attempts and "already in use" in str(exc):
                    continue
                if picking:
                    self._port = None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _argv(self) -> list[str]:
        assert self._binary is not None
        directory = self.dir
        assert directory is not None
        argv = [
            self._binary,
            "-",  # read the config (i.e. the password) from stdin; must be first
            "--port", str(self._port or 0),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", "",  # log to stdout, which goes to redis-server.log
        ]  # fmt: skip
        if "--bind" not in self._extra_args:
            # Only ever loopback, so protected mode (which refuses password-less clients
            # from non-loopback addresses) has nothing to protect.
            argv += ["--bind", _LOOPBACK, "--protected-mode", "no"]
        if self._unix_socket is not None:
            argv += ["--unixsocket", str(self._unix_socket), "--unixsocketperm", "700"]
        return argv + list(self._extra_args)

    def _start_once(self, timeout: float) -> None:
        log_path = self.log_path
        assert log_path is not None
        log = log_path.open("ab")
        self._log_offset = log.tell()
        try:
            proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            log.close()
            raise RedisServerNotFound(f"cannot run {self._binary}: {exc}") from exc
        self._res.proc, self._res.log = proc, log
        assert proc.stdin is not None
        try:
            proc.stdin.write(_config_text(self._password))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited already; reported below with its log
        self._wait_ready(proc, timeout)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if proc.poll() is not None:
                self._fail(f"redis-server exited with status {proc.returncode} during startup")
            # PING alone could be answered by another server that grabbed our port (a
            # free port is only free until someone binds it); the log line proves that
            # this process itself is listening.
            if self._says_ready() and _ping(self.address, self._password):
                return
            if time.monotonic() >= deadline:
                self._fail(f"redis-server did not answer PING within {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _says_ready(self) -> bool:
        log_path = self.log_path
        if log_path is None:
            return False
        with log_path.open("rb") as log:
            log.seek(self._log_offset)
            return b"ready to accept connections" in log.read().lower()

    def _fail(self, what: str) -> NoReturn:
        self._res.kill()
        log_path = self.log_path
        tail = _read_tail(log_path, self._log_offset) if log_path is not None else ""
        tail = _redact(tail, self._password)
        raise RedisUnavailable(f"{what} ({self.redacted_url}); log tail:\n{tail or '(empty)'}")

    def kill(self) -> None:
        """SIGKILL the server (if running) and reap it. Idempotent."""
        self._res.kill()

    def stop(self, timeout: float = _DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the server, SIGKILL it if it has not exited after ``timeout`` seconds,
        and reap it. Idempotent. The working directory (and its log) is kept until
        :meth:`close`."""
        proc = self._res.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self._res.kill()  # SIGKILLs only if still running; always reaps

    def restart(self, *, hard: bool = True, timeout: float = _DEFAULT_START_TIMEOUT) -> Self:
        """Stop the server (SIGKILL if ``hard``, else :meth:`stop`) and start a fresh one
        on the same port / unix socket. Memory is empty afterwards (no persistence)."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """:meth:`stop` the server and remove the temp dir (if this handle made one)."""
        try:
            self.stop()
        finally:
            self._res.release()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


