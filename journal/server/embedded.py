"""The embedded Redis: one private ``redis-server`` per journal root, shared by every process.

When no Redis URL is configured, the journal calls :func:`ensure_embedded` with its root.
That starts (or finds) a detached ``redis-server`` that listens only on a unix socket, with
no TCP port and no persistence, and returns its ``unix://`` URL. Every process that uses the
same root (a CLI call, a worker, a subscriber) gets the same server.

Layout, under ``<root>/redis/``::

    redis.sock     the unix socket (mode 0700: only the owner may connect)
    redis.pid      the daemon's pid, written by redis-server itself
    redis.log      its log
    lock           an fcntl lock file, held while starting or stopping

The socket path is limited by the OS (``sun_path``: 107 bytes on Linux). When
``<root>/redis/redis.sock`` is longer than that, the socket goes to
``/tmp/journal-<uid>-<hash>/redis.sock`` instead, where ``<hash>`` is derived from the
root's absolute path: every process computes the same short path for the same root. The
pidfile, log and lock stay under the root.

Starting is race-safe: several processes may call :func:`ensure_embedded` at once. A
fast path answers without locking when the server is already up; otherwise the caller takes
an exclusive ``fcntl`` lock on ``<root>/redis/lock``, checks again, and only then starts a
server. The lock is released by the kernel if its holder dies.

The server keeps nothing on disk. That is by design (docs/design.md): the JSONL files are the
truth, and the journal rebuilds whatever Redis state it needs from them after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from journal.errors import RedisUnavailable
from journal.server._process import daemon_status, start_daemon, stop_daemon

__all__ = [
    "EmbeddedPaths",
    "EmbeddedStatus",
    "embedded_paths",
    "embedded_status",
    "ensure_embedded",
    "stop_embedded",
]

# sun_path is 108 bytes on Linux (104 on the BSDs and macOS), including the trailing NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
# /tmp, not tempfile.gettempdir(): $TMPDIR can itself be long (macOS puts it under
# /var/folders/...), and the whole point of the fallback is a short path.
_SHORT_BASE = Path("/tmp")
_START_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    """Where the embedded server of one root keeps its socket, pidfile, log and lock."""

    root: Path
    dir: Path  # <root>/redis: the server's working directory
    socket: Path
    pidfile: Path
    logfile: Path
    lockfile: Path

    @property
    def url(self) -> str:
        return f"unix://{quote(str(self.socket))}?db=0"

    @property
    def short_socket(self) -> bool:
        """True when the socket lives under /tmp because the root's path is too long."""
        return not self.socket.is_relative_to(self.dir)


@dataclass(frozen=True, slots=True)
class EmbeddedStatus:
    """A running embedded server."""

    pid: int
    url: str
    paths: EmbeddedPaths


def embedded_paths(root: str | os.PathLike[str]) -> EmbeddedPaths:
    """The paths of the embedded server of ``root`` (nothing is created)."""
    base = Path(root).expanduser().absolute()
    directory = base / "redis"
    sock = directory / "redis.sock"
    if len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
        # Same root, same hash: every process finds the same socket. The uid keeps two
        # users with the same root path (e.g. a shared NFS home) apart.
        digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:16]
        sock = _SHORT_BASE / f"journal-{os.getuid()}-{digest}" / "redis.sock"
    return EmbeddedPaths(
        root=base,
        dir=directory,
        socket=sock,
        pidfile=directory / "redis.pid",
        logfile=directory / "redis.log",
        lockfile=directory / "lock",
    )


def _check_private_dir(path: Path) -> None:
    """The short socket directory sits in world-writable /tmp: make sure it is ours.

    Another local user could create it first and then see (or replace) our socket. We
    create it 0700, and refuse one that is owned by someone else or is not a directory.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RedisUnavailable(
            f"{path} (the embedded Redis socket directory) exists but is not a directory "
            "owned by this user; remove it or use a shorter --root"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def _prepare_dirs(paths: EmbeddedPaths) -> None:
    paths.dir.mkdir(parents=True, exist_ok=True)
    if paths.short_socket:
        _check_private_dir(paths.socket.parent)


@contextlib.contextmanager
def _locked(paths: EmbeddedPaths) -> Iterator[None]:
    """Exclusive lock on ``<root>/redis/lock`` while starting or stopping the server."""
    _prepare_dirs(paths)
    fd = os.open(paths.lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # Blocking: a concurrent start finishes within the start timeout, and the kernel
        # drops the lock if that process dies, so this cannot wait forever.
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(paths: EmbeddedPaths) -> int | None:
    if not paths.pidfile.exists():
        return None
    return daemon_status(paths.pidfile, paths.socket)


def embedded_status(root: str | os.PathLike[str]) -> EmbeddedStatus | None:
    """The running embedded server of ``root``, or None when none answers."""
    paths = embedded_paths(root)
    pid = _running_pid(paths)
    return None if pid is None else EmbeddedStatus(pid, paths.url, paths)


def ensure_embedded(root: str | os.PathLike[str]) -> str:
    """Start the embedded server of ``root`` unless it runs already; return its URL.

    Raises:
        RedisServerNotFound: no ``redis-server`` binary (see ``find_redis_server``).
        RedisUnavailable: the server did not start (the message carries its log tail).
    """
    paths = embedded_paths(root)
    if _running_pid(paths) is not None:  # fast path, no lock: the common case
        return paths.url
    with _locked(paths):
        # Someone may have started it while we waited for the lock: start_daemon is
        # idempotent (it returns the pid of a live server that answers at the socket).
        start_daemon(
            paths.socket,
            paths.pidfile,
            paths.logfile,
            dir=paths.dir,
            timeout=_START_TIMEOUT,
        )
    return paths.url


def stop_embedded(root: str | os.PathLike[str]) -> int | None:
    """Stop the embedded server of ``root``. Returns its pid, or None if none was running.

    Connected clients lose their connection; the journal's state is rebuilt from the files
    the next time a server starts, so stopping never loses an event.
    """
    paths = embedded_paths(root)
    if not paths.dir.exists():
        return None
    with _locked(paths):
        pid = _read_pid(paths.pidfile)
        if not stop_daemon(paths.pidfile):
            return None
        # Redis removes its socket on a clean shutdown, but not after a SIGKILL.
        with contextlib.suppress(FileNotFoundError):
            paths.socket.unlink()
        if paths.short_socket:
            with contextlib.suppress(OSError):
                paths.socket.parent.rmdir()
    return pid
