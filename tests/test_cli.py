"""The ``journal`` command line, end to end: each test runs ``python -m journal.cli`` as a
subprocess against a private redis-server (the ``redis_server`` fixture) or the embedded
server of a temporary root, and checks stdout, the one-line error on stderr, and the exit
status. Data is set up in-process through :class:`journal.Journal` where that is faster.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from journal import EventRecord, Journal
from journal._core.keys import session_keys
from journal.cli.main import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFLICT,
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from journal.server.embedded import stop_embedded
from journal.testing import RedisServer

SLEEP = '{"type":"PhaseEntered","phase":"sleep"}'


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, root: Path, url: str | None = None, stdin: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI; fail the test on any traceback."""
    argv = [sys.executable, "-m", "journal.cli", "--root", str(root)]
    if url is not None:
        argv += ["--redis-url", url]
    done = subprocess.run([*argv, *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout, env=_env(), check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("journal: error: "), lines[0]
    return lines[0]


def ev(session: str, seq: int, branch: str = "main") -> EventRecord:
    return EventRecord.new(session, branch, seq, {"type": "PhaseEntered", "phase": "sleep"})


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Path, str, Journal]]:
    root = tmp_path / "data"
    with Journal(root, redis_server.url) as j:
        yield root, redis_server.url, j


@pytest.mark.timeout(60)
def test_append_read_head(env: tuple[Path, str, Journal]) -> None:
    root, url, _ = env
    first = cli("append", "s1", "--sequence", "1", "--kind",
                '{"type":"SessionCreated","name":"demo","config":{}}', root=root, url=url)
    assert first.returncode == 0, first.stderr
    stored = json.loads(first.stdout)
    assert (stored["sequence"], stored["kind"]["type"]) == (1, "SessionCreated")
    assert first.stdout.count("\n") == 1
    second = cli("append", "s1", "--next", "--kind", SLEEP, "--event-id", "e-2",
                 root=root, url=url)
    assert json.loads(second.stdout)["sequence"] == 2
    # The same event id again at the same place is an idempotent retry, not a conflict.
    retry = cli("append", "s1", "--sequence", "2", "--kind", SLEEP, "--event-id", "e-2",
                root=root, url=url)
    assert retry.returncode == 0 and json.loads(retry.stdout)["event_id"] == "e-2"
    from_stdin = cli("append", "s1", "--branch", "alt", "--next", "--kind", "-",
                     stdin='{"type":"UserMessage","content":"h\u00e9llo"}', root=root, url=url)
    assert json.loads(from_stdin.stdout)["kind"]["content"] == "h\u00e9llo"

    assert cli("head", "s1", root=root, url=url).stdout == "2\n"
    assert cli("head", "s1", "--branch", "alt", root=root, url=url).stdout == "1\n"
    assert cli("head", "nobody", root=root, url=url).stdout == "0\n"

    lines = cli("read", "s1", root=root, url=url).stdout.splitlines()
    assert [json.loads(line)["sequence"] for line in lines] == [1, 2]
    page = cli("read", "s1", "--from", "2", "--limit", "1", root=root, url=url).stdout
    assert [json.loads(line)["event_id"] for line in page.splitlines()] == ["e-2"]
    pretty = cli("read", "s1", "--pretty", root=root, url=url).stdout
    assert "SEQ" in pretty.splitlines()[0] and "SessionCreated" in pretty
    assert pretty.splitlines()[-1] == "(2 events, session s1, branch main)"


@pytest.mark.timeout(60)
def test_errors_are_one_line_with_exit_codes(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    for i in range(1, 6):
        j.append(ev("s1", i))

    conflict = cli("append", "s1", "--sequence", "9", "--kind", SLEEP, root=root, url=url)
    assert conflict.returncode == EXIT_CONFLICT
    assert "expected 6, got 9" in one_error_line(conflict)

    bad_json = cli("append", "s1", "--next", "--kind", '{"type":', root=root, url=url)
    assert bad_json.returncode == EXIT_USAGE
    assert "--kind is not valid JSON" in one_error_line(bad_json)

    not_object = cli("append", "s1", "--next", "--kind", "[1]", root=root, url=url)
    assert not_object.returncode == EXIT_USAGE and "JSON object" in one_error_line(not_object)

    bad_kind = cli("append", "s1", "--next", "--kind", '{"type":"PhaseEntered"}',
                   root=root, url=url)
    assert bad_kind.returncode == EXIT_USAGE
    assert "invalid PhaseEntered kind" in one_error_line(bad_kind)

    for bad_id in ("../etc", ".hidden", "a b"):
        done = cli("head", bad_id, root=root, url=url)
        assert done.returncode == EXIT_USAGE
        assert "session_id" in one_error_line(done)
    bad_branch = cli("read", "s1", "--branch", "x/y", root=root, url=url)
    assert bad_branch.returncode == EXIT_USAGE and "branch_id" in one_error_line(bad_branch)

    usage = cli("append", "s1", "--next", root=root, url=url)  # --kind is missing
    assert usage.returncode == EXIT_USAGE
    assert usage.stderr.splitlines() == [
        "journal append: error: the following arguments are required: --kind "
        "(see `journal append --help`)"
    ]
    assert j.head("s1") == 5  # none of the above wrote anything


@pytest.mark.timeout(60)
def test_unreachable_redis_is_one_clear_line_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()  # read-only commands refuse a missing root before they try Redis
    url = "redis://:s3cret-pw@127.0.0.1:1/0"
    for args in (("append", "s1", "--next", "--kind", SLEEP), ("head", "s1"), ("sessions",)):
        done = cli(*args, root=root, url=url)
        assert done.returncode == EXIT_UNAVAILABLE
        line = one_error_line(done)
        assert "127.0.0.1:1" in line and "s3cret" not in line and "***" in line
        assert done.stdout == ""
    assert not (root / "events").exists()
    # The variable works as well as the option, and is just as secret.
    env = _env() | {"JOURNAL_REDIS_URL": url, "JOURNAL_ROOT": str(root)}
    done = subprocess.run([sys.executable, "-m", "journal.cli", "head", "s1"],
                          capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == EXIT_UNAVAILABLE and "s3cret" not in done.stderr


class Lines:
    """A process's stdout lines through a reader thread, so waits can have a timeout
    (select() on a buffered pipe misses lines already read into the buffer)."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)

    def next(self, timeout: float = 20) -> str:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no output in time") from None

    def ready(self) -> bool:
        return not self.queue.empty()


@pytest.mark.timeout(60)
def test_tail_replays_then_follows(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    j.append(ev("s1", 1))
    j.append(ev("s1", 2))
    after = cli("tail", "s1", "--after", "1", root=root, url=url)
    assert [json.loads(x)["sequence"] for x in after.stdout.splitlines()] == [2]

    proc = subprocess.Popen(
        [sys.executable, "-m", "journal.cli", "--root", str(root), "--redis-url", url,
         "tail", "s1", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        # Ctrl-C as a terminal delivers it: a suite started in the background by a shell
        # without job control runs with SIGINT ignored, and a child would inherit that.
        preexec_fn=_default_sigint,
    )
    try:
        out = Lines(proc.stdout)
        assert json.loads(out.next())["sequence"] == 1
        assert json.loads(out.next())["sequence"] == 2
        j.append(ev("s1", 3))  # live
        assert json.loads(out.next())["sequence"] == 3
        proc.send_signal(signal.SIGINT)  # Ctrl-C is how --follow ends: quietly, status 0
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    neither = cli("tail", root=root, url=url)
    assert neither.returncode == EXIT_USAGE and "--all" in one_error_line(neither)


@pytest.mark.timeout(60)
def test_sessions_lists_branches_heads_and_sizes(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    j.append_batch([ev("s1", 1), ev("s1", 2)])
    j.append(ev("s1", 1, "alt"))
    j.append(ev("s2", 1))
    listed = [json.loads(x) for x in cli("sessions", "--json", root=root, url=url)
              .stdout.splitlines()]
    sizes = {s: (root / "events" / f"{s}.jsonl").stat().st_size for s in ("s1", "s2")}
    assert listed == [
        {"session": "s1", "bytes": sizes["s1"], "branches": {"main": 2, "alt": 1}},
        {"session": "s2", "bytes": sizes["s2"], "branches": {"main": 1}},
    ]
    table = cli("sessions", root=root, url=url).stdout.splitlines()
    assert table[0].split() == ["SESSION", "BRANCH", "HEAD", "FILE"]
    assert table[1].split()[:3] == ["s1", "main", "2"] and table[2].split() == ["alt", "1"]
    assert table[-1] == "(2 sessions, 4 events)"


@pytest.mark.timeout(60)
def test_verify_command(env: tuple[Path, str, Journal]) -> None:
    root, _url, j = env
    j.append_batch([ev("s1", 1), ev("s1", 2)])
    j.append(ev("s2", 1))
    clean = cli("verify", root=root)  # no Redis needed
    assert clean.returncode == 0 and clean.stdout == ""
    assert "verified 2 sessions, 3 lines: 0 errors, 0 notes" in clean.stderr

    path = root / "events" / "s1.jsonl"
    with open(path, "ab") as fh:
        fh.write(b"not json\n")
        fh.write(b'{"torn":')
    bad = cli("verify", root=root)
    assert bad.returncode == EXIT_CORRUPT
    found = bad.stdout.splitlines()
    assert found[0].startswith(f"{path}:3: invalid JSON")
    assert found[1].startswith(f"{path}:4: torn tail")
    assert len(found) == 2
    only_s2 = cli("verify", "s2", root=root)
    assert only_s2.returncode == 0 and only_s2.stdout == ""

    (root / "index" / "s2" / "main.idx2").unlink()  # a missing index is only a note
    noted = cli("verify", "s2", root=root)
    assert noted.returncode == 0 and ": note: no index for branch main" in noted.stdout
    assert cli("verify", "s2", "--strict", root=root).returncode == EXIT_CORRUPT
    assert cli("verify", "../x", root=root).returncode == EXIT_USAGE


@pytest.mark.timeout(60)
def test_rebuild_resets_state_from_the_files(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    j.append_batch([ev("s1", 1), ev("s1", 2), ev("s1", 3)])
    j.append(ev("s1", 1, "alt"))
    keys = session_keys("journal", "s1")
    client = redis.Redis.from_url(url)
    try:
        client.hset(keys.state, "h:main", 99)  # Redis drifted from the file
        client.hset(keys.state, "h:ghost", 4)
        (root / "index" / "s1" / "main.idx2").unlink()
        done = cli("rebuild", root=root, url=url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("s1: rebuilt from ")
        assert "main=3 (was 99), alt=1, ghost=0 (was 4)" in done.stdout
        assert j.branches("s1") == {"main": 3, "alt": 1}
        assert cli("verify", "--strict", root=root).returncode == 0  # the index is back

        client.flushall()  # Redis lost everything
        again = cli("rebuild", "s1", root=root, url=url)
        assert "(Redis had no state), every line checked: main=3, alt=1" in again.stdout

        client.set(keys.lease, "someone-else", px=60_000)  # a writer holds the lease
        busy = cli("rebuild", "s1", "--wait", "0.2", root=root, url=url)
        assert busy.returncode == EXIT_ERROR and "lease" in one_error_line(busy)
        assert client.exists(keys.state)  # untouched while the lease is held
        client.delete(keys.lease)
        missing = cli("rebuild", "nope", root=root, url=url)
        assert missing.returncode == EXIT_ERROR and "no such session" in missing.stdout
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_redis_up_status_down_shared_by_processes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    try:
        down = cli("redis", "status", root=root)
        assert down.returncode == EXIT_ERROR and "not running" in down.stdout
        up = cli("redis", "up", root=root)
        assert up.returncode == 0 and "embedded redis started: pid" in up.stdout
        pid = up.stdout.split("pid ")[1].split(",")[0]
        # Other processes without a URL share that server.
        assert cli("append", "s1", "--next", "--kind", SLEEP, root=root).returncode == 0
        assert cli("head", "s1", root=root).stdout == "1\n"
        status = cli("redis", "status", root=root)
        assert status.returncode == 0 and f"running: pid {pid}," in status.stdout
        assert "already running" in cli("redis", "up", root=root).stdout
        stopped = cli("redis", "down", root=root)
        assert stopped.returncode == 0 and f"stopped: pid {pid}" in stopped.stdout
        assert cli("redis", "status", root=root).returncode == EXIT_ERROR
        assert "not running" in cli("redis", "down", root=root).stdout
    finally:
        stop_embedded(root)


@pytest.mark.timeout(60)
def test_broken_pipe_exits_quietly(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    j.append_batch([ev("big", i) for i in range(1, 501)])  # more than a pipe buffer
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal.cli", "--root", str(root), "--redis-url", url,
         "read", "big"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100)
        proc.stdout.close()  # like `journal read big | head -c 100`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=20) == EXIT_BROKEN_PIPE
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(30)
def test_help_and_module_entry(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "journal", "--help"], capture_output=True,
                          text=True, env=_env(), timeout=30, check=False)
    assert done.returncode == 0
    for command in ("append", "read", "head", "tail", "sessions", "verify", "rebuild",
                    "redis", "demo", "fleet"):
        assert command in done.stdout
    # Global options also work after the subcommand.
    after = subprocess.run([sys.executable, "-m", "journal.cli", "verify", "--root",
                            str(tmp_path)], capture_output=True, text=True, env=_env(),
                           timeout=30, check=False)
    assert after.returncode == 0 and "verified 0 sessions" in after.stderr


@pytest.mark.timeout(60)
def test_tail_all_follows_every_session(env: tuple[Path, str, Journal]) -> None:
    root, url, j = env
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal.cli", "--root", str(root), "--redis-url", url,
         "tail", "--all", "--from-start"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        out = Lines(proc.stdout)
        seen: list[tuple[str, int]] = []
        # The firehose starts listening asynchronously: keep writing until it reports.
        total = 0
        while not out.ready():
            total += 1
            assert total < 200, "the firehose printed nothing"
            j.append(ev(f"fire-{total % 2}", (total + 1) // 2))
            time.sleep(0.1)
        # It listens now. A session first heard of live is replayed from 1 (--from-start),
        # so one more event each brings in everything written before.
        for session in ("fire-0", "fire-1"):
            j.append(ev(session, j.head(session) + 1))
            total += 1
        while len(seen) < total:
            record = json.loads(out.next())
            seen.append((record["session_id"], record["sequence"]))
        # --from-start: every session is replayed from 1, in order, exactly once.
        for session in ("fire-0", "fire-1"):
            sequences = [q for s, q in seen if s == session]
            assert sequences == list(range(1, len(sequences) + 1))
        proc.terminate()  # SIGTERM (docker stop) ends a follower quietly, status 0
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
