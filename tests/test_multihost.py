"""Several hosts for real: one GlusterFS volume, two FUSE mounts (two "hosts", each with its own
client caches), one Redis, real writer processes on both.

The rig (tests/gluster.py) is started once per module; each test uses its own directory on
the volume and its own redis-server. Short by default; ``JOURNAL_MULTIHOST_LONG=1`` runs every
kill window and more events (``scripts/gluster_rig.py --suite`` does that by hand).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal import EventRecord, Journal, StorageError
from journal.testing import RedisServer
from tests import gluster
from tests.backends import Backend
from tests.support import Writers, check_history, wait_all

LONG = os.environ.get("JOURNAL_MULTIHOST_LONG") == "1"
SCALE = 4 if LONG else 1
WINDOWS = (["after_begin", "mid_write", "after_fsync", "before_commit", "after_commit"]
           if LONG else ["mid_write", "after_fsync"])

pytestmark = [pytest.mark.slow, pytest.mark.multihost]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gluster.GlusterRig]:
    reason = gluster.skip_reason()
    if reason:
        pytest.skip(f"GlusterFS rig cannot run here: {reason}")
    # JOURNAL_GLUSTER_MOUNT_OPTIONS: run the suite on other mount options (the README's
    # settings matrix was measured this way); the coherent ones by default.
    options = tuple(os.environ.get("JOURNAL_GLUSTER_MOUNT_OPTIONS", "").split())
    with gluster.GlusterRig(tmp_path_factory.mktemp("gluster"),
                            mount_options=options or gluster.COHERENT_MOUNT_OPTIONS) as r:
        yield r


class Hosts(Writers):
    """One journal root on the shared volume, seen through each host's mount, and a Redis.
    The writers' acks stay local: they are the test's own record."""

    def __init__(self, rig: gluster.GlusterRig, server: RedisServer, tmp: Path) -> None:
        super().__init__(tmp)
        self.rig = rig
        self.server = server
        self.tmp = tmp
        self.dir = f"t-{uuid.uuid4().hex[:10]}"

    def root(self, host: str) -> Path:
        return self.rig.hosts[host] / self.dir

    def backend(self, host: str) -> Backend:
        return Backend(f"gluster-{host}", self.root(host), url=self.server.url,
                       server=self.server)

    def journal(self, host: str, **options: object) -> Journal:
        return Journal(self.root(host), self.server.url, lease_ms=2000, **options).open()

    def spawn(self, host: str, count: int, faults: str = "", session: str = "race",
              **opts: object) -> subprocess.Popen[bytes]:
        return self.start(self.root(host), self.server.url, session, count,
                          f"{host}{len(self.procs) + 1}", faults, **opts)


@pytest.fixture
def hosts(rig: gluster.GlusterRig, tmp_path: Path) -> Iterator[Hosts]:
    with RedisServer(dir=tmp_path / "redis") as server:
        h = Hosts(rig, server, tmp_path)
        try:
            yield h
        finally:
            h.close()


def ev(session: str, seq: int, text: str = "x") -> EventRecord:
    return EventRecord.new(session, "main", seq, {"type": "UserMessage", "content": text})


def errors(procs: list[subprocess.Popen[bytes]]) -> list[bytes]:
    return [p.stderr.read() for p in procs if p.stderr and p.returncode != 0]


# ----- the race, kills, a zombie, Redis restarts ---------------------------------------------


@pytest.mark.timeout(180)
def test_four_writers_on_two_hosts_race_on_one_session(hosts: Hosts) -> None:
    per = 15 * SCALE
    procs = [hosts.spawn(host, per) for host in ("a", "b", "a", "b")]
    wait_all(procs, 150)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors(procs)
    acked = hosts.acked()
    assert len(acked) == 4 * per
    # Checked through the other host's view too: both mounts show the same history.
    assert check_history(hosts.backend("b"), "race", acked) == 4 * per
    assert check_history(hosts.backend("a"), "race", acked) == 4 * per + 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("window", WINDOWS)
def test_writers_on_two_hosts_killed_inside_a_window(hosts: Hosts, window: str) -> None:
    target = 20 * SCALE
    faults = f"{window}=kill@0.2"
    live = [hosts.spawn(h, target, faults=faults, lease_ms=500) for h in ("a", "b")]
    spawned = 2
    kills = 0
    deadline = time.monotonic() + 60 * SCALE
    while time.monotonic() < deadline and (len(hosts.acked()) < target or kills == 0):
        for p in list(live):
            if p.poll() is None:
                continue
            live.remove(p)
            if p.returncode == -signal.SIGKILL:
                kills += 1
            else:
                assert p.returncode == 0, p.stderr.read() if p.stderr else ""
        while len(live) < 2:
            spawned += 1
            live.append(hosts.spawn("ab"[spawned % 2], target, faults=faults, lease_ms=500))
        time.sleep(0.05)
    for p in live:
        p.kill()
        p.wait(timeout=10)
    assert kills > 0, "the fault never fired: the test proved nothing"
    assert len(hosts.acked()) >= target
    check_history(hosts.backend("b"), "race", hosts.acked())


@pytest.mark.timeout(180)
def test_a_zombie_writer_on_one_host_wakes_after_the_other_host_took_over(hosts: Hosts) -> None:
    zombie = hosts.spawn("a", 3, faults="after_fsync=stop", lease_ms=500)
    deadline = time.monotonic() + 30
    while not _stopped(zombie.pid):
        assert zombie.poll() is None, errors([zombie])
        assert time.monotonic() < deadline, "the zombie never stopped"
        time.sleep(0.01)
    others = [hosts.spawn("b", 10, lease_ms=500) for _ in range(2)]
    wait_all(others, 120)
    assert [p.returncode for p in others] == [0, 0], errors(others)
    os.kill(zombie.pid, signal.SIGCONT)
    end = time.monotonic() + 60
    while zombie.poll() is None and time.monotonic() < end:
        if _stopped(zombie.pid):
            time.sleep(0.6)  # let its lease expire each time
            os.kill(zombie.pid, signal.SIGCONT)
        time.sleep(0.01)
    assert zombie.wait(timeout=10) == 0, errors([zombie])
    assert check_history(hosts.backend("b"), "race", hosts.acked()) == 23


@pytest.mark.timeout(180)
def test_redis_restarts_empty_while_both_hosts_write(hosts: Hosts) -> None:
    per = 25 * SCALE
    procs = [hosts.spawn(h, per) for h in ("a", "b")]
    for _ in range(2):
        time.sleep(0.7)
        hosts.server.restart()  # no persistence: every head and lease is gone
    wait_all(procs, 150)
    assert [p.returncode for p in procs] == [0, 0], errors(procs)
    assert check_history(hosts.backend("a"), "race", hosts.acked()) == 2 * per


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"
    except OSError:
        return False


# ----- subscriptions, tail recovery and rebuild across hosts --------------------------------


@pytest.mark.timeout(120)
def test_a_subscriber_on_host_b_follows_writers_on_host_a(hosts: Hosts) -> None:
    total = 30 * SCALE
    got: list[EventRecord] = []
    failure: list[BaseException] = []
    reader = hosts.journal("b")
    sub = reader.subscribe("race", "main", after_sequence=0, idle_s=0.2)

    def follow() -> None:
        try:
            for event in sub:
                got.append(event)
                if len(got) >= total:
                    return
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    procs = [hosts.spawn("a", total // 2) for _ in range(2)]
    wait_all(procs, 90)
    assert [p.returncode for p in procs] == [0, 0], errors(procs)
    thread.join(timeout=30)
    sub.close()
    reader.close()
    assert not failure, failure
    assert not thread.is_alive(), f"the subscriber on host b saw {len(got)} of {total}"
    assert [e.sequence for e in got] == list(range(1, total + 1))
    assert sorted(e.event_id for e in got) == sorted(hosts.acked())


@pytest.mark.timeout(90)
def test_host_b_recovers_the_tail_a_killed_writer_on_host_a_left(hosts: Hosts) -> None:
    a = hosts.journal("a")
    a.append_batch([ev("s", 1), ev("s", 2)])
    a.close()
    dead = hosts.spawn("a", 5, faults="after_fsync=kill", session="s")
    assert dead.wait(timeout=60) == -signal.SIGKILL
    lines = hosts.root("a").joinpath("events", "s.jsonl").read_bytes().splitlines()
    assert len(lines) == 3  # synced on host a, never committed in Redis
    time.sleep(0.6)  # the dead writer's lease (500 ms) expires; until then it is "busy"
    b = hosts.journal("b")
    assert b.head("s", "main") == 3  # host b rolls the dead writer's line forward
    b.append(ev("s", 4, "from b"))
    assert [r.sequence for r in b.read("s", "main", 1, 10)] == [1, 2, 3, 4]
    b.close()
    check_history(hosts.backend("a"), "s", [json.loads(line)["event_id"] for line in lines])


@pytest.mark.timeout(90)
def test_host_b_rebuilds_what_host_a_wrote_after_redis_forgot_it(hosts: Hosts) -> None:
    a = hosts.journal("a")
    stored = [a.append(ev("s", n, f"a{n}")) for n in range(1, 11)]
    a.close()
    hosts.server.restart()
    b = hosts.journal("b")
    assert b.head("s", "main") == 10
    assert [r.event_id for r in b.read("s", "main", 1, 100)] == [r.event_id for r in stored]
    b.append(ev("s", 11, "b"))
    b.close()
    check_history(hosts.backend("a"), "s", [r.event_id for r in stored])


# ----- an incoherent mount ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_lagging_view_is_waited_for_never_truncated(hosts: Hosts) -> None:
    """A mount with GlusterFS's default caches (attributes cached for 1 s) lags what host a
    committed. The writer there waits for its view to catch up, bounded, and appends in
    place; nothing host a wrote is cut."""
    lagging = hosts.rig.hosts.get("lag") or hosts.rig.mount("lag", ())
    root = lagging / hosts.dir
    a = hosts.journal("a")
    a.append_batch([ev("s", 1), ev("s", 2)])
    path = root / "events" / "s.jsonl"
    seen = path.stat().st_size  # the lagging mount caches this size
    a.append_batch([ev("s", 3), ev("s", 4), ev("s", 5)])
    a.close()
    assert path.stat().st_size == seen, "this mount did not lag: the test proves nothing"
    c = Journal(root, hosts.server.url, lease_ms=2000).open()
    c.append(ev("s", 6, "from the lagging host"))
    c.close()
    check_history(hosts.backend("a"), "s", [])


@pytest.mark.timeout(90)
def test_a_view_that_does_not_catch_up_is_named_in_one_line_and_nothing_is_cut(
    hosts: Hosts,
) -> None:
    stuck = hosts.rig.hosts.get("stuck") or hosts.rig.mount(
        "stuck", ("--attribute-timeout=60", "--entry-timeout=60"))
    root = stuck / hosts.dir
    a = hosts.journal("a")
    a.append_batch([ev("s", 1), ev("s", 2)])
    path = root / "events" / "s.jsonl"
    seen = path.stat().st_size
    a.append_batch([ev("s", 3), ev("s", 4), ev("s", 5)])
    a.close()
    truth = (hosts.root("a") / "events" / "s.jsonl").read_bytes()
    d = Journal(root, hosts.server.url, lease_ms=2000).open()
    with pytest.raises(StorageError) as info:
        d.append(ev("s", 6, "from the stuck host"))
    d.close()
    message = str(info.value)
    assert "\n" not in message
    shorter = f"{path} is shorter than the committed length Redis holds ({seen} < {len(truth)}"
    assert shorter in message
    assert "'Several hosts'" in message
    assert (hosts.root("a") / "events" / "s.jsonl").read_bytes() == truth
    check_history(hosts.backend("a"), "s", [])


def _stuck(hosts: Hosts) -> Path:
    """A mount that caches attributes for 60 s: its view never catches up within a test."""
    mount = hosts.rig.hosts.get("stuck") or hosts.rig.mount(
        "stuck", ("--attribute-timeout=60", "--entry-timeout=60"))
    return mount / hosts.dir


@pytest.mark.timeout(90)
def test_a_rebuild_on_a_view_shorter_than_the_hint_is_refused_and_nothing_is_cut(
    hosts: Hosts,
) -> None:
    """Redis forgot the session; the host rebuilding it sees a stale size, below the hint
    host a left. It must not scan that view (Redis would get a stale length, and a line that
    only looks torn would be cut): it refuses in one line, and host a rebuilds correctly."""
    root = _stuck(hosts)
    a = hosts.journal("a")
    a.append_batch([ev("s", 1), ev("s", 2)])
    path = root / "events" / "s.jsonl"
    seen = path.stat().st_size  # the stuck mount caches this size
    a.append_batch([ev("s", 3), ev("s", 4), ev("s", 5)])  # a batch: its hint is written
    a.close()
    truth = (hosts.root("a") / "events" / "s.jsonl").read_bytes()
    assert path.stat().st_size == seen < len(truth), "this mount did not lag"
    hosts.server.restart()  # no persistence: the state must be rebuilt from the file
    d = Journal(root, hosts.server.url, lease_ms=2000, view_catch_up_s=0.5).open()
    with pytest.raises(StorageError) as info:
        d.head("s", "main")
    d.close()
    message = str(info.value)
    assert "\n" not in message
    assert f"{path} is shorter than its committed hint says ({seen} < {len(truth)}" in message
    assert "'Several hosts'" in message
    assert (hosts.root("a") / "events" / "s.jsonl").read_bytes() == truth
    b = hosts.journal("b")
    assert b.head("s", "main") == 5  # a coherent host rebuilds all of it
    b.close()
    check_history(hosts.backend("a"), "s", [])


@pytest.mark.timeout(90)
def test_tail_recovery_on_a_stale_view_never_cuts_what_another_host_synced(
    hosts: Hosts,
) -> None:
    """A writer on host a is stopped halfway through its write; the stuck mount caches the
    size then (a line that looks torn, and a write in flight that looks unfinished). The
    writer finishes, syncs and dies before its commit: by the roll-forward rule its line is
    committed. A writer on the stuck host that recovers the tail must not cut it."""
    root = _stuck(hosts)
    a = hosts.journal("a")
    a.append_batch([ev("s", 1), ev("s", 2)])
    a.close()
    path = root / "events" / "s.jsonl"  # not looked at from the stuck host until below
    writer = hosts.spawn("a", 1, faults="mid_write=stop,after_fsync=kill", session="s",
                         lease_ms=500)
    deadline = time.monotonic() + 30
    while not _stopped(writer.pid):
        assert writer.poll() is None, errors([writer])
        assert time.monotonic() < deadline, "the writer never stopped"
        time.sleep(0.01)
    seen = os.stat(path).st_size  # half a line past the committed length, cached for 60 s
    os.kill(writer.pid, signal.SIGCONT)
    assert writer.wait(timeout=30) == -signal.SIGKILL
    truth = (hosts.root("a") / "events" / "s.jsonl").read_bytes()
    assert len(truth.splitlines()) == 3
    assert os.stat(path).st_size == seen < len(truth), "this mount did not lag"
    assert truth[seen - 1 : seen] != b"\n", "the cached view should end inside a line"
    time.sleep(0.6)  # the dead writer's lease expires
    d = Journal(root, hosts.server.url, lease_ms=2000, view_catch_up_s=0.5).open()
    with pytest.raises(StorageError) as info:
        d.append(ev("s", 4, "from the stuck host"))
    d.close()
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}: this host's view of the file ({seen} bytes) lags" in message
    assert (hosts.root("a") / "events" / "s.jsonl").read_bytes() == truth
    b = hosts.journal("b")
    b.append(ev("s", 4, "from b"))  # a coherent host rolls the synced line forward
    assert [r.sequence for r in b.read("s", "main", 1, 10)] == [1, 2, 3, 4]
    b.close()
    check_history(hosts.backend("a"), "s",
                  [json.loads(line)["event_id"] for line in truth.splitlines()])
