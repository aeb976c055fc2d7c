"""Logging: quiet by default, structured fields on recoveries and rebuilds, `journal -v`
shows them, and a password never reaches a log line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from journal import EventRecord, Journal, encode_line
from journal.testing import RedisServer, faults

pytestmark = pytest.mark.timeout(120)


def ev(seq: int) -> EventRecord:
    return EventRecord.new("s1", "main", seq, {"type": "UserMessage", "content": f"m{seq}"})


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}


def test_the_library_is_quiet_by_default() -> None:
    # Without a handler, Python's last resort would print warnings on stderr.
    code = ("import logging, journal; "
            "logging.getLogger('journal.storage').warning('recovered a tail')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=_env(), check=False)
    assert done.returncode == 0 and done.stderr == ""


def test_a_roll_forward_is_logged_with_its_fields(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal(tmp_path, redis_server.url, lease_hold_ms=0) as j:
        j.append(ev(1))
        # A writer that died after its write and before its commit: the line is in the
        # file beyond the committed length; the next reader rolls it forward.
        with open(tmp_path / "events" / "s1.jsonl", "ab") as f:
            f.write(encode_line(ev(2)))
        with caplog.at_level(logging.INFO, logger="journal"):
            assert j.head("s1") == 2
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "tail_recovery"]
    assert record.name == "journal.storage" and record.levelno == logging.WARNING
    assert (record.session_id, record.rolled_forward) == ("s1", 1)  # type: ignore[attr-defined]


def test_journal_v_shows_the_log_on_stderr(tmp_path: Path, redis_server: RedisServer) -> None:
    with Journal(tmp_path, redis_server.url) as j:
        j.append(ev(1))
    base = [sys.executable, "-m", "journal.cli", "--root", str(tmp_path),
            "--redis-url", redis_server.url, "rebuild", "s1"]
    quiet = subprocess.run(base, capture_output=True, text=True, timeout=60, env=_env(),
                           check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = subprocess.run([*base, "-v"], capture_output=True, text=True, timeout=60,
                          env=_env(), check=False)
    assert loud.returncode == 0, loud.stderr
    assert "event=rebuild" in loud.stderr and "session_id=s1" in loud.stderr
    assert "event=rebuild_scan" in loud.stderr


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    from journal.cli.main import _log_to_stderr

    logger = logging.getLogger("journal")
    before = list(logger.handlers), logger.level
    try:
        _log_to_stderr(1, ["s3cret"])
        logging.getLogger("journal.test").warning("connecting to redis://:%s@host/0", "s3cret")
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])
    err = capsys.readouterr().err
    assert "redis://:***@host/0" in err and "s3cret" not in err


def test_a_long_wait_for_the_lease_is_logged(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Writer A stalls for 0.8 s right after taking the lease; writer B, waiting behind it,
    logs how long it waited (over LEASE_WAIT_LOG_S), with its fields."""
    with Journal(tmp_path, redis_server.url, lease_hold_ms=0) as a, \
            Journal(tmp_path, redis_server.url, lease_hold_ms=0) as b:
        a.append(ev(1))
        faults.configure("after_begin=sleep:0.8")
        try:
            stalled = threading.Thread(target=a.append, args=(ev(2),))
            stalled.start()
            time.sleep(0.2)  # A holds the lease and sleeps inside it
            with caplog.at_level(logging.INFO, logger="journal"):
                b.append(EventRecord.new("s1", "side", 1, {"type": "UserMessage",
                                                           "content": "b"}))
            stalled.join(timeout=10)
        finally:
            faults.configure(None)
    waits = [r for r in caplog.records if getattr(r, "event", None) == "lease_wait"]
    assert waits, [r.getMessage() for r in caplog.records]
    assert waits[0].session_id == "s1" and waits[0].waited_s >= 0.5
