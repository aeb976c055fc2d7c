#!/usr/bin/env python3
"""Aggregate append rate over 16 sessions: one Redis node against a 3-primary Redis Cluster.

Both are measured in the same run, on the same disk, in alternating rounds (single, cluster,
single, cluster, ...), with the same writer processes: ``--writers`` processes share the
``--sessions`` sessions (each process owns sessions ``i, i + writers, ...``, so there is no
contention between writers, only on the machine), append one event per call with durability
``fsync`` (the default; every event fdatasync'ed), and run for ``--duration`` seconds from a
common start time. The rate is the sum of the per-process rates. The cluster is the one of
the tests (``tests/cluster.py``: 3 primaries, each with ``--replicas`` replicas, loopback).

On a small machine this shows the cluster's overhead (more processes, replication traffic,
client-side routing), not a speed-up: the appends are bound by fdatasync and CPU, and all
six Redis processes share the same cores as the writers. A cluster buys capacity and
availability when its nodes have machines of their own.

Run: ``.venv/bin/python scripts/cluster_bench.py [--sessions 16] [--writers 4]
[--duration 4] [--rounds 2] [--replicas 1] [--durability fsync]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from journal import AppendOutcomeUnknown, EventRecord, Journal  # noqa: E402
from journal.server._process import redis_server_version  # noqa: E402
from journal.testing import RedisServer  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    sessions = args.sessions.split(",")
    j = Journal(args.root, args.url, durability=args.durability).open()
    nxt = {s: j.head(s) + 1 for s in sessions}
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.monotonic()
    stop = start + args.duration
    events = unknown = 0
    while time.monotonic() < stop:
        for s in sessions:
            record = EventRecord.new(s, "main", nxt[s],
                                     {"type": "UserMessage", "content": f"bench {nxt[s]}"})
            while True:
                try:
                    j.append(record)
                    break
                except AppendOutcomeUnknown:
                    unknown += 1  # the held lease ran out before the commit: retry it
            nxt[s] += 1
            events += 1
    elapsed = time.monotonic() - start
    j.close()
    Path(args.out).write_text(json.dumps({"events": events, "elapsed": elapsed,
                                          "unknown": unknown}))


def measure(url: str, root: Path, sessions: list[str], writers: int, duration: float,
            durability: str) -> tuple[float, int, int]:
    """(events per second summed over the writers, events, outcome-unknown retries)."""
    start_at = time.time() + 1.5  # every writer has opened its journal by then
    procs, outs = [], []
    for w in range(writers):
        out = root.parent / f"{root.name}-w{w}.json"
        outs.append(out)
        procs.append(subprocess.Popen([
            sys.executable, __file__, "worker", "--url", url, "--root", str(root),
            "--sessions", ",".join(sessions[w::writers]), "--start-at", str(start_at),
            "--duration", str(duration), "--durability", durability, "--out", str(out)]))
    try:
        for p in procs:
            if p.wait(timeout=duration + 60) != 0:
                raise SystemExit(f"a writer failed with status {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads(o.read_text()) for o in outs]
    return (sum(r["events"] / r["elapsed"] for r in results),
            sum(r["events"] for r in results), sum(r["unknown"] for r in results))


def run(args: argparse.Namespace) -> None:
    from tests.cluster import LocalCluster, skip_reason

    reason = skip_reason()
    if reason:
        raise SystemExit(f"cannot run a local cluster: {reason}")
    sessions = [f"bench-{n}" for n in range(args.sessions)]
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        base = Path(tmp)
        single = RedisServer(dir=base / "single").start()
        cluster = LocalCluster(base / "cluster", replicas=args.replicas)
        try:
            cluster.start()
            probe = Journal(base / "probe", cluster.url)
            shards: dict[int, int] = {}
            for s in sessions:
                port = cluster.primary_of(probe.core.keys(s).state)
                shards[port] = shards.get(port, 0) + 1
            print(f"redis-server {'.'.join(map(str, redis_server_version()))}, "
                  f"{os.cpu_count()} cores, {args.writers} writer processes, "
                  f"{args.sessions} sessions, durability {args.durability}, "
                  f"{args.duration:g} s x {args.rounds} rounds per target")
            print(f"cluster: {cluster.primaries} primaries x {args.replicas} replica(s); "
                  f"sessions per primary: {sorted(shards.values())}")
            rates: dict[str, list[float]] = {"single": [], "cluster": []}
            for r in range(args.rounds):
                for name, url in (("single", single.url), ("cluster", cluster.url)):
                    root = base / f"{name}-{r}"  # fresh files and a fresh Redis each round
                    for port in ([single.port] if name == "single" else cluster.primary_ports()):
                        client = redis.Redis(port=port)
                        client.flushall()
                        client.close()
                    rate, events, unknown = measure(url, root, sessions, args.writers,
                                                    args.duration, args.durability)
                    rates[name].append(rate)
                    print(f"  round {r + 1}  {name:8} {rate:8.0f} appends/s  ({events} events, "
                          f"{unknown} outcome-unknown retries)", flush=True)
            one, many = statistics.median(rates["single"]), statistics.median(rates["cluster"])
            ratio = statistics.median(c / s for s, c in zip(rates["single"], rates["cluster"],
                                                            strict=True))
            print(f"single node   {one:8.0f} appends/s (median of rounds)")
            print(f"3-primary     {many:8.0f} appends/s (median of rounds)")
            print(f"cluster / single = {ratio:.2f} (median of the per-round ratios)")
        finally:
            cluster.close()
            single.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--root", required=True)
    w.add_argument("--sessions", required=True)
    w.add_argument("--start-at", type=float, required=True)
    w.add_argument("--duration", type=float, required=True)
    w.add_argument("--durability", default="fsync")
    w.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--durability", default="fsync", choices=["fsync", "batch", "none"])
    args = ap.parse_args()
    worker(args) if args.cmd == "worker" else run(args)


if __name__ == "__main__":
    main()
