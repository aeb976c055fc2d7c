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

The events are split over ``--rounds`` rounds, and each round runs every measurement once,
in turn: on a shared machine the load changes from second to second, and alternating short
phases exposes every measurement to the same load (figures are pooled over the rounds; the
ratios to raw are of the pooled figures). ``--against PATH`` adds a subscriber run from
another checkout (a base to compare a change with), alternating with this one, against the
same writer and Redis.

Times come from ``time.monotonic_ns`` (CLOCK_MONOTONIC: one clock for every process on the
host). Usage: ``python scripts/sub_latency.py [--events 2000] [--pace-ms 2] [--rounds 4]
[--against ../base-checkout]``.
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

# The journal to import: this checkout, or for a subscriber child of ``--against`` the other
# one (``--checkout``, read here: the imports below need it).
sys.path.insert(0, sys.argv[sys.argv.index("--checkout") + 1] if "--checkout" in sys.argv[:-1]
                else str(Path(__file__).resolve().parents[1]))

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


def child_raw(url: str, channel: str, count: int, out: str) -> None:
    arrivals: list[int] = []
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
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


Results = dict[str, list[float]]


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
                    tmp: Path, phase: str, checkout: str | None = None) -> Results:
    session = f"{SESSION}-{phase}"  # one Redis for every phase: a session each
    out = tmp / f"journal-{phase}.json"
    total = events + WARMUP
    other = ["--checkout", checkout] if checkout else []
    child = _start("--role", "journal", "--url", url, "--root", str(root), "--session", session,
                   "--count", str(total), "--out", str(out), *other)
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


def measure_raw(url: str, events: int, pace_s: float, tmp: Path, phase: str) -> Results:
    out = tmp / f"raw-{phase}.json"
    channel = f"{RAW_CHANNEL}-{phase}"
    total = events + WARMUP
    child = _start("--role", "raw", "--url", url, "--session", channel, "--count", str(total),
                   "--out", str(out))
    calls: list[int] = []
    returns: list[int] = []
    # What a commit of one small event publishes, byte for byte the same size.
    record = EventRecord.new(SESSION, "main", 1, {"type": "UserMessage", "content": "m1"})
    line = encode_line(record)
    payload = encode_announcement(SESSION, "main", 1, 1, 0, len(line), line)
    try:
        client = redis.Redis.from_url(url)
        _wait_subscribed(client, channel)
        next_at = time.monotonic()
        for _ in range(total):
            _pace(next_at)
            next_at += pace_s
            calls.append(time.monotonic_ns())
            client.publish(channel, payload)
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


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _row(name: str, values: list[float]) -> str:
    return (f"| {name:<48} | {min(values):8.3f} | {statistics.median(values):8.3f} | "
            f"{_p99(values):8.3f} | {max(values):8.3f} |")


def _add(into: Results, more: Results) -> None:
    for name, values in more.items():
        into.setdefault(name, []).extend(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="per measurement, in all")
    parser.add_argument("--pace-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--against", help="another checkout whose subscriber runs too")
    parser.add_argument("--role", choices=["journal", "raw"])
    parser.add_argument("--checkout")
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
        child_raw(args.url, args.session, args.count, args.out)
        return
    pace_s = args.pace_ms / 1000
    per_phase = max(args.events // args.rounds, 10)
    against = str(Path(args.against).resolve()) if args.against else None
    raw = "raw redis-py pub/sub"
    results: dict[str, Results] = {}
    with tempfile.TemporaryDirectory(prefix="sub-latency-") as tmp_name, \
            RedisServer() as server:
        tmp = Path(tmp_name)
        for r in range(args.rounds):
            for durability in ("fsync", "none"):
                _add(results.setdefault(f"journal, durability={durability}", {}), measure_journal(
                    server.url, tmp / "data", per_phase, pace_s, durability, tmp,
                    f"{durability}-{r}"))
            if against:
                _add(results.setdefault(f"journal of {against}, durability=fsync", {}),
                     measure_journal(server.url, tmp / "data", per_phase, pace_s, "fsync", tmp,
                                     f"against-{r}", against))
            _add(results.setdefault(raw, {}), measure_raw(server.url, per_phase, pace_s, tmp,
                                                          str(r)))
    print(f"{per_phase * args.rounds} events per measurement in {args.rounds} alternating "
          f"rounds, one every {args.pace_ms:g} ms, after {WARMUP} warm-up events a phase; "
          "milliseconds")
    print(f"| {'measurement':<48} | {'min':>8} | {'p50':>8} | {'p99':>8} | {'max':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for title, rows in results.items():
        print(f"| **{title}**{' ' * max(44 - len(title), 0)} |{'          |' * 4}")
        for name, values in rows.items():
            print(_row(name, values))
    floor = results[raw]["PUBLISH returned -> message in subscriber"]
    print("\nFrom the return of the append (of PUBLISH for raw) to the subscriber, against raw:")
    for title, rows in results.items():
        if title != raw:
            lat = rows["append returned -> event in subscriber"]
            print(f"  {title}: p50 {statistics.median(lat) / statistics.median(floor):.2f}x, "
                  f"p99 {_p99(lat) / _p99(floor):.2f}x")


if __name__ == "__main__":
    main()
