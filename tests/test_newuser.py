"""What a new user hit in the first hour (issue 15): each defect, kept fixed.

The command runs as a subprocess (``python -m journal.cli``) in an empty temporary
directory; Redis is a private redis-server (the ``redis_server`` fixture).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from journal import (
    AppendOutcomeUnknown,
    EventRecord,
    InvalidRecord,
    Journal,
    LeaseTimeout,
    RedisUnavailable,
    RetryPolicy,
    SequenceConflict,
    StorageError,
    decode_line,
    encode_line,
)
from journal._core import retry
from journal._storage.session_file import SessionStore
from journal.testing import RedisServer

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
EXIT_USAGE, EXIT_CORRUPT = 2, 5


def run(*args: str, cwd: Path, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    done = subprocess.run([sys.executable, "-m", "journal.cli", *args], cwd=cwd,
                          capture_output=True, text=True, input=stdin, timeout=timeout,
                          env=env, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def redis_servers_under(path: Path) -> list[str]:
    """Command lines of running redis-server processes that mention ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "redis-server" in cmdline and str(path) in cmdline:
            found.append(cmdline)
    return found


def ev(seq: int, session: str = "s1", text: str = "hello") -> EventRecord:
    return EventRecord.new(session, "main", seq, {"type": "UserMessage", "content": text})


# ----- 1, 2: read-only commands on a root that does not exist ------------------------------


@pytest.mark.parametrize("command", [
    ["sessions"], ["head", "s1"], ["read", "s1"], ["tail", "s1"], ["verify"], ["rebuild"],
])
@pytest.mark.parametrize("root", [None, "nonexistent/deep/root"])
def test_read_only_commands_on_a_missing_root_create_and_start_nothing(
    tmp_path: Path, command: list[str], root: str | None
) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    args = ([] if root is None else ["--root", root]) + command
    done = run(*args, cwd=work)
    shown = root or "data"
    assert done.returncode == EXIT_USAGE, done
    assert done.stderr.strip() == (
        f"journal: error: root {shown} does not exist (check --root or $JOURNAL_ROOT)"
    )
    assert list(work.iterdir()) == []  # no data/, no data/redis/
    assert redis_servers_under(work) == []  # no embedded server left running


def test_library_reads_on_a_missing_root_create_and_start_nothing(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such" / "root"
    with Journal(root) as j:  # embedded Redis: opening starts nothing yet
        assert j.head("s1") == 0
        assert j.read("s1") == []
        assert j.branches("s1") == {}
        assert j.sessions() == []
    assert not (tmp_path / "no").exists()
    assert redis_servers_under(tmp_path) == []


@pytest.mark.parametrize("make", ["file", "missing"])
def test_verify_on_a_bad_root_fails_clearly(tmp_path: Path, make: str) -> None:
    root = tmp_path / "root"
    if make == "file":
        root.write_text("not a directory\n")
    done = run("--root", str(root), "verify", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    what = "is not a directory" if make == "file" else "does not exist"
    assert what in done.stderr and len(done.stderr.splitlines()) == 1


# ----- 3: the operator's rebuild checks every line ------------------------------------------


def test_rebuild_command_exits_5_on_a_corrupt_line_in_the_middle(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    root = tmp_path / "data"
    with Journal(root, redis_server.url) as j:
        for i in range(1, 6):
            j.append(ev(i, "c1"))
    path = root / "events" / "c1.jsonl"
    lines = path.read_bytes().split(b"\n")
    broken = lines[2].replace(b'"content":"hello"', b'"content":"hel\x01o"')  # same length
    assert len(broken) == len(lines[2]) and broken != lines[2]
    path.write_bytes(b"\n".join([*lines[:2], broken, *lines[3:]]))
    common = ["--root", str(root), "--redis-url", redis_server.url]
    assert run(*common, "verify", "c1", cwd=tmp_path).returncode == EXIT_CORRUPT
    done = run(*common, "rebuild", "c1", cwd=tmp_path)
    assert done.returncode == EXIT_CORRUPT, done
    assert "c1.jsonl:3: invalid record" in done.stderr


def test_rebuild_reports_heads_and_does_not_reach_into_internals(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    root = tmp_path / "data"
    with Journal(root, redis_server.url) as j:
        j.append_batch([ev(i) for i in range(1, 4)])
        result = j.rebuild("s1")
        assert result.heads == {"main": 3} and result.before == {"main": 3}
        assert result.file_bytes == (root / "events" / "s1.jsonl").stat().st_size
    main_py = (REPO / "journal" / "cli" / "main.py").read_text()
    assert "core.keys" not in main_py and "register_script" not in main_py
    done = run("--root", str(root), "--redis-url", redis_server.url, "rebuild", cwd=tmp_path)
    assert done.returncode == 0 and "s1: rebuilt from" in done.stdout and "main=3" in done.stdout


# ----- 7: hints that name the causes and the fix --------------------------------------------


def test_two_roots_on_one_redis_without_key_prefix_get_a_useful_hint(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with Journal(tmp_path / "a", redis_server.url) as a:
        a.append(ev(1))
        a.append(ev(2))
    with Journal(tmp_path / "b", redis_server.url) as b:
        b._connect()
        (tmp_path / "b").mkdir()
        with pytest.raises(StorageError) as info:
            b.append(ev(3))
    message = str(info.value)
    assert "key_prefix" in message and "outside the journal" in message
    assert "journal rebuild s1" in message and "journal verify" not in message


# ----- 8: minor ------------------------------------------------------------------------------


def test_a_short_write_says_no_space_left_on_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path, "s1")
    monkeypatch.setattr("journal._storage.session_file.os.write",
                        lambda fd, data: os.pwrite(fd, data[:3], 0))
    with pytest.raises(OSError) as info:
        store.append(b'{"x":1}\n', sync=False, committed=0)
    assert info.value.errno == errno.ENOSPC
    assert "No space left on device" in str(info.value)


@pytest.mark.parametrize("option", ["--event-id", "--agent-id"])
def test_empty_ids_are_refused(tmp_path: Path, option: str) -> None:
    done = run("--root", str(tmp_path), "append", "s1", "--next", option, "",
               "--kind", '{"type":"UserMessage","content":"x"}', cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert len(done.stderr.splitlines()) == 1 and "must not be empty" in done.stderr
    assert not (tmp_path / "events").exists()


def test_kind_from_stdin_stops_reading_at_the_limit(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal.cli", "--root", str(tmp_path), "append", "s1",
         "--next", "--kind", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdin is not None
        with pytest.raises(BrokenPipeError):
            # Far more than the limit, and the pipe is never closed: a command that reads
            # to the end would wait forever (and hold it all in memory).
            for _ in range(64):
                proc.stdin.write(b"x" * (1 << 20))
                proc.stdin.flush()
        assert proc.wait(timeout=30) == EXIT_USAGE
        assert proc.stderr is not None and b"more than 1048576 bytes" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_append_takes_an_actor(tmp_path: Path, redis_server: RedisServer) -> None:
    done = run("--root", str(tmp_path), "--redis-url", redis_server.url, "append", "s1",
               "--next", "--actor", "agent:planner",
               "--kind", '{"type":"UserMessage","content":"x"}', cwd=tmp_path)
    assert done.returncode == 0, done
    stored = decode_line(done.stdout)
    assert (stored.actor.type, stored.actor.component) == ("agent", "planner")
    bad = run("--root", str(tmp_path), "append", "s1", "--next", "--actor", "robot",
              "--kind", '{"type":"UserMessage","content":"x"}', cwd=tmp_path)
    assert bad.returncode == EXIT_USAGE and "user, agent or system" in bad.stderr


# ----- ergonomics: append at head + 1, retry policy, encoding, names ------------------------


def test_append_next_takes_the_next_sequence_under_contention(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def writer(tag: str) -> None:
        with Journal(tmp_path, redis_server.url) as j:
            for i in range(25):
                stored = j.append_next("s1", "main", {"type": "UserMessage",
                                                      "content": f"{tag}{i}"})
                with lock:
                    got.append(stored.sequence)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(1, 51))
    with Journal(tmp_path, redis_server.url) as j:
        assert [r.sequence for r in j.read("s1", limit=100)] == list(range(1, 51))


async def test_async_append_next_and_retry(tmp_path: Path, redis_server: RedisServer) -> None:
    from journal import AsyncJournal

    async with AsyncJournal(tmp_path, redis_server.url) as j:
        first = await j.append_next("s1", "main", {"type": "UserMessage", "content": "a"})
        second = await j.append(ev(2), retry=RetryPolicy())
        assert (first.sequence, second.sequence) == (1, 2)
        with pytest.raises(SequenceConflict):  # final: never retried
            await j.append(ev(9), retry=RetryPolicy())


def _drive(plan: Any, outcomes: list[Any]) -> tuple[Any, list[Any]]:
    """Run a retry plan against scripted outcomes (an exception is raised into it)."""
    steps: list[Any] = []
    result: Any = None
    error: BaseException | None = None
    while True:
        done, step = retry.advance(plan, result, error)
        if done:
            return step, steps
        steps.append(step)
        if isinstance(step, retry.Pause):
            result, error = None, None
            continue
        outcome = outcomes.pop(0)
        result, error = (None, outcome) if isinstance(outcome, BaseException) else (outcome, None)


@pytest.mark.parametrize("transient", [
    AppendOutcomeUnknown("lost"), RedisUnavailable("down"), LeaseTimeout("busy"),
])
def test_retry_policy_retries_transient_errors_with_the_same_record(
    transient: Exception,
) -> None:
    record = ev(1)
    stored, steps = _drive(retry.append_with_retry(RetryPolicy(attempts=3), record, lambda: 1.0),
                           [transient, transient, record])
    assert stored is record
    puts = [s for s in steps if isinstance(s, retry.Put)]
    assert len(puts) == 3 and all(p.record is record for p in puts)
    assert [s.seconds for s in steps if isinstance(s, retry.Pause)] == [0.05, 0.1]
    with pytest.raises(type(transient)):
        _drive(retry.append_with_retry(RetryPolicy(attempts=2), record, lambda: 1.0),
               [transient, transient])


def test_retry_policy_gives_up_at_once_on_final_errors() -> None:
    conflict = SequenceConflict("s1", "main", 4, 1)
    with pytest.raises(SequenceConflict):
        _drive(retry.append_with_retry(RetryPolicy(), ev(1)), [conflict])
    with pytest.raises(InvalidRecord):
        _drive(retry.append_with_retry(RetryPolicy(), ev(1)), [InvalidRecord("bad")])


def test_append_next_settles_an_unknown_outcome_before_reading_the_head_again() -> None:
    made: list[EventRecord] = []

    def make(sequence: int) -> EventRecord:
        made.append(ev(sequence))
        return made[-1]

    plan = retry.append_next(RetryPolicy(), "s1", "main", make, lambda: 0.0)
    conflict = SequenceConflict("s1", "main", 6, 5)
    stored, steps = _drive(plan, [4, conflict, 5, AppendOutcomeUnknown("?"), "stored"])
    assert stored == "stored"
    kinds = [type(s).__name__ for s in steps]
    assert kinds == ["Head", "Put", "Pause", "Head", "Put", "Pause", "Put"]
    assert [r.sequence for r in made] == [5, 6]  # the unknown one retried at 6, not re-headed


def test_event_record_encodes_and_decodes_as_the_journal_does() -> None:
    sample = (REPO / "tests" / "fixtures").glob("*.jsonl")
    lines = [line for path in sample for line in path.read_bytes().splitlines(keepends=True)]
    assert lines
    for line in lines[:50]:
        record = EventRecord.from_line(line)
        assert record.to_line() == line == encode_line(record)
    with pytest.raises(InvalidRecord):
        EventRecord.from_line(b'{"event_id": 1}\n')


def test_a_script_in_the_clones_parent_directory_imports_the_package(tmp_path: Path) -> None:
    # The clone is called journal, like the package: from its parent, Python sees the
    # folder first. It must still import the real package.
    (tmp_path / "journal").symlink_to(REPO, target_is_directory=True)
    (tmp_path / "script.py").write_text("from journal import Journal\nprint(Journal.__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Journal"


def test_retry_policy_validates_its_fields() -> None:
    from journal import InvalidInput

    with pytest.raises(InvalidInput):
        RetryPolicy(attempts=0)
    with pytest.raises(InvalidInput):
        RetryPolicy(backoff_s=-1)
