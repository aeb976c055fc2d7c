"""`journal serve` against aiOS's HTTP contract (apps/aios-api in broomva/aiOS), field by
field, with the shared aiOS sample as data; plus what aiOS lacks: appends, resume,
the session list, the firehose, metrics. One real server process and redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_support import Gateway, SseClient, parse_frames
from tests.support import sample_path

pytestmark = pytest.mark.timeout(60)

LIST_FIELDS = {"session_id", "branch", "from_sequence", "events"}
BRANCH_FIELDS = {"branch_id", "parent_branch", "fork_sequence", "head_sequence", "merged_into"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("gw"), args=("--heartbeat", "0.5"))
    try:
        yield g.start()
    finally:
        g.close()


@pytest.fixture(scope="module")
def sample(gw: Gateway) -> tuple[str, list[str]]:
    """The aiOS sample, appended over HTTP one record per POST, in file order."""
    lines = sample_path().read_text(encoding="utf-8").splitlines()
    with gw.client() as c:
        for line in lines:
            r = c.post(f"/sessions/{json.loads(line)['session_id']}/events",
                       content=line.encode(), headers={"content-type": "application/json"})
            assert r.status_code == 201, r.text
    return json.loads(lines[0])["session_id"], lines


def _lines(records: list[dict[str, object]]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]


def test_healthz(gw: Gateway) -> None:
    r = httpx.get(gw.base + "/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["redis"] is True


def test_list_events_shape_and_records_round_trip(gw: Gateway, sample: tuple[str, list[str]]
                                                  ) -> None:
    sid, lines = sample
    with gw.client() as c:
        body = c.get(f"/sessions/{sid}/events").json()
        assert set(body) == LIST_FIELDS
        assert (body["session_id"], body["branch"], body["from_sequence"]) == (sid, "main", 1)
        main = [ln for ln in lines if json.loads(ln)["branch_id"] == "main"]
        # Every record comes back exactly as aiOS wrote it (field order, nanoseconds, extras).
        assert _lines(body["events"]) == main
        alt = c.get(f"/sessions/{sid}/events", params={"branch": "alt"}).json()
        assert alt["branch"] == "alt" and [e["sequence"] for e in alt["events"]] == [1, 2]
        # from_sequence and limit as aiOS treats them: from >= 1, limit clamped to 1..5000.
        page = c.get(f"/sessions/{sid}/events", params={"from_sequence": 3, "limit": 2}).json()
        assert page["from_sequence"] == 3 and [e["sequence"] for e in page["events"]] == [3, 4]
        zero = c.get(f"/sessions/{sid}/events", params={"from_sequence": 0, "limit": 0}).json()
        assert zero["from_sequence"] == 1 and [e["sequence"] for e in zero["events"]] == [1]
        big = c.get(f"/sessions/{sid}/events", params={"limit": 10**9}).json()
        assert len(big["events"]) == len(main)
        none = c.get("/sessions/never-written/events").json()
        assert none["events"] == [] and none["session_id"] == "never-written"


def test_branches_shape(gw: Gateway, sample: tuple[str, list[str]]) -> None:
    sid, _ = sample
    body = httpx.get(f"{gw.base}/sessions/{sid}/branches").json()
    assert set(body) == {"session_id", "branches"} and body["session_id"] == sid
    by_id = {b["branch_id"]: b for b in body["branches"]}
    assert all(set(b) == BRANCH_FIELDS for b in body["branches"])
    assert by_id["main"] == {"branch_id": "main", "parent_branch": None, "fork_sequence": 0,
                             "head_sequence": 9, "merged_into": None}
    assert by_id["alt"] == {"branch_id": "alt", "parent_branch": "main", "fork_sequence": 4,
                            "head_sequence": 2, "merged_into": None}


def _stream(gw: Gateway, path: str, count: int, headers: dict[str, str] | None = None,
            timeout: float = 10) -> SseClient:
    async def run() -> SseClient:
        client = SseClient(gw.port, path, headers)
        await client.connect()
        try:
            if client.status == 200:
                await client.read_until(lambda c: len(c.events) >= count, timeout)
        finally:
            client.close()
        return client

    return asyncio.run(run())


def test_stream_frames_replay_from_cursor(gw: Gateway, sample: tuple[str, list[str]]) -> None:
    sid, lines = sample
    c = _stream(gw, f"/sessions/{sid}/events/stream?cursor=6", 3)
    assert c.status == 200
    h = c.response_headers
    assert h["content-type"].startswith("text/event-stream")
    assert h["cache-control"] == "no-store" and h["x-accel-buffering"] == "no"
    assert "content-encoding" not in h
    assert c.frames[0] == {"retry": "2000"}
    events = [f for f in c.frames if f.get("event") == "kernel.event"]
    main = [ln for ln in lines if json.loads(ln)["branch_id"] == "main"]
    assert [f["id"] for f in events] == ["7", "8", "9"]
    assert [f["data"] for f in events] == main[6:9]


def test_last_event_id_wins_over_cursor(gw: Gateway, sample: tuple[str, list[str]]) -> None:
    sid, _ = sample
    c = _stream(gw, f"/sessions/{sid}/events/stream?cursor=0", 1, {"Last-Event-ID": "8"})
    assert [seq for seq, _ in c.events] == [9]


def test_stream_goes_live_exactly_once_in_order_with_heartbeats(gw: Gateway) -> None:
    async def run() -> SseClient:
        client = SseClient(gw.port, "/sessions/live-1/events/stream?replay_limit=2")
        await client.connect()
        async with httpx.AsyncClient(base_url=gw.base) as http:
            for seq in range(1, 4):  # three before the stream reads, then more live
                await _post(http, "live-1", seq)
            reader = asyncio.create_task(
                client.read_until(lambda c: len(c.events) >= 8, 15))
            for seq in range(4, 9):
                await _post(http, "live-1", seq)
            await reader
            await client.read_until(lambda c: any(":" in f for f in c.frames), 5)
        client.close()
        return client

    c = asyncio.run(run())
    assert [seq for seq, _ in c.events] == list(range(1, 9))
    assert any(f.get(":") == "heartbeat" for f in c.frames)


async def _post(http: httpx.AsyncClient, sid: str, seq: int, **fields: object) -> httpx.Response:
    body = {"sequence": seq, "kind": {"type": "UserMessage", "content": f"m{seq}"}, **fields}
    r = await http.post(f"/sessions/{sid}/events", json=body)
    assert r.status_code == 201, r.text
    return r


def test_append_batch_conflict_and_idempotent_retry(gw: Gateway) -> None:
    with gw.client() as c:
        batch = [{"sequence": s, "event_id": f"e{s}", "kind": {"type": "UserMessage",
                                                              "content": str(s)}}
                 for s in (1, 2, 3)]
        r = c.post("/sessions/app-1/events", json=batch)
        assert r.status_code == 201
        body = r.json()
        assert (body["first_sequence"], body["last_sequence"]) == (1, 3)
        assert [e["event_id"] for e in body["events"]] == ["e1", "e2", "e3"]
        # The same record again (same event id, same sequence): success, the stored one.
        again = c.post("/sessions/app-1/events", json=batch[2])
        assert again.status_code == 201 and again.json()["events"] == body["events"][2:]
        clash = c.post("/sessions/app-1/events", json={**batch[2], "event_id": "other"})
        assert clash.status_code == 409
        assert clash.json()["expected"] == 4 and clash.json()["actual"] == 3
        assert "expected 4, got 3" in clash.json()["error"]
        assert c.get("/sessions/app-1/branches").json()["branches"][0]["head_sequence"] == 3


def test_sessions_list(gw: Gateway, sample: tuple[str, list[str]]) -> None:
    sid, _ = sample
    body = httpx.get(gw.base + "/sessions").json()
    row = next(s for s in body["sessions"] if s["session_id"] == sid)
    assert row == {"session_id": sid, "branches": {"main": 9, "alt": 2}, "events": 11}


def test_firehose_ids_and_prefix(gw: Gateway) -> None:
    async def run() -> SseClient:
        client = SseClient(gw.port, "/events/stream?prefix=fh-")
        await client.connect()
        await client.read_until(lambda c: any(f.get("event") == "stream.status"
                                              for f in c.frames), 5)
        async with httpx.AsyncClient(base_url=gw.base) as http:
            await _post(http, "other-1", 1)
            await _post(http, "fh-a", 1)
            await _post(http, "fh-b", 1)
            await _post(http, "fh-a", 2)
        await client.read_until(lambda c: len(c.events) >= 3, 10)
        client.close()
        return client

    c = asyncio.run(run())
    ids = [f["id"] for f in c.frames if f.get("event") == "kernel.event"]
    assert ids == ["fh-a:main:1", "fh-b:main:1", "fh-a:main:2"]


def test_disconnect_ends_the_subscription(gw: Gateway) -> None:
    baseline = gw.pubsub_clients()

    async def run() -> list[int]:
        clients = [SseClient(gw.port, f"/sessions/dc-{i}/events/stream") for i in range(5)]
        for c in clients:
            await c.connect()
            await c.read_until(lambda c: any(f.get("event") == "stream.status"
                                             for f in c.frames), 5)
        during = gw.pubsub_clients()
        for c in clients:
            c.close()
        return [during]

    during = asyncio.run(run())[0]
    assert during == baseline + 5
    deadline = time.monotonic() + 5
    while gw.pubsub_clients() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.pubsub_clients() == baseline
    metrics = httpx.get(gw.base + "/metrics").text
    assert 'journal_http_active_streams{feed="session"} 0.0' in metrics


def test_metrics(gw: Gateway, sample: tuple[str, list[str]]) -> None:
    text = httpx.get(gw.base + "/metrics").text
    for name in ("journal_http_append_seconds_bucket", "journal_fsync_seconds_count",
                 "journal_sequence_conflicts_total", "journal_lease_waits_total",
                 "journal_http_active_streams", "journal_subscriber_fallbacks_total"):
        assert name in text, name
    assert 'journal_http_append_seconds_count{outcome="ok"}' in text
    fsyncs = [ln for ln in text.splitlines() if ln.startswith("journal_fsync_seconds_count")]
    assert float(fsyncs[0].split()[-1]) >= 1


def test_dashboard_is_served(gw: Gateway) -> None:
    page = httpx.get(gw.base + "/")
    assert page.status_code == 200 and "<title>journal" in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert httpx.get(gw.base + asset).status_code == 200
    assert "https://" not in page.text  # no CDN


def test_parse_frames_handles_comments() -> None:
    assert parse_frames(": hi\n\nid: 1\nevent: x\ndata: {}\n\n") == [
        {":": "hi"}, {"id": "1", "event": "x", "data": "{}"}]


def test_serve_refuses_non_loopback_without_tokens(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "journal", "serve", "--root", str(tmp_path),
                        "--host", "0.0.0.0", "--port", "1"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("journal serve: error: refusing to listen on 0.0.0.0")
