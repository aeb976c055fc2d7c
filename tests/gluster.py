"""A real GlusterFS volume with two FUSE client mounts, standing for two hosts.

:class:`GlusterRig` starts everything as plain processes and tears it down by pid:

- a private **network namespace** (``unshare -n``, held open by one ``sleep`` process) with
  its loopback up and one extra address on it, ``10.77.0.1``. glusterd refuses loopback
  addresses for bricks ("provide a valid hostname/ip other than localhost, 127.0.0.1 or
  loopback address"), and an address inside a private namespace is reachable only from
  within, so nothing listens on the machine's network. Every GlusterFS process of the rig
  (glusterd, the brick's glusterfsd, both FUSE clients) lives in that namespace, so the rig
  owns its ports (24007 and the brick port) and two rigs never collide;
- **glusterd** in the foreground (``-N``) with a volfile whose ``working-directory`` and
  ``glusterd-sockfile`` point into the rig's temporary directory, so ``/var/lib/glusterd``
  is never touched; the ``gluster`` CLI talks to it through that socket;
- one **volume** on a local brick (``force``: the brick sits on the root filesystem), with
  :data:`COHERENT_VOLUME_OPTIONS`;
- **two FUSE mounts** of it, ``hosts["a"]`` and ``hosts["b"]``, each a separate
  ``glusterfs`` client process with its own caches, mounted with
  :data:`COHERENT_MOUNT_OPTIONS`. :meth:`GlusterRig.mount` adds more (e.g. an incoherent one,
  with the default attribute cache).

The processes in the namespace are found by their ``/proc/<pid>/ns/net`` link, so teardown
kills exactly the rig's own processes (the FUSE clients and glusterfsd daemonize, and their
pids only show up in pidfiles). Redis is not part of the rig: tests start their own.

``skip_reason()`` says why the rig cannot run here (no GlusterFS installed, not root, no
``/dev/fuse``, no namespaces), so the tests skip with that reason instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

ADDRESS = "10.77.0.1"

# Measured on this rig (see README, "Several hosts"): with GlusterFS's default client caches
# another mount's size lags by up to a second, and an O_APPEND write on a lagging mount
# reports the wrong landed offset. md-cache (stat-prefetch / md-cache-timeout) and the FUSE
# attribute cache are what matter; the other client caches are off as well, because the
# journal's correctness must not depend on what each of them happens to cache.
COHERENT_VOLUME_OPTIONS: dict[str, str] = {
    "performance.stat-prefetch": "off",
    "performance.md-cache-timeout": "0",
    "performance.write-behind": "off",
    "performance.quick-read": "off",
    "performance.io-cache": "off",
    "performance.read-ahead": "off",
    "performance.open-behind": "off",
    "performance.readdir-ahead": "off",
    "performance.nl-cache": "off",
}
COHERENT_MOUNT_OPTIONS: tuple[str, ...] = (
    "--attribute-timeout=0",
    "--entry-timeout=0",
    "--negative-timeout=0",
)


def skip_reason() -> str | None:
    """Why the rig cannot run here, or None when it can."""
    for tool in ("glusterd", "glusterfs", "gluster", "unshare", "nsenter", "ip", "umount"):
        if shutil.which(tool) is None:
            return (f"{tool} is not installed (apt-get install glusterfs-server "
                    "glusterfs-client iproute2 util-linux)")
    if os.geteuid() != 0:
        return "the GlusterFS rig needs root (glusterd, FUSE mounts, network namespaces)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: FUSE mounts cannot work here"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True,
                           timeout=10, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


class RigError(RuntimeError):
    pass


class GlusterRig:
    """One volume, two mounts. Use as a context manager, or call start() and close()."""

    def __init__(self, base: Path,
                 volume_options: dict[str, str] | None = None,
                 mount_options: tuple[str, ...] = COHERENT_MOUNT_OPTIONS) -> None:
        self.base = base
        self.volume = f"journal{uuid.uuid4().hex[:8]}"
        self.volume_options = (COHERENT_VOLUME_OPTIONS if volume_options is None
                               else volume_options)
        self.mount_options = mount_options
        self.brick = base / "brick"
        self.logs = base / "logs"
        self.socket = base / "glusterd.socket"
        self.hosts: dict[str, Path] = {}
        self._holder: subprocess.Popen[bytes] | None = None
        self._glusterd: subprocess.Popen[bytes] | None = None
        self._netns: str | None = None

    def __enter__(self) -> GlusterRig:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- start -------------------------------------------------------------------------

    def start(self) -> None:
        for d in (self.base, self.brick, self.logs, self.base / "glusterd"):
            d.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
        _wait(lambda: _netns_of(self._pid()) != _netns_of(os.getpid()), 5, "the namespace")
        self._netns = _netns_of(self._pid())
        self._in_ns(["ip", "link", "set", "lo", "up"])
        self._in_ns(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"])
        volfile = self.base / "glusterd.vol"
        volfile.write_text(_GLUSTERD_VOL.format(workdir=self.base / "glusterd",
                                                socket=self.socket))
        self._glusterd = subprocess.Popen(
            ["nsenter", "-t", str(self._pid()), "-n", "glusterd", "-N", "-f", str(volfile),
             "-p", str(self.base / "glusterd.pid"), "-l", str(self.logs / "glusterd.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: self._cli("volume", "list", check=False).returncode == 0, 20,
              "glusterd to answer")
        self._cli("volume", "create", self.volume, f"{ADDRESS}:{self.brick}", "force")
        for key, value in self.volume_options.items():
            self._cli("volume", "set", self.volume, key, value)
        self._cli("volume", "start", self.volume)
        for name in ("a", "b"):
            self.hosts[name] = self.mount(name, self.mount_options)

    def mount(self, name: str, options: tuple[str, ...]) -> Path:
        """One more FUSE client mount of the volume: one more "host"."""
        point = self.base / f"mnt-{name}"
        point.mkdir(exist_ok=True)
        self._in_ns(["glusterfs", f"--volfile-server={ADDRESS}", f"--volfile-id={self.volume}",
                     *options, "-l", str(self.logs / f"mnt-{name}.log"),
                     "-p", str(self.base / f"mnt-{name}.pid"), str(point)])
        _wait(lambda: os.path.ismount(point), 15, f"the mount {point}")
        self.hosts[name] = point
        return point

    # ----- stop --------------------------------------------------------------------------

    def close(self) -> None:
        """Unmount, then kill every process in the rig's namespace, and reap what we started.
        Safe to call twice, and after a failed start."""
        for point in list(self.hosts.values()):
            _unmount(point)
        self.hosts.clear()
        if self._netns is not None:
            for pid in _pids_in_netns(self._netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in (self._glusterd, self._holder):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
        self._glusterd = self._holder = None
        if self._netns is not None:
            _wait(lambda: not _pids_in_netns(self._netns or ""), 10, "the rig's processes to end")
            self._netns = None
        # glusterd keeps brick pidfiles and sockets under /var/run/gluster/vols/<volume>.
        shutil.rmtree(f"/var/run/gluster/vols/{self.volume}", ignore_errors=True)

    # ----- helpers -----------------------------------------------------------------------

    def _pid(self) -> int:
        assert self._holder is not None
        return self._holder.pid

    def _in_ns(self, args: list[str]) -> None:
        done = subprocess.run(["nsenter", "-t", str(self._pid()), "-n", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RigError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")

    def _cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["gluster", "--mode=script", f"--glusterd-sock={self.socket}",
                               f"--log-file={self.logs / 'cli.log'}", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise RigError(f"gluster {' '.join(args)}: {(done.stderr or done.stdout).strip()}")
        return done


_GLUSTERD_VOL = """volume management
    type mgmt/glusterd
    option working-directory {workdir}
    option glusterd-sockfile {socket}
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
"""


def _netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _pids_in_netns(netns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _netns_of(int(entry)) == netns:
            pids.append(int(entry))
    return pids


def _unmount(point: Path) -> None:
    for args in (["umount", str(point)], ["umount", "-l", str(point)]):
        if not os.path.ismount(point):
            return
        subprocess.run(args, capture_output=True, timeout=30, check=False)
        time.sleep(0.1)


def _wait(cond: object, timeout: float, what: str) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RigError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
