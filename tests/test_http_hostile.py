"""Hostile HTTP against a real `journal serve` with tokens: bad ids and JSON, oversized
bodies, missing, wrong and out-of-scope tokens, lying Last-Event-IDs, a thousand dropped
connections. Each answers with a clear one-line error, and nothing is written."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.http_support import Gateway, SseClient, file_state

pytestmark = pytest.mark.timeout(90)

READ = "r" * 24
APPEND = "a" * 24
FLEET = "f" * 24  # append, only sessions starting with "fleet-"
TOKENS = f"{READ} read, {APPEND} append, {FLEET} append fleet-"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("hostile"), args=("--max-body", "65536"),
                env={"JOURNAL_HTTP_TOKENS": TOKENS})
    try:
        g.start()
        with g.client(headers={"Authorization": f"Bearer {APPEND}"}) as c:
            for sid in ("h-1", "fleet-1"):
                r = c.post(f"/sessions/{sid}/events",
                           json={"sequence": 1, "kind": {"type": "UserMessage", "content": "x"}})
                assert r.status_code == 201, r.text
        yield g
    finally:
        g.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _one_line_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]
    assert "\n" not in message and message
    for word in words:
        assert word in message, message


EVENT = {"sequence": 2, "kind": {"type": "UserMessage", "content": "x"}}


@pytest.mark.parametrize(("path", "body", "headers", "status", "words"), [
    ("/sessions/..%2Fetc/events", EVENT, {}, 404, ["no such route"]),
    ("/sessions/..etc/events", EVENT, {}, 400, ["must not start with '.'"]),
    ("/sessions/h-1/events/x", EVENT, {}, 404, ["no such route"]),
    ("/sessions/a%20b/events", EVENT, {}, 400, ["session_id"]),
    ("/sessions/" + "x" * 200 + "/events", EVENT, {}, 400, ["1 to 128"]),
    ("/sessions/h-1/events", b"{not json", {}, 400, ["not valid JSON"]),
    ("/sessions/h-1/events", b"[" * 100000, {}, 413, ["limit"]),
    ("/sessions/h-1/events", b"x" * 70000, {}, 413, ["limit of 65536"]),
    ("/sessions/h-1/events", b"[]", {}, 400, ["empty"]),
    ("/sessions/h-1/events", b'"text"', {}, 400, ["JSON object"]),
    ("/sessions/h-1/events", {"kind": {"type": "UserMessage", "content": "x"}}, {}, 400,
     ["no sequence"]),
    ("/sessions/h-1/events", {**EVENT, "sequence": "two"}, {}, 400, ["invalid"]),
    ("/sessions/h-1/events", {**EVENT, "kind": {"type": "UserMessage"}}, {}, 400, ["content"]),
    ("/sessions/h-1/events", {**EVENT, "session_id": "h-2"}, {}, 400, ["path names"]),
    ("/sessions/h-1/events", {**EVENT, "branch_id": "../x"}, {}, 400, ["branch_id"]),
    ("/sessions/h-1/events", {**EVENT, "timestamp": "yesterday"}, {}, 400, ["RFC 3339"]),
    ("/sessions/h-1/events", [EVENT, {**EVENT, "sequence": 4}], {}, 400, ["contiguous"]),
    ("/sessions/h-1/events", EVENT, {"content-type": "text/plain"}, 415, ["JSON"]),
    ("/sessions/h-1/events", EVENT, {"authorization": "Bearer nope-nope-nope-nope"}, 401,
     ["not valid"]),
    ("/sessions/h-1/events", EVENT, {"authorization": ""}, 401, ["required"]),
    ("/sessions/h-1/events", EVENT, {"authorization": f"Bearer {READ}"}, 403, ["may not append"]),
    ("/sessions/h-1/events", EVENT, {"authorization": f"Bearer {FLEET}"}, 403, ["may not append"]),
    ("/sessions/h-1/events", {**EVENT, "sequence": 7}, {}, 409, ["expected 2, got 7"]),
])
def test_bad_appends_answer_clearly_and_write_nothing(
    gw: Gateway, path: str, body: object, headers: dict[str, str], status: int,
    words: list[str],
) -> None:
    before = file_state(gw.root)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"content-type": "application/json", **_bearer(APPEND), **headers}
    if sent.get("authorization") == "":
        del sent["authorization"], sent["Authorization"]
    elif "authorization" in headers:
        del sent["Authorization"]
    r = httpx.post(gw.base + path, content=raw, headers=sent, timeout=10)
    _one_line_error(r, status, *words)
    assert file_state(gw.root) == before


def test_reads_need_a_token_in_scope(gw: Gateway) -> None:
    _one_line_error(httpx.get(gw.base + "/sessions/h-1/events"), 401, "required")
    assert httpx.get(gw.base + "/sessions/h-1/events").headers["www-authenticate"].startswith(
        "Bearer")
    ok = httpx.get(gw.base + "/sessions/h-1/events", headers=_bearer(READ))
    assert ok.status_code == 200 and len(ok.json()["events"]) == 1
    _one_line_error(httpx.get(gw.base + "/sessions/h-1/events", headers=_bearer(FLEET)), 403,
                    "may not read")
    listing = httpx.get(gw.base + "/sessions", headers=_bearer(FLEET)).json()
    assert [s["session_id"] for s in listing["sessions"]] == ["fleet-1"]
    _one_line_error(httpx.get(gw.base + "/events/stream?prefix=h-", headers=_bearer(FLEET)),
                    403, "fleet-")
    _one_line_error(httpx.get(gw.base + "/events/stream?prefix=../", headers=_bearer(READ)),
                    400, "prefix")


def test_cookie_exchange_gives_a_read_only_cookie_without_the_secret(gw: Gateway) -> None:
    with gw.client() as c:
        _one_line_error(c.post("/auth/cookie"), 401, "bearer")
        r = c.post("/auth/cookie", headers=_bearer(APPEND))
        assert r.status_code == 200 and r.json()["scope"] == "read"
        cookie = r.headers["set-cookie"]
        assert APPEND not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert c.get("/sessions/h-1/events").status_code == 200  # the cookie reads
        # ... and never writes: a cross-site form cannot append with it.
        w = c.post("/sessions/h-1/events", json=EVENT)
        _one_line_error(w, 401, "required")
        c.cookies.set("journal_auth", c.cookies["journal_auth"][:-3] + "AAA")
        _one_line_error(c.get("/sessions/h-1/events"), 401, "invalid or expired")


@pytest.mark.parametrize(("value", "words"), [
    ("abc", ["must be a sequence number"]),
    ("-1", ["must be a sequence number"]),
    ("99", ["beyond the head 1"]),
    ("1" * 30, ["must be a sequence number"]),
])
def test_last_event_id_lies(gw: Gateway, value: str, words: list[str]) -> None:
    r = httpx.get(gw.base + "/sessions/h-1/events/stream",
                  headers={"Last-Event-ID": value, **_bearer(READ)})
    _one_line_error(r, 400, *words)


def test_bad_query_numbers(gw: Gateway) -> None:
    for query in ("cursor=x", "replay_limit=-3"):
        r = httpx.get(gw.base + f"/sessions/h-1/events/stream?{query}", headers=_bearer(READ))
        _one_line_error(r, 400, "non-negative integer")
    r = httpx.get(gw.base + "/sessions/h-1/events?limit=1e9", headers=_bearer(READ))
    _one_line_error(r, 400, "limit")


def test_a_thousand_connections_opened_and_dropped(gw: Gateway) -> None:
    before = file_state(gw.root)
    baseline = gw.pubsub_clients()

    async def one(i: int) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        if i % 3 == 0:
            writer.write(b"GET /sessions/h-1/events/stream HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + READ.encode() + b"\r\n\r\n")
        elif i % 3 == 1:
            writer.write(b"POST /sessions/h-1/events HTTP/1.1\r\nContent-Length: 5000\r\n"
                         b"Content-Type: application/json\r\n\r\n{\"seq")
        else:
            writer.write(b"GET /sess")
        with_drain = writer.drain()
        await asyncio.wait_for(with_drain, 5)
        writer.transport.abort()

    async def run() -> None:
        for start in range(0, 1000, 100):
            await asyncio.gather(*(one(i) for i in range(start, start + 100)))

    asyncio.run(run())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        metrics = httpx.get(gw.base + "/metrics").text
        if ('journal_http_active_streams{feed="session"} 0.0' in metrics
                and gw.pubsub_clients() == baseline):
            break
        time.sleep(0.2)
    assert 'journal_http_active_streams{feed="session"} 0.0' in metrics
    assert gw.pubsub_clients() == baseline
    assert httpx.get(gw.base + "/healthz").json()["status"] == "ok"
    assert file_state(gw.root) == before

    async def still_streams() -> list[int]:
        c = SseClient(gw.port, "/sessions/h-1/events/stream", _bearer(READ))
        await c.connect()
        await c.read_until(lambda c: len(c.events) >= 1, 5)
        c.close()
        return [s for s, _ in c.events]

    assert asyncio.run(still_streams()) == [1]


def test_without_tokens_only_loopback_host_names_are_answered(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    g = Gateway(tmp_path_factory.mktemp("rebind"))
    try:
        g.start()
        r = httpx.get(g.base + "/sessions", headers={"Host": "evil.example:80"})
        _one_line_error(r, 421, "loopback")
        assert httpx.get(g.base + "/sessions", headers={"Host": "localhost:1"}).status_code == 200
    finally:
        g.close()
