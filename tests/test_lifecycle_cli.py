"""`journal delete`, `truncate`, `archive`, `gc` and `verify` of archives (issue 14)."""

from __future__ import annotations

from pathlib import Path

from journal import EventRecord, Journal
from journal.testing import RedisServer

from .test_cli import cli, one_error_line


def _fill(j: Journal, sid: str, n: int, when: str | None = None) -> None:
    extra = {"timestamp": when} if when else {}
    j.append_batch([EventRecord.new(sid, "main", s, {"type": "UserMessage", "content": "x"},
                                    **extra) for s in range(1, n + 1)])


def test_destructive_commands_ask_and_refuse_without_a_terminal(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    root, url = tmp_path / "data", redis_server.url
    with Journal(root, url) as j:
        _fill(j, "s1", 5)
    for args in (["delete", "s1"], ["truncate", "s1", "--before", "3"]):
        done = cli(*args, root=root, url=url, stdin="")
        assert done.returncode == 2
        assert "refusing without --yes" in one_error_line(done)
    assert cli("read", "s1", root=root, url=url).stdout.count("\n") == 5
    done = cli("truncate", "s1", "--before", "9", "--yes", root=root, url=url)
    assert done.returncode == 2 and "at most 6" in one_error_line(done)
    done = cli("truncate", "s1", "--before", "3", "--yes", root=root, url=url)
    assert done.returncode == 0, done.stderr
    assert "events from 3 to 5 kept" in done.stdout
    done = cli("read", "s1", root=root, url=url)
    assert done.returncode == 6 and "must start at 3" in one_error_line(done)
    assert cli("read", "s1", "--from", "3", root=root, url=url).stdout.count("\n") == 3
    done = cli("archive", "s1", root=root, url=url)
    assert done.returncode == 0 and "archived s1" in done.stdout
    done = cli("verify", root=root, url=url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli("read", "s1", "--from", "4", root=root, url=url).stdout.count("\n") == 2
    done = cli("delete", "s1", "--yes", root=root, url=url)
    assert done.returncode == 0 and "deleted s1" in done.stdout
    done = cli("read", "s1", root=root, url=url)
    assert done.returncode == 6 and "s1 was deleted" in one_error_line(done)
    done = cli("delete", "nope", "--yes", root=root, url=url)
    assert done.returncode == 2 and "no session nope" in one_error_line(done)


def test_gc_dry_run_then_apply(tmp_path: Path, redis_server: RedisServer) -> None:
    root, url = tmp_path / "data", redis_server.url
    old = "2020-01-01T00:00:00Z"
    with Journal(root, url) as j:
        _fill(j, "old-1", 3, when=old)
        _fill(j, "ci-1", 6)
        _fill(j, "idle-1", 2, when=old)
        _fill(j, "fresh", 2)
    policy = tmp_path / "retention.toml"
    policy.write_text(
        '[[policy]]\nprefix = ""\narchive_after = "30d"\n\n'
        '[[policy]]\nprefix = "old-"\ndelete_after = 365\n\n'
        '[[policy]]\nprefix = "ci-"\nmax_count = 2\n'
    )
    done = cli("gc", "--policy", str(policy), "--dry-run", root=root, url=url)
    assert done.returncode == 0, done.stderr
    plan = done.stdout.splitlines()
    assert plan == [
        "truncate ci-1 main before 5  (max_count 2)",
        "archive idle-1  (idle " + plan[1].split("(idle ")[1],
        "delete old-1  (idle " + plan[2].split("(idle ")[1],
    ]
    assert "dry run: nothing changed" in done.stderr
    assert (root / "events" / "old-1.jsonl").exists()
    done = cli("gc", "--policy", str(policy), "--yes", root=root, url=url)
    assert done.returncode == 0, done.stderr
    assert "[3/3]" in done.stderr
    assert not (root / "events" / "old-1.jsonl").exists()
    assert (root / "archive" / "idle-1.jsonl.zst").exists()
    with Journal(root, url) as j:
        assert [r.sequence for r in j.read("ci-1", "main", 5)] == [5, 6]
        assert len(j.read("fresh")) == 2
    done = cli("gc", "--policy", str(policy), "--dry-run", root=root, url=url)
    assert "nothing to do" in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[policy]]\nprefix = "x"\nmax_age = "soon"\n')
    done = cli("gc", "--policy", str(bad), root=root, url=url)
    assert done.returncode == 2 and "not a duration" in one_error_line(done)
