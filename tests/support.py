"""Helpers shared by test modules (fixtures live in conftest.py; backends in backends.py):
the aiOS sample, helper and worker processes that are always killed and reaped, and the
history check of a session that killed writers wrote to."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from journal import EventRecord, SequenceConflict
from journal.cli.verify import verify_report
from tests.backends import Backend

LOCAL_FIXTURES = Path(__file__).resolve().parent / "fixtures"
HELPER = Path(__file__).resolve().parent / "sub_helpers.py"
WORKER = Path(__file__).resolve().parent / "workers.py"


def sample_path() -> Path:
    """The aiOS sample lines, as aiOS writes them (docs/format.md)."""
    return LOCAL_FIXTURES / "aios-sample.jsonl"


# ----- helper processes (tests/sub_helpers.py) -----------------------------------------------


class Proc:
    """One helper process; its stdout lines are collected by a thread."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.err = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode().strip())

    def expect(self, line: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"helper never printed {line!r}: {self.stderr()}") from None
            if got == line:
                return

    def finish(self, timeout: float) -> None:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"helper still running after {timeout}s: {self.stderr()}") \
                from None
        assert code == 0, f"helper exited with {code}: {self.stderr()}"

    def stderr(self) -> str:
        self.err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self.reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.err.close()


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[Proc] = []

    def start(self, *args: str) -> Proc:
        proc = Proc(list(args), self.tmp / f"helper-{len(self.all)}.log")
        self.all.append(proc)
        return proc

    def subscriber(self, backend: Backend, out: Path, until: int, *extra: str) -> Proc:
        assert backend.url is not None
        return self.start("subscribe", "--root", str(backend.root), "--url", backend.url,
                          "--session", "s1", "--until", str(until), "--out", str(out), *extra)

    def writer(self, backend: Backend, count: int, tag: str, *extra: str) -> Proc:
        assert backend.url is not None
        return self.start("write", "--root", str(backend.root), "--url", backend.url,
                          "--session", "s1", "--count", str(count), "--tag", tag, *extra)

    def kill_all(self) -> None:
        for proc in self.all:
            proc.kill()


# ----- writer processes (tests/workers.py) ---------------------------------------------------


class Writers:
    """Writer processes (tests/workers.py) that are always killed and reaped, whatever the
    test does, with the ids each one had acknowledged."""

    def __init__(self, acks_dir: Path) -> None:
        self.acks_dir = acks_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.acks: list[Path] = []

    def start(self, root: Path, url: str, session: str, count: int, name: str,
              faults: str = "", **opts: object) -> subprocess.Popen[bytes]:
        ack = self.acks_dir / f"{name}.acks"
        self.acks.append(ack)
        env = dict(os.environ)
        env.pop("JOURNAL_FAULTS", None)
        if faults:
            env["JOURNAL_FAULTS"] = faults
        args = [sys.executable, str(WORKER), "--root", str(root), "--url", url,
                "--session", session, "--count", str(count), "--acks", str(ack),
                "--name", name]
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


class Fleet(Writers):
    """Writers of one session on one backend."""

    def __init__(self, backend: Backend, session: str = "race") -> None:
        super().__init__(backend.root.parent)
        self.backend = backend
        self.session = session
        self.spawned = 0

    def spawn(self, count: int, faults: str = "", **opts: object) -> subprocess.Popen[bytes]:
        self.spawned += 1
        return self.start(self.backend.root, self.backend.url or "", self.session, count,
                          f"w{self.spawned}", faults, **opts)


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
    # The caches (index, hint) may lag, never lie.
    assert not verify_report(backend.root, [session]).errors
    return len(ours) - 1


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
