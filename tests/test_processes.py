"""Claims about several processes, tested with real processes and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from journal import EventRecord, SequenceConflict
from tests.conftest import Backend

WORKER = Path(__file__).with_name("workers.py")


class Fleet:
    """Worker processes that are always killed and reaped, whatever the test does."""

    def __init__(self, backend: Backend, session: str = "race") -> None:
        self.backend = backend
        self.session = session
        self.procs: list[subprocess.Popen[bytes]] = []
        self.acks: list[Path] = []
        self.spawned = 0

    def spawn(self, count: int, faults: str = "", **opts: object) -> subprocess.Popen[bytes]:
        self.spawned += 1
        name = f"w{self.spawned}"
        ack = self.backend.root.parent / f"{name}.acks"
        self.acks.append(ack)
        env = dict(os.environ)
        env.pop("JOURNAL_FAULTS", None)
        if faults:
            env["JOURNAL_FAULTS"] = faults
        args = [sys.executable, str(WORKER), "--root", str(self.backend.root),
                "--url", self.backend.url or "", "--session", self.session,
                "--count", str(count), "--acks", str(ack), "--name", name]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def acked(self) -> list[str]:
        return [line for a in self.acks if a.exists() for line in a.read_text().split()]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stderr:
                p.stderr.close()


@pytest.fixture
def fleet(real_backend: Backend) -> Iterator[Fleet]:
    f = Fleet(real_backend)
    try:
        yield f
    finally:
        f.close()


def check_history(backend: Backend, session: str, acked: list[str], branch: str = "main") -> int:
    """The invariants: contiguous from 1, no duplicate event, every acknowledged event there.
    Checked on the raw file and through the journal (after Redis forgot everything too)."""
    # The journal can still be appended to; that also recovers whatever tail the last
    # killed writer left (torn or rolled forward), so the raw file is then clean.
    j = backend.journal()
    for _ in range(3):
        try:
            final = j.append(EventRecord.new(session, branch, j.head(session, branch) + 1,
                                             {"type": "UserMessage", "content": "final"}))
            break
        except SequenceConflict:
            continue  # the recovery rolled a dead writer's line forward: read the head again
    j.close()
    path = backend.root / "events" / f"{session}.jsonl"
    lines = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    assert lines[-1]["event_id"] == final.event_id
    ours = [rec for rec in lines if rec["branch_id"] == branch]
    assert [rec["sequence"] for rec in ours] == list(range(1, len(ours) + 1))
    ids = [rec["event_id"] for rec in ours]
    assert len(set(ids)) == len(ids), "an event is stored twice"
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events are lost"
    j = backend.journal()
    via_api = j.read(session, branch, 1, len(ours) + 10)
    assert [r.event_id for r in via_api] == ids
    assert j.head(session, branch) == len(ours)
    j.close()
    return len(ours) - 1


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))


@pytest.mark.timeout(120)
def test_four_processes_race_on_one_session(fleet: Fleet) -> None:
    procs = [fleet.spawn(60) for _ in range(4)]
    wait_all(procs, 90)
    errors = [p.stderr.read() for p in procs if p.stderr]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    acked = fleet.acked()
    assert len(acked) == 240
    assert check_history(fleet.backend, "race", acked) == 240


@pytest.mark.timeout(60)
def test_no_writer_starves_while_four_race_for_the_held_lease(fleet: Fleet) -> None:
    """With the held lease a busy writer could keep the session forever; the want flag hands
    the lease over, so each of 4 processes racing for 3 s gets a fair share."""
    procs = [fleet.spawn(10**6, duration=3) for _ in range(4)]
    wait_all(procs, 40)
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    per_writer = [len(a.read_text().split()) if a.exists() else 0 for a in fleet.acks]
    total = sum(per_writer)
    assert min(per_writer) >= total / 16, f"a writer starved: {per_writer}"
    check_history(fleet.backend, "race", fleet.acked())


@pytest.mark.timeout(120)
def test_four_processes_race_with_batches_and_group_commit(fleet: Fleet) -> None:
    procs = [fleet.spawn(40, batch=4, durability="batch") for _ in range(4)]
    wait_all(procs, 90)
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert check_history(fleet.backend, "race", fleet.acked()) == 160


@pytest.mark.timeout(150)
@pytest.mark.parametrize("window", ["after_begin", "mid_write", "after_fsync", "before_commit",
                                    "after_commit"])
def test_writers_killed_inside_every_window(fleet: Fleet, window: str) -> None:
    """SIGKILL at random moments in one window of the protocol; the survivors and the
    replacements go on once the lease expires, and no acknowledged event is lost."""
    faults = f"{window}=kill@0.08"
    deadline = time.monotonic() + 60
    target = 80
    live = [fleet.spawn(target, faults=faults, lease_ms=300) for _ in range(3)]
    kills = 0
    while time.monotonic() < deadline:
        for p in list(live):
            if p.poll() is None:
                continue
            live.remove(p)
            if p.returncode == -signal.SIGKILL:
                kills += 1
            else:
                assert p.returncode == 0, p.stderr.read() if p.stderr else ""
        if len(fleet.acked()) >= target:
            break
        while len(live) < 3:
            live.append(fleet.spawn(target, faults=faults, lease_ms=300))
        time.sleep(0.05)
    for p in live:
        p.kill()
        p.wait(timeout=10)
    assert kills > 0, "the fault never fired: the test proved nothing"
    assert len(fleet.acked()) >= target
    check_history(fleet.backend, "race", fleet.acked())


@pytest.mark.timeout(120)
def test_redis_restarts_empty_while_writers_run(fleet: Fleet) -> None:
    procs = [fleet.spawn(150, durability="none") for _ in range(3)]
    server = fleet.backend.server
    assert server is not None
    for _ in range(2):
        time.sleep(0.4)
        server.restart()  # no persistence: every head and lease is gone
    wait_all(procs, 90)
    assert [p.returncode for p in procs] == [0, 0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert check_history(fleet.backend, "race", fleet.acked()) == 450


@pytest.mark.timeout(90)
def test_a_zombie_writer_wakes_after_its_lease_expired(fleet: Fleet) -> None:
    """SIGSTOP inside the window between fsync and commit; others take over after the lease
    expires and roll its line forward; on SIGCONT its commit fails, and its retry of the same
    record resolves as already stored."""
    zombie = fleet.spawn(3, faults="after_fsync=stop", lease_ms=300)
    deadline = time.monotonic() + 20
    while not _stopped(zombie.pid):
        assert time.monotonic() < deadline, "the zombie never stopped"
        time.sleep(0.01)
    others = [fleet.spawn(20, lease_ms=300) for _ in range(2)]
    wait_all(others, 60)
    os.kill(zombie.pid, signal.SIGCONT)
    # every later fsync stops it again; wake it until it is done
    end = time.monotonic() + 30
    while zombie.poll() is None and time.monotonic() < end:
        if _stopped(zombie.pid):
            time.sleep(0.4)  # let its lease expire each time
            os.kill(zombie.pid, signal.SIGCONT)
        time.sleep(0.01)
    assert zombie.wait(timeout=10) == 0
    assert check_history(fleet.backend, "race", fleet.acked()) == 43


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "T"
    except OSError:
        return False
