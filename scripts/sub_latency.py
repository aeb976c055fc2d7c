#!/usr/bin/env python3
"""Measure live-subscription latency between two processes, and raw Redis pub/sub for scale.

Starts its own redis-server (journal.testing.RedisServer) and a temporary journal root,
then for each measurement starts a subscriber in another process:

* journal: the parent appends N events, paced, with ``Journal.append``; the child iterates
  ``Journal.subscribe`` and notes when each event arrives. Reported from the moment the
  append returned (may be negative: the commit script publishes before it answers the
  writer) and from the moment the append was called (the whole path: file write, fsync,
  commit, publish, the subscriber's decode and yield).
* raw: the parent PUBLISHes a payload of the same size with redis-py; the child reads it with
  ``pubsub.get_message``. That is the floor any pub/sub-based subscription stands on.

Times come from ``time.monotonic_ns`` (CLOCK_MONOTONIC: one clock for every process on the
host). Usage: ``python scripts/sub_latency.py [--events 2000] [--pace-ms 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from journal import EventRecord, Journal
from journal._model.announcement import encode_announcement
from journal._model.records import encode_line
from journal.testing import RedisServer

SESSION = "latency"
RAW_CHANNEL = "latency-raw"
WARMUP = 50


# ----- the child processes -------------------------------------------------------------------


def child_journal(url: str, root: str, session: str, count: int, out: str) -> None:
    arrivals: list[int] = []
    with Journal(root, url) as j:
        for record in j.subscribe(session, "main", 0, idle_s=1.0):
            arrivals.append(time.monotonic_ns())
            if record.sequence >= count:
                break
    Path(out).write_text(json.dumps(arrivals))


def child_raw(url: str, count: int, out: str) -> None:
    arrivals: list[int] = []
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(RAW_CHANNEL)
    while len(arrivals) < count:
        message = pubsub.get_message(timeout=5.0)
        if message is not None and message["type"] == "message":
            arrivals.append(time.monotonic_ns())
    pubsub.close()
    client.close()
    Path(out).write_text(json.dumps(arrivals))


# ----- the parent --------------------------------------------------------------------------


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.DEVNULL)


def _wait_subscribed(client: redis.Redis, channel: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while int(client.pubsub_numsub(channel)[0][1]) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the subscriber never subscribed to {channel}")
        time.sleep(0.01)


def _pace(next_at: float) -> float:
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    return time.monotonic()


def measure_journal(url: str, root: Path, events: int, pace_s: float, durability: str,
                    tmp: Path) -> dict[str, list[float]]:
    session = f"{SESSION}-{durability}"  # one Redis for every run: a session each
    out = tmp / f"journal-{durability}.json"
    total = events + WARMUP
    child = _start("--role", "journal", "--url", url, "--root", str(root), "--session", session,
                   "--count", str(total), "--out", str(out))
    calls: list[int] = []
    returns: list[int] = []
    try:
        with Journal(root, url, durability=durability) as j:
            _wait_subscribed(j.redis, j.core.keys(session).channel)
            time.sleep(0.2)  # let its first head check and (empty) replay finish
            next_at = time.monotonic()
            for seq in range(1, total + 1):
                _pace(next_at)
                next_at += pace_s
                record = EventRecord.new(session, "main", seq,
                                         {"type": "UserMessage", "content": f"m{seq}"})
                calls.append(time.monotonic_ns())
                j.append(record)
                returns.append(time.monotonic_ns())
        if child.wait(timeout=60) != 0:
            raise RuntimeError("the journal subscriber failed")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    arrivals: list[int] = json.loads(out.read_text())
    keep = slice(WARMUP, total)
    return {
        "append (call to return)": _ms(calls[keep], returns[keep]),
        "append returned -> event in subscriber": _ms(returns[keep], arrivals[keep]),
        "append called -> event in subscriber": _ms(calls[keep], arrivals[keep]),
    }


def measure_raw(url: str, events: int, pace_s: float, tmp: Path) -> dict[str, list[float]]:
    out = tmp / "raw.json"
    total = events + WARMUP
    child = _start("--role", "raw", "--url", url, "--count", str(total), "--out", str(out))
    calls: list[int] = []
    returns: list[int] = []
    # What a commit of one small event publishes, byte for byte the same size.
    record = EventRecord.new(SESSION, "main", 1, {"type": "UserMessage", "content": "m1"})
    line = encode_line(record)
    payload = encode_announcement(SESSION, "main", 1, 1, 0, len(line), line)
    try:
        client = redis.Redis.from_url(url)
        _wait_subscribed(client, RAW_CHANNEL)
        next_at = time.monotonic()
        for _ in range(total):
            _pace(next_at)
            next_at += pace_s
            calls.append(time.monotonic_ns())
            client.publish(RAW_CHANNEL, payload)
            returns.append(time.monotonic_ns())
        client.close()
        if child.wait(timeout=60) != 0:
            raise RuntimeError("the raw subscriber failed")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    arrivals: list[int] = json.loads(out.read_text())
    keep = slice(WARMUP, total)
    return {
        "PUBLISH (call to return)": _ms(calls[keep], returns[keep]),
        "PUBLISH returned -> message in subscriber": _ms(returns[keep], arrivals[keep]),
        "PUBLISH called -> message in subscriber": _ms(calls[keep], arrivals[keep]),
    }


def _ms(start: list[int], end: list[int]) -> list[float]:
    return [(b - a) / 1e6 for a, b in zip(start, end, strict=True)]


def _row(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return (f"| {name:<48} | {min(values):8.3f} | {statistics.median(values):8.3f} | "
            f"{q[98]:8.3f} | {max(values):8.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--pace-ms", type=float, default=2.0)
    parser.add_argument("--role", choices=["journal", "raw"])
    parser.add_argument("--url")
    parser.add_argument("--root")
    parser.add_argument("--session")
    parser.add_argument("--count", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.role == "journal":
        child_journal(args.url, args.root, args.session, args.count, args.out)
        return
    if args.role == "raw":
        child_raw(args.url, args.count, args.out)
        return
    pace_s = args.pace_ms / 1000
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sub-latency-") as tmp_name, \
            RedisServer() as server:
        tmp = Path(tmp_name)
        for durability in ("fsync", "none"):
            results[f"journal, durability={durability}"] = measure_journal(
                server.url, tmp / "data", args.events, pace_s, durability, tmp)
        results["raw redis-py pub/sub"] = measure_raw(server.url, args.events, pace_s, tmp)
    print(f"{args.events} events per run, one every {args.pace_ms:g} ms, "
          f"after {WARMUP} warm-up events; milliseconds")
    print(f"| {'measurement':<48} | {'min':>8} | {'p50':>8} | {'p99':>8} | {'max':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for title, rows in results.items():
        print(f"| **{title}**{' ' * (44 - len(title))} |{'          |' * 4}")
        for name, values in rows.items():
            print(_row(name, values))


if __name__ == "__main__":
    main()

