"""``journal demo`` (the whole fleet story), ``journal fleet`` on its own, and compose.yaml."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journal import Journal
from journal.cli.verify import verify
from journal.server.embedded import embedded_status, ensure_embedded, stop_embedded
from journal.testing import RedisServer

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}


@pytest.mark.timeout(90)
def test_demo_runs_verifies_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "journal.cli", "demo", "--workers", "2", "--sessions", "2",
         "--duration", "1"],
        capture_output=True, text=True, env=_env(), timeout=80, check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in ("no gap, no duplicate", "all in the files at their sequence",
                     "exactly once", "journal verify: no findings", "result               PASS",
                     "conflicts retried", "appends per second", "subscriber lag",
                     "the worker group handled each of the", "group worker g1",
                     "group worker g2"):
        assert expected in out, out
    assert "[FAIL]" not in out
    assert "  feed: " in out  # the live display, as plain lines when not on a terminal
    assert "\r" not in out
    root = Path(out.split("root ", 1)[1].split()[0])
    assert not root.exists()  # the temporary root (and its Redis) is gone
    assert embedded_status(root) is None


@pytest.mark.timeout(90)
def test_demo_reuses_a_running_embedded_server_and_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    try:
        ensure_embedded(root)
        before = embedded_status(root)
        done = subprocess.run(
            [sys.executable, "-m", "journal.cli", "--root", str(root), "--durability", "batch",
             "demo", "--workers", "2", "--sessions", "1", "--duration", "0.5"],
            capture_output=True, text=True, env=_env(), timeout=80, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "(embedded, reused)" in done.stdout and "durability batch" in done.stdout
        after = embedded_status(root)
        assert before is not None and after is not None and after.pid == before.pid
        assert verify(root) == []  # the demo's session stays in the given root
        assert len(list((root / "events").glob("demo-*.jsonl"))) == 1
    finally:
        stop_embedded(root)


@pytest.mark.timeout(60)
def test_fleet_worker_on_its_own(tmp_path: Path, redis_server: RedisServer) -> None:
    root = tmp_path / "data"
    acked = tmp_path / "acked.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "journal.cli", "--root", str(root), "--redis-url",
         redis_server.url, "fleet", "--sessions", "2", "--prefix", "t", "--turns", "5",
         "--worker-id", "w1", "--acked", str(acked), "--seed", "7", "--json"],
        capture_output=True, text=True, env=_env(), timeout=50, check=False,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["worker"] == "w1" and stats["turns"] == 5 and stats["conflicts"] == 0
    lines = [json.loads(x) for x in acked.read_text().splitlines()]
    assert len(lines) == stats["appends"]
    with Journal(root, redis_server.url) as j:
        for a in lines:
            [stored] = j.read(a["session_id"], a["branch_id"], a["sequence"], 1)
            assert stored.event_id == a["event_id"]
            assert stored.actor.component == "w1"
        first = j.read(lines[0]["session_id"], "main", 1, 2)
        assert [r.kind_type for r in first] == ["SessionCreated", "PhaseEntered"]
        assert first[1].kind == {"type": "PhaseEntered", "phase": "sleep"}
    assert verify(root) == []


def _compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin), else a standalone ``docker-compose``."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True,
                               timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone is not None else None


@pytest.mark.timeout(60)
def test_compose_file_is_valid() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    done = subprocess.run([*command, "-f", str(REPO / "compose.yaml"), "config", "--services"],
                          capture_output=True, text=True, timeout=50, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["redis", "tail", "worker"]
    text = (REPO / "compose.yaml").read_text()
    assert '"--save", ""' in text and '"--appendonly", "no"' in text


@pytest.mark.timeout(60)
def test_fleet_stops_gracefully_on_sigterm(tmp_path: Path, redis_server: RedisServer) -> None:
    root = tmp_path / "data"
    acked = tmp_path / "acked.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal.cli", "--root", str(root), "--redis-url",
         redis_server.url, "fleet", "--sessions", "1", "--acked", str(acked)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not acked.exists() or acked.stat().st_size == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[0] == f"fleet {socket.gethostname()}-{proc.pid}: appending to fleet-1"
    # It finished the turn in progress: every event in the file was acknowledged.
    lines = acked.read_text().splitlines()
    with Journal(root, redis_server.url) as j:
        assert sum(j.branches("fleet-1").values()) == len(lines)
