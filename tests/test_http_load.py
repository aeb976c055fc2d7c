"""Load on one `journal serve` process: 200 SSE clients while 4 writer processes append;
every client gets every event exactly once, in order. Reports (does not assert) the
append-to-receive latency and the server's memory per connection. A client that never
reads is cut off without growing the server's memory.

Short by default; JOURNAL_HTTP_LOAD_EVENTS=<events per writer> runs it longer."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_support import Gateway, SseClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 200
WRITERS = 4
PER_WRITER = int(os.environ.get("JOURNAL_HTTP_LOAD_EVENTS", "25"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("load"), args=("--send-timeout", "3",
                                                       "--heartbeat", "1"))
    try:
        yield g.start()
    finally:
        g.close()


def _acks(path: Path) -> dict[int, float]:
    out = {}
    for line in path.read_text().split("\n"):
        if line.strip():
            seq, t = line.split()
            out[int(seq)] = float(t)
    return out


def test_200_clients_4_writers_every_event_exactly_once(gw: Gateway) -> None:
    total = WRITERS * PER_WRITER
    idle_rss = gw.rss_kib()

    async def run() -> tuple[list[SseClient], int]:
        clients = [SseClient(gw.port, "/sessions/load/events/stream") for _ in range(CLIENTS)]
        for start in range(0, CLIENTS, 50):
            await asyncio.gather(*(c.connect() for c in clients[start:start + 50]))
        statuses = [c.status for c in clients]
        assert statuses == [200] * CLIENTS, statuses
        # Every stream listening (its first status frame) before the writers start.
        await asyncio.gather(*(c.read_until(
            lambda c: any(f.get("event") == "stream.status" for f in c.frames), 30)
            for c in clients))
        connected_rss = gw.rss_kib()
        for w in range(WRITERS):
            gw.writer("load", PER_WRITER, f"w{w}")
        await asyncio.gather(*(c.read_until(lambda c: len(c.events) >= total, 120)
                               for c in clients))
        for c in clients:
            c.close()
        return clients, connected_rss

    clients, connected_rss = asyncio.run(run())
    for w in gw.writers:
        assert w.wait(timeout=30) == 0
    for c in clients:
        assert [seq for seq, _ in c.events] == list(range(1, total + 1))
    acks: dict[int, float] = {}
    for w in range(WRITERS):
        acks.update(_acks(gw.tmp / f"w{w}.acks"))
    assert sorted(acks) == list(range(1, total + 1))
    lat = sorted((t - acks[seq]) * 1000 for c in clients for seq, t in c.events)
    p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99)]
    per_conn = (connected_rss - idle_rss) / CLIENTS
    report = (f"HTTP load: {CLIENTS} SSE clients x {total} events from {WRITERS} writer "
              f"processes: append->receive p50 {p50:.1f} ms, p99 {p99:.1f} ms; server RSS "
              f"{idle_rss / 1024:.1f} MiB idle, {connected_rss / 1024:.1f} MiB with "
              f"{CLIENTS} streams = {per_conn:.0f} KiB per connection")
    print("\n" + report)
    (gw.tmp.parent / "http-load-report.txt").write_text(report + "\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "feed=\"session\"} 0.0" not in (
            httpx.get(gw.base + "/metrics").text):
        time.sleep(0.1)
    assert 'journal_http_active_streams{feed="session"} 0.0' in httpx.get(
        gw.base + "/metrics").text


def test_a_client_that_never_reads_is_cut_off_without_growing_memory(gw: Gateway) -> None:
    baseline = gw.pubsub_clients()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(b"GET /sessions/slow/events/stream?replay_limit=50 HTTP/1.0\r\n"
                 b"Host: 127.0.0.1\r\n\r\n")
    try:
        time.sleep(0.5)
        before = gw.rss_kib()
        writer, _ = gw.writer("slow", 200, "slow", pad=50_000)  # ~10 MB the client never takes
        assert writer.wait(timeout=60) == 0
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(gw.base + "/metrics").text
            if "journal_http_stream_cutoffs_total 1.0" in text:
                break
            time.sleep(0.2)
        assert "journal_http_stream_cutoffs_total 1.0" in text
        grown = (gw.rss_kib() - before) / 1024
        print(f"\nslow client: cut off; server RSS grew {grown:.1f} MiB while ~10 MB "
              "went unread")
        assert grown < 8, f"server memory grew {grown:.1f} MiB for a client that never reads"
        assert 'journal_http_active_streams{feed="session"} 0.0' in text
        deadline = time.monotonic() + 5
        while gw.pubsub_clients() != baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.pubsub_clients() == baseline
    finally:
        sock.close()
