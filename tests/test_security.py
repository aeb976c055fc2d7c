"""Security: a password-protected Redis, a least-privilege ACL user, and TLS.

Every test starts its own real ``redis-server`` (journal.testing.RedisServer), which is
killed and reaped afterwards. The password must never show up in an exception message (or a
chained one), a log record, ``repr(journal)`` or ``repr(settings)``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from journal import (
    AppendOutcomeUnknown,
    EventRecord,
    Journal,
    JournalError,
    JournalSettings,
    RedisUnavailable,
)
from journal.testing import RedisServer

pytestmark = pytest.mark.timeout(90)

PASSWORD = "pw-Zq8#x:y@z/ü%20!"  # URL-special characters, non-ASCII, a %-escape look-alike
QUOTED = quote(PASSWORD, safe="")

# The least-privilege user of docs/reliability.md ("Security"). Keys and channels are all
# under the key prefix ("journal" by default). PSUBSCRIBE patterns are checked literally
# against the channel rules, hence the second channel rule for the firehose (subscribe_all
# with no session prefix). With sharded_pubsub=True (Redis Cluster) add +spublish
# +ssubscribe; the firehose then SSUBSCRIBEs per session, covered by the same channel rule.
ACL_COMMANDS = ("ping", "evalsha", "script|load", "hmget", "hgetall", "exists", "get", "mget",
                "set", "pttl", "hget", "hset", "del", "pexpire", "publish", "subscribe",
                "psubscribe")
ACL_RULES = ("on", "resetkeys", "~journal:*", "resetchannels", "&journal:*",
             "&journal:{*}:events", "-@all", *(f"+{c}" for c in ACL_COMMANDS))


def acl_line(user: str = "journal", password: str = "<password>") -> str:
    rules = [r if r != "on" else f"on >{password}" for r in ACL_RULES]
    return f"ACL SETUSER {user} " + " ".join(rules)


def ev(session: str, seq: int, text: str = "x") -> EventRecord:
    return EventRecord.new(session, "main", seq, {"type": "UserMessage", "content": text})


def secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, QUOTED, "Zq8#x") if s in text]


def exception_text(exc: BaseException) -> str:
    """Everything a log handler could print about ``exc``: the formatted traceback (with
    its chained causes) plus the str and repr of every exception in the chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.fixture
def pw_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(dir=tmp_path / "redis", password=PASSWORD) as srv:
        yield srv


# ----- a password ---------------------------------------------------------------------------


def test_the_journal_works_with_a_password_in_the_url(pw_server: RedisServer,
                                                      tmp_path: Path) -> None:
    url = f"redis://:{QUOTED}@127.0.0.1:{pw_server.port}/0"
    assert url == pw_server.url
    with Journal(tmp_path / "data", url) as j:
        j.append(ev("s", 1))
        j.append_batch([ev("s", 2), ev("s", 3)])
        assert j.head("s") == 3
        assert [r.sequence for r in j.read("s")] == [1, 2, 3]
        sub = j.subscribe("s", after_sequence=1, give_up_after_s=5)
        assert [next(sub).sequence for _ in range(2)] == [2, 3]
        sub.close()


@pytest.mark.parametrize("auth", ["wrong", "missing", "wrong-user"])
def test_a_wrong_or_missing_password_fails_clearly(pw_server: RedisServer, tmp_path: Path,
                                                   auth: str) -> None:
    netloc = {"wrong": ":not-the-password@", "missing": "",
              "wrong-user": f"nobody:{QUOTED}@"}[auth]
    url = f"redis://{netloc}127.0.0.1:{pw_server.port}/0"
    j = Journal(tmp_path / "data", url, socket_timeout_s=2)
    with pytest.raises(RedisUnavailable) as info:
        j.open()
    message = str(info.value)
    assert f"127.0.0.1:{pw_server.port}" in message
    assert any(word in message for word in ("WRONGPASS", "invalid username-password",
                                            "Authentication", "NOAUTH", "AuthenticationError"))
    assert "not-the-password" not in exception_text(info.value)
    assert not secrets_in(exception_text(info.value))
    with pytest.raises(RedisUnavailable):
        j.append(ev("s", 1))
    assert not (tmp_path / "data").exists()
    j.close()


def test_the_password_never_leaks(pw_server: RedisServer, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, redis-py's included
    url = pw_server.url
    shown: list[str] = []
    errors: list[BaseException] = []

    j = Journal(tmp_path / "data", url, lease_ms=1000, socket_timeout_s=1)
    j.open()
    j.append(ev("s", 1))
    shown += [repr(j), str(j), repr(j.settings), str(j.settings), j.settings.model_dump_json(),
              str(j.settings.model_dump()), repr(pw_server), pw_server.redacted_url]
    monkeypatch.setenv("JOURNAL_REDIS_URL", url)
    from_env = JournalSettings()
    assert from_env.redis_url_value() == url
    shown += [repr(from_env), str(from_env), repr(Journal(tmp_path / "data"))]

    # Failures with the password in the URL: refused, unreachable, gone mid-append.
    bad = url.replace(f"127.0.0.1:{pw_server.port}", "127.0.0.1:1")
    for attempt in (lambda: Journal(tmp_path / "x", bad, socket_timeout_s=1).open(),
                    lambda: Journal(tmp_path / "x", url.replace(QUOTED, QUOTED + "x"),
                                    socket_timeout_s=1).open()):
        with pytest.raises(RedisUnavailable) as info:
            attempt()
        errors.append(info.value)
    pw_server.kill()
    for call in (lambda: j.append(ev("s", 2)), lambda: j.append(ev("s", 3)),
                 lambda: j.head("s"), lambda: j.read("s")):
        try:
            call()  # an append may still succeed: a held lease, a pipelined commit
        except JournalError as exc:
            errors.append(exc)
    assert len(errors) >= 4
    with pytest.raises(RedisUnavailable) as info:
        next(j.subscribe("s", give_up_after_s=0.5, backoff_max_s=0.1))
    errors.append(info.value)
    j.close()
    pw_server.start()

    logging.getLogger("journal.test").exception("a logged failure", exc_info=errors[0])
    for err in errors:
        shown.append(exception_text(err))
        assert "***" in str(err) or "127.0.0.1" in str(err), str(err)
    shown.append(caplog.text)
    shown += [r.getMessage() for r in caplog.records]
    leaks = [text for text in shown if secrets_in(text)]
    assert not leaks, f"the password leaked: {leaks[:2]}"


# ----- a least-privilege ACL user -------------------------------------------------------------


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis]]:
    with RedisServer(dir=tmp_path / "redis") as srv:
        admin = redis.Redis.from_url(srv.url)
        try:
            yield srv, admin
        finally:
            admin.close()


def make_user(admin: redis.Redis, without: str | None = None) -> None:
    rules = [r for r in ACL_RULES if r != f"+{without}"]
    admin.execute_command("ACL", "DELUSER", "journal")
    admin.execute_command("ACL", "SETUSER", "journal", *rules, ">journal-pw")


def exercise(url: str, admin: redis.Redis, root: Path) -> None:
    """Every Redis command path of the journal: appends, NOSCRIPT after SCRIPT FLUSH, a
    rebuild, tail recovery, a busy lease, reads, a subscription and the firehose."""
    with Journal(root, url, lease_ms=1000, socket_timeout_s=2) as j:
        j.append(ev("s", 1))
        admin.script_flush()  # the next EVALSHA gets NOSCRIPT: SCRIPT LOAD
        j.append(ev("s", 2))
        assert j.head("s") == 2 and len(j.read("s")) == 2 and j.branches("s") == {"main": 2}
        admin.delete("journal:{s}:state")  # Redis forgot: rebuild from the file
        assert j.head("s") == 2
        with open(root / "events" / "s.jsonl", "ab") as fh:
            fh.write(b'{"torn')  # a dead writer's tail: recovery cuts it
        admin.set("journal:{s}:lease", "someone-else", px=200)  # busy: PTTL, then wait
        j.append(ev("s", 3))
        sub = j.subscribe("s", after_sequence=0, idle_s=0.2, give_up_after_s=2,
                          backoff_max_s=0.2)
        got = [next(sub).sequence for _ in range(3)]

        def later(seq: int) -> threading.Thread:
            def run() -> None:
                time.sleep(0.3)
                with Journal(root, url) as other:
                    other.append(ev("s", seq))

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            return thread

        thread = later(4)
        got.append(next(sub).sequence)  # live, through pub/sub (or the idle head check)
        sub.close()
        thread.join(timeout=10)
        # The firehose hears of a session live (PSUBSCRIBE), then replays it from 1.
        hose = j.subscribe_all("", from_start=True, idle_s=0.2, give_up_after_s=2,
                               backoff_max_s=0.2)
        thread = later(5)
        got_all = [next(hose).sequence for _ in range(5)]
        hose.close()
        thread.join(timeout=10)
        assert got == [1, 2, 3, 4] and got_all == [1, 2, 3, 4, 5]


def test_the_journal_works_as_a_least_privilege_acl_user(
    acl_server: tuple[RedisServer, redis.Redis], tmp_path: Path
) -> None:
    srv, admin = acl_server
    make_user(admin)
    url = f"redis://journal:journal-pw@127.0.0.1:{srv.port}/0"
    exercise(url, admin, tmp_path / "data")
    # ... and that user really is limited: no other keys, no dangerous commands.
    limited = redis.Redis.from_url(url)
    try:
        for command in (("GET", "other:key"), ("FLUSHALL",), ("CONFIG", "GET", "*"),
                        ("KEYS", "*"), ("EVAL", "return 1", "0")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                limited.execute_command(*command)
    finally:
        limited.close()


@pytest.mark.parametrize("missing", ACL_COMMANDS)
def test_a_user_missing_one_needed_command_fails_clearly(
    acl_server: tuple[RedisServer, redis.Redis], tmp_path: Path, missing: str
) -> None:
    srv, admin = acl_server
    make_user(admin, without=missing)
    url = f"redis://journal:journal-pw@127.0.0.1:{srv.port}/0"
    with pytest.raises(JournalError) as info:
        exercise(url, admin, tmp_path / "data")
    err = info.value
    # At commit time the write already happened: AppendOutcomeUnknown, caused by Redis.
    if isinstance(err, AppendOutcomeUnknown):
        assert isinstance(err.__cause__, RedisUnavailable)
    else:
        assert isinstance(err, RedisUnavailable), repr(err)
    assert any(word in str(err) for word in ("no permissions", "can't run this command",
                                             "NoPermissionError", "NOPERM")), str(err)
    assert "journal-pw" not in exception_text(err)


def test_the_acl_line_in_the_docs_is_the_tested_one() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
    assert acl_line() in docs.read_text()


# ----- TLS ----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(where: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    where.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=journal test CA", cwd=where)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=where)
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=where)
    (where / "server.key").chmod(0o600)
    return {"ca": where / "ca.crt", "cert": where / "server.crt", "key": where / "server.key"}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, dict[str, Path]]]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a test certificate")
    certs = make_certs(tmp_path / "certs")
    from journal.server._process import _free_port

    port = _free_port()
    # TCP is TLS only (--port 0); RedisServer checks readiness over the unix socket.
    srv = RedisServer(
        unix_socket=tmp_path / "r.sock", dir=tmp_path / "redis", password=PASSWORD,
        extra_args=["--tls-port", str(port), "--tls-cert-file", str(certs["cert"]),
                    "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]),
                    "--tls-auth-clients", "no"],
    )
    try:
        srv.start()
    except RedisUnavailable as exc:
        srv.close()
        if "tls" in str(exc).lower() or "Bad directive" in str(exc):
            pytest.skip(f"this redis-server has no TLS support: {str(exc)[-200:]}")
        raise
    try:
        yield srv, port, certs
    finally:
        srv.close()


def test_tls_with_a_private_ca(tls_server: tuple[RedisServer, int, dict[str, Path]],
                               tmp_path: Path) -> None:
    _srv, port, certs = tls_server
    url = (f"rediss://:{QUOTED}@127.0.0.1:{port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={certs['ca']}")
    with Journal(tmp_path / "data", url, socket_timeout_s=5) as j:
        j.append(ev("s", 1))
        assert j.head("s") == 1 and j.read("s")[0].sequence == 1
        sub = j.subscribe("s", give_up_after_s=5)
        assert next(sub).sequence == 1
        j.append(ev("s", 2))
        assert next(sub).sequence == 2
        sub.close()
        assert not secrets_in(repr(j))


@pytest.mark.parametrize("case", ["untrusted-ca", "plain-to-tls-port"])
def test_tls_misconfigurations_fail_clearly(
    tls_server: tuple[RedisServer, int, dict[str, Path]], tmp_path: Path, case: str
) -> None:
    _srv, port, _certs = tls_server
    if case == "untrusted-ca":
        url = f"rediss://:{QUOTED}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
        expect = ("certificate", "CERTIFICATE", "SSL")
    else:
        url = f"redis://:{QUOTED}@127.0.0.1:{port}/0"
        expect = ("Connection", "Timeout", "closed", "reset", "Error")
    j = Journal(tmp_path / "data", url, socket_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        j.open()
    assert time.monotonic() - started < 15
    assert any(word in str(info.value) for word in expect), str(info.value)
    assert not secrets_in(exception_text(info.value))
    j.close()
