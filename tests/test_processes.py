"""Claims about several processes, tested with real processes and a real redis-server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import Backend
from tests.support import Fleet, check_history, wait_all


@pytest.fixture
def fleet(real_backend: Backend) -> Iterator[Fleet]:
    f = Fleet(real_backend)
    try:
        yield f
    finally:
        f.close()


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
