#!/usr/bin/env python3
"""Figures for several hosts, side by side in one run, on the GlusterFS rig (tests/gluster.py).

    .venv/bin/python scripts/bench_multihost.py [--seconds S] [--rounds N] [--strace]
        [--volume-set KEY=VALUE ...] [--mount-options "--attribute-timeout=1 ..."]

Starts the rig (one volume, two FUSE mounts as hosts a and b) and a private redis-server, then:

1. raw ``write`` + ``fdatasync`` of a 250-byte line on an O_APPEND descriptor on mount a
   (the filesystem's own floor, ``F_fs``), and the same from one process on each mount at
   once (how the filesystem itself scales to two hosts);
2. the journal, 1 writer process on host a (``durability=fsync``);
3. 2 writer processes, one per host, each on its own session (aggregate);
4. 4 writer processes on one session, 2 per host, head + 1 and retry on conflict (aggregate);
5. a subscriber on host b following a writer on host a: the delay from before ``append`` to
   the subscriber's hand, p50 and p99;
6. with ``--strace``: the syscalls per append of one writer in steady state (``strace -c -w
   -f``, minus a run that appends nothing), and where their wall time goes.

Each writer is its own process; rates are events per second of wall time. ``--rounds N``
runs figures 1-4 N times, interleaved, and prints each round and the medians (the machine is
shared: one round is noise). ``--volume-set`` and ``--mount-options`` change the rig's
settings, to measure what other settings would buy (the tests say whether they are safe).
Nothing here is asserted: the tests check correctness, this prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from journal import (  # noqa: E402
    AppendOutcomeUnknown,
    EventRecord,
    Journal,
    LeaseTimeout,
    SequenceConflict,
)
from journal.testing import RedisServer  # noqa: E402
from tests import gluster  # noqa: E402

CONTENT = "x" * 120  # a ~250-byte UserMessage line


def worker(args: argparse.Namespace) -> None:
    """One writer process: append for ``seconds``; print its count as JSON."""
    j = Journal(args.root, args.url, durability="fsync", lease_wait_s=60).open()
    done = conflicts = unknown = 0
    head = j.head(args.session, "main")
    stop = time.monotonic() + args.seconds
    rec = None
    while time.monotonic() < stop:
        if rec is None:
            rec = EventRecord.new(args.session, "main", head + 1,
                                  {"type": "UserMessage", "content": CONTENT})
        try:
            j.append(rec)
            head += 1
            done += 1
            rec = None
        except SequenceConflict:
            conflicts += 1
            head = j.head(args.session, "main")
            rec = None
        except (AppendOutcomeUnknown, LeaseTimeout):
            unknown += 1  # retry the same record: that resolves it
    j.close()
    print(json.dumps({"done": done, "conflicts": conflicts, "unknown": unknown}))


def raw_rate(directory: Path, seconds: float) -> float:
    line = json.dumps({"content": CONTENT, "pad": "y" * 100}).encode() + b"\n"
    path = directory / "raw.dat"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = 0
    stop = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < stop:
        os.write(fd, line)
        os.fdatasync(fd)
        n += 1
    elapsed = time.monotonic() - start
    os.close(fd)
    path.unlink()
    return n / elapsed


def raw_hosts(directories: list[Path], seconds: float) -> float:
    """Raw write + fdatasync from one process per directory (host), all at once: the
    aggregate rate, how the filesystem itself scales to several hosts."""
    procs = [subprocess.Popen([sys.executable, __file__, "--raw-worker", "--root", str(d),
                               "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
             for d in directories]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise SystemExit(f"a raw writer failed (exit {p.returncode})")
        total += float(out.strip().splitlines()[-1])
    return total


def writers(specs: list[tuple[Path, str]], url: str, seconds: float,
            prefix: list[str] | None = None) -> float:
    """Run one writer process per (root, session), all at once; the aggregate rate."""
    procs = [subprocess.Popen([*(prefix or []), sys.executable, __file__, "--worker",
                               "--root", str(root), "--url", url, "--session", session,
                               "--seconds", str(seconds)],
                              stdout=subprocess.PIPE, text=True)
             for root, session in specs]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise SystemExit(f"a writer failed (exit {p.returncode})")
        total += json.loads(out.strip().splitlines()[-1])["done"]
    return total / seconds if seconds else 0.0


def subscriber_delay(root_a: Path, root_b: Path, url: str, count: int) -> tuple[float, float]:
    delays: list[float] = []
    reader = Journal(root_b, url).open()
    sub = reader.subscribe("sub", "main", after_sequence=0, idle_s=0.2)
    sent: dict[str, float] = {}

    def follow() -> None:
        for event in sub:
            delays.append(time.monotonic() - sent[event.event_id])
            if len(delays) >= count:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)  # the subscription listens before the first event
    writer = Journal(root_a, url).open()
    for n in range(1, count + 1):
        rec = EventRecord.new("sub", "main", n, {"type": "UserMessage", "content": CONTENT})
        sent[rec.event_id] = time.monotonic()
        writer.append(rec)
        time.sleep(0.01)
    thread.join(timeout=60)
    sub.close()
    writer.close()
    reader.close()
    delays.sort()
    return statistics.median(delays) * 1000, delays[int(len(delays) * 0.99) - 1] * 1000


def _strace_counts(root: Path, url: str, seconds: float, log: Path,
                  session: str) -> tuple[float, dict[str, tuple[int, float]]]:
    """(appends, {syscall: (calls, seconds)}) of one traced writer process."""
    # -w: wall time per syscall, which is what a network filesystem's round trips cost.
    rate = writers([(root, session)], url, seconds,
                   prefix=["strace", "-c", "-w", "-f", "-o", str(log)])
    counts: dict[str, tuple[int, float]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = (int(parts[3]), float(parts[1]))
    return rate * seconds, counts


def strace_per_append(root: Path, url: str, seconds: float, out: Path) -> str:
    """Syscalls per append in steady state: a traced run minus a traced run that appends
    nothing (interpreter start, imports, connecting)."""
    appends, busy = _strace_counts(root, url, seconds, out / "strace-busy.txt", "traced")
    _, idle = _strace_counts(root, url, 0.0, out / "strace-idle.txt", "traced-idle")
    per = {name: ((calls - idle.get(name, (0, 0.0))[0]) / appends,
                  (secs - idle.get(name, (0, 0.0))[1]) / appends * 1e6)
           for name, (calls, secs) in busy.items()}
    total = sum(c for c, _ in per.values())
    by_count = sorted(per.items(), key=lambda kv: -kv[1][0])[:10]
    by_time = sorted(per.items(), key=lambda kv: -kv[1][1])[:5]
    return (f"{total:.1f} syscalls per append ({appends:.0f} appends); most called: "
            + ", ".join(f"{n} {c:.1f}" for n, (c, _) in by_count)
            + "; most wall time (us per append): "
            + ", ".join(f"{n} {t:.0f}" for n, (_, t) in by_time))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--volume-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a volume option over the coherent ones (repeatable)")
    ap.add_argument("--mount-options", default=None,
                    help="the FUSE mounts' options instead of the coherent ones")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path)
    ap.add_argument("--url")
    ap.add_argument("--session")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.raw_worker:
        print(raw_rate(args.root, args.seconds))
        return
    reason = gluster.skip_reason()
    if reason:
        raise SystemExit(f"the GlusterFS rig cannot run here: {reason}")
    base = Path(tempfile.mkdtemp(prefix="bench-multihost-"))
    s = args.seconds
    try:
        volume = dict(gluster.COHERENT_VOLUME_OPTIONS)
        volume.update(item.split("=", 1) for item in args.volume_set)
        mount = (gluster.COHERENT_MOUNT_OPTIONS if args.mount_options is None
                 else tuple(args.mount_options.split()))
        print(f"volume options {volume}\nmount options {mount}", flush=True)
        with gluster.GlusterRig(base / "rig", volume, mount) as rig, \
                RedisServer(dir=base / "redis") as srv:
            a, b = rig.hosts["a"] / "bench", rig.hosts["b"] / "bench"
            a.mkdir()
            rows: list[tuple[str, str]] = []

            def row(name: str, value: str) -> None:
                rows.append((name, value))
                print(f"{name:<58} {value}", flush=True)

            raw_dirs = [rig.hosts["a"] / "raw-a", rig.hosts["b"] / "raw-b"]  # a file per host
            for d in raw_dirs:
                d.mkdir()
            figures: dict[str, list[float]] = {"raw": [], "raw2": [], "one": [], "two": [],
                                               "four": []}
            for n in range(args.rounds):
                # Fresh sessions each round: the rate must not depend on the file's length.
                figures["raw"].append(raw_rate(a, s))
                figures["raw2"].append(raw_hosts(raw_dirs, s))
                figures["one"].append(writers([(a, f"one{n}")], srv.url, s))
                figures["two"].append(writers([(a, f"own-a{n}"), (b, f"own-b{n}")], srv.url, s))
                figures["four"].append(writers([(a, f"shared{n}"), (b, f"shared{n}"),
                                                (a, f"shared{n}"), (b, f"shared{n}")],
                                               srv.url, s))
                if args.rounds > 1:
                    r, r2, o, t, f = (figures[k][-1]
                                      for k in ("raw", "raw2", "one", "two", "four"))
                    print(f"round {n + 1}: raw {r:.0f}/s, raw 2 hosts {r2:.0f}/s, 1 writer "
                          f"{o:.0f}/s ({o / r:.2f} x raw), 2 hosts {t:.0f}/s ({t / o:.2f} x 1 "
                          f"writer), 4 on one {f:.0f}/s", flush=True)
            raw, raw2, one, two, four = (statistics.median(figures[k])
                                         for k in ("raw", "raw2", "one", "two", "four"))
            ratio = statistics.median(o / r for o, r in zip(figures["one"], figures["raw"],
                                                             strict=True))
            scale = statistics.median(t / o for t, o in zip(figures["two"], figures["one"],
                                                            strict=True))
            raw_scale = statistics.median(t / o for t, o in zip(figures["raw2"], figures["raw"],
                                                                strict=True))
            med = " (median)" if args.rounds > 1 else ""
            row(f"raw write+fdatasync on mount a{med}", f"{raw:8.0f}/s")
            row(f"raw write+fdatasync, one process on each mount (sum){med}",
                f"{raw2:8.0f}/s  ({raw_scale:.2f} x one)")
            row(f"journal, 1 writer on host a{med}", f"{one:8.0f}/s  ({ratio:.2f} x raw)")
            row(f"journal, 2 writers on 2 hosts, own sessions (sum){med}",
                f"{two:8.0f}/s  ({scale:.2f} x 1 writer)")
            row(f"journal, 4 writers on one session across both hosts (sum){med}",
                f"{four:8.0f}/s")
            p50, p99 = subscriber_delay(a, b, srv.url, 200)
            row("subscriber on host b, writer on host a: delay p50 / p99",
                f"{p50:6.1f} / {p99:.1f} ms")
            if args.strace:
                if shutil.which("strace") is None:
                    row("syscalls per append", "strace is not installed")
                else:
                    row("syscalls per append (strace -c -f, 1 writer)",
                        strace_per_append(a, srv.url, s, base))
            print("\n| figure | value |\n|---|---|")
            for name, value in rows:
                print(f"| {name} | {value.strip()} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
