#!/usr/bin/env python3
"""Benchmark the journal against the floors of its own machine, side by side in one run.

Every figure is reported as a ratio to a reference measured in the same run, on the same disk
and Redis: the machine has few cores and other work may run at the same time, so absolute
numbers say little, ratios a lot. The figures (see ``--only``):

 1. F_fs: one O_APPEND write of a ~250-byte line plus fdatasync per event (the disk's floor).
 2. F_proto: EVALSHA of a trivial script, the write + fdatasync, another EVALSHA (the floor of
    the append protocol: two Redis round trips and one fdatasync).
 3. Single-writer durable ``Journal.append``, against F_fs and F_proto.
 4. ``append_batch`` of 100 events, against F_proto.
 5. Four writer processes on four sessions, durability ``fsync`` and ``batch``, against F_fs
    run by four processes.
 6. Read latency of the last 100 events of an N-event session against the first 100, and
    against a naive full scan like the seed's.
 7. Cold head after Redis restarts empty (the rebuild), against one sequential read of the file.
 8. Subscription latency (returned append -> delivery in another process) against raw
    redis-py PUBLISH -> SUBSCRIBE between two processes; and against the raw PUBLISH timed
    from its send, as an append returns once its pipelined commit is sent.
 9. Fan-out to 16 subscriber processes: completeness and latency.
10. Peak RSS growth of a subscriber that starts 100k events behind.
11. Worker group throughput (4 workers, no-op handler, 64 sessions) against Redis Streams
    XREADGROUP + XACK with 4 consumers over the same events; rebalance on join and on kill.
12. HTTP append throughput through ``journal serve`` (one event per POST, and batches of 100
    per POST) against the in-process ``Journal.append`` / ``append_batch(100)``.
13. SSE delivery latency (returned append -> frame received) against the Python
    subscription, both following the same appends in the same run.
14. The cost of one durable append (1 writer, 250-byte UserMessage, median of 3): client CPU
    (getrusage), redis-server CPU (/proc/<pid>/stat), syscalls (``strace -c -f``, when strace
    is installed); beside them the floors: write + fdatasync + a PING on a raw socket, the
    same with an EVALSHA of an empty script (the server's side), and the leanest Python
    client (the record encoded, its announcement, the syscalls and the EVALSHA).
15. The fleet against a durable peer: Redis Lua CAS + XADD on a private redis-server with
    ``appendfsync always``, 4 writers x 4 sessions and 16 writers x 64 sessions; both make
    and encode the same record per event; the raw write + fdatasync of the same fleet.
16. The cost of the per-line CRC32C (issue 14), with against without, side by side in
    alternating rounds on the same code path (without: the checksum function replaced by one
    that returns a constant, the comparison kept): the storage read of 100 events, the index
    rows of one 250-byte line, and the client CPU of a durable append.

Figures 1-4 run interleaved in rounds (each round runs every meter once, briefly): values are
medians over the rounds, ratios the medians of the per-round ratios.

Run: ``.venv/bin/python scripts/bench.py [--quick] [--only 1,3,6] [--events N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import multiprocessing
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Protocol

import msgspec
import redis

from journal import AppendOutcomeUnknown, AsyncJournal, EventRecord, Journal
from journal._model.announcement import encode_announcement
from journal._model.records import decode_line, encode_line
from journal.testing import RedisServer

REPO = Path(__file__).resolve().parent.parent
LINE_250 = b'{"bench":"' + b"x" * 237 + b'"}\n'  # 250 bytes with the newline
KIND: dict[str, Any] = {"type": "PhaseEntered", "phase": "perceive"}
ALL_FIGURES = tuple(range(1, 17))
MIB = 1024 * 1024


# ----- small helpers ----------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = q * (len(data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.3g}"


def record(session_id: str, sequence: int) -> EventRecord:
    return EventRecord.new(session_id, "main", sequence, KIND)


def fs_type(path: Path) -> str:
    """Filesystem type of ``path``: the longest mount point in /proc/mounts that holds it."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


def pick_data_base() -> Path:
    """A directory on the repo's disk for the data: /tmp unless it is a RAM disk or another
    device, else ``bench-results/tmp`` in the repo."""
    tmp = Path(tempfile.gettempdir())
    in_ram = fs_type(tmp) in {"tmpfs", "ramfs"}
    try:
        same_disk = os.stat(tmp).st_dev == os.stat(REPO).st_dev
    except OSError:
        same_disk = False
    if not in_ram and same_disk:
        return tmp
    base = REPO / "bench-results" / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return base


def proc_status_kib(field_name: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _has_hiredis() -> bool:
    return importlib.util.find_spec("hiredis") is not None


def machine_info(data_dir: Path, server: RedisServer | None) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    redis_version = "unknown"
    binary = server.binary if server is not None else shutil.which("redis-server")
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            redis_version = out.strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    tree = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # Read-only: which code was measured (others may be editing journal/ right now).
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "journal"],
                               capture_output=True, text=True, timeout=10).stdout.splitlines()
        if head:
            tree = f"{head}" + (f" + {len(dirty)} uncommitted change(s) in journal/" if dirty
                                else " (journal/ clean)")
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("nproc", f"{os.cpu_count()} (usable: {affinity})"),
        ("cpu", cpu),
        ("kernel", platform.release()),
        ("data dir", f"{data_dir} ({fs_type(data_dir)})"),
        ("python", sys.version.split()[0]),
        ("journal tree", tree),
        ("redis-server", f"{redis_version} ({binary})"),
        ("redis-py reply parser", "hiredis (the `fast` extra)" if _has_hiredis()
         else "pure Python (install the `fast` extra for hiredis)"),
        ("load average at start", " ".join(f"{x:.2f}" for x in load)),
    ]


# ----- result rows --------------------------------------------------------------------------


@dataclass
class Row:
    fig: int
    name: str
    value: float | None = None
    unit: str = ""
    ref_name: str = ""
    ref_value: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    text: str | None = None  # shown instead of ``value``
    error: str | None = None

    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.met is None:
            return "info" if not self.target else "n/a"
        return "met" if self.met else "MISSED"


def error_row(fig: int, name: str, exc: BaseException | str) -> Row:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return Row(fig, name, error=text.replace("\n", " ").replace("|", "/")[:300])


def ratio_row(
    fig: int, name: str, value: float | None, unit: str, ref_name: str, ref: float | None,
    *, target: str = "", at_least: float | None = None, at_most: float | None = None,
    note: str = "",
) -> Row:
    ratio = value / ref if value is not None and ref not in (None, 0) else None
    met: bool | None = None
    if ratio is not None and at_least is not None:
        met = ratio >= at_least
    if ratio is not None and at_most is not None:
        met = ratio <= at_most
    if not ref_name:
        ratio = None
    return Row(fig, name, value, unit, ref_name, ref, ratio, target, met, note)


def render(rows: list[Row]) -> str:
    head = ["#", "figure", "value", "unit", "reference", "ratio", "target", "status", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error is not None:
            cells = [str(r.fig), r.name, "-", r.unit, r.ref_name or "-", "-", r.target or "-",
                     "error", f"error: {r.error}"]
        else:
            value = r.text if r.text is not None else fmt(r.value)
            ref = f"{r.ref_name} = {fmt(r.ref_value)}" if r.ref_name else "-"
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
            cells = [str(r.fig), r.name, value, r.unit, ref, ratio, r.target or "-", r.status(),
                     r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# ----- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    rounds: int  # figures 1-4: interleaved rounds
    slice_s: float  # figures 1-4: seconds per meter per round
    multi_rounds: int  # figure 5: rounds of (fs, fsync, batch)
    multi_s: float  # figure 5: seconds per phase
    batch_window: int  # figure 5: appends in flight per process with durability "batch"
    read_sizes: tuple[int, ...]  # figure 6/7 session sizes; the first one carries the target
    read_reps: int
    naive_reps: int
    rebuild_reps: int
    sub_events: int  # figure 8: events per phase
    sub_interval_s: float
    fan_events: int  # figure 9
    fan_interval_s: float
    fan_subscribers: int
    rss_events: int  # figure 10

    @staticmethod
    def make(quick: bool, events: int | None) -> Config:
        n = events if events is not None else (20_000 if quick else 1_000_000)
        sizes = (n,) if quick or n == 100_000 else (n, 100_000)
        return Config(
            quick=quick,
            rounds=4 if quick else 8,
            slice_s=0.3 if quick else 0.6,
            multi_rounds=1 if quick else 2,
            multi_s=1.5 if quick else 3.0,
            batch_window=16,
            read_sizes=sizes,
            read_reps=40 if quick else 200,
            naive_reps=1,
            rebuild_reps=1 if quick else 2,
            sub_events=150 if quick else 500,
            sub_interval_s=0.004,
            fan_events=100 if quick else 300,
            fan_interval_s=0.006,
            fan_subscribers=16,
            rss_events=n if quick else 100_000,
        )


@dataclass
class Bench:
    cfg: Config
    root: Path  # journal root (events/, index/)
    scratch: Path  # floor files
    server: RedisServer
    mp: SpawnContext
    rows: list[Row] = field(default_factory=list)
    sessions: dict[int, str] = field(default_factory=dict)  # size -> session id
    procs: list[SpawnProcess] = field(default_factory=list)

    def journal(self, **options: Any) -> Journal:
        return Journal(self.root, self.server.url, **options).open()

    def start(self, target: Callable[..., None], *args: Any) -> SpawnProcess:
        proc = self.mp.Process(target=target, args=args, daemon=True)
        self.procs.append(proc)
        proc.start()
        return proc

    def reap(self, procs: Sequence[SpawnProcess] | None = None) -> None:
        """Terminate (then kill) and join every given process (default: all we started)."""
        targets = list(self.procs if procs is None else procs)
        for proc in targets:
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
        for proc in targets:
            if proc.pid is None:
                continue
            proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join(3)
            with contextlib.suppress(ValueError):
                proc.close()
            with contextlib.suppress(ValueError):
                self.procs.remove(proc)


# ----- figures 1-4: interleaved single-process meters ------------------------------------------


class Meter(Protocol):
    def run(self, seconds: float) -> tuple[int, float]:
        """Run for about ``seconds``; return (events, seconds spent in the measured calls)."""

    def close(self) -> None: ...


def _open_append_fd(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def fs_loop(fd: int, seconds: float) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        os.write(fd, LINE_250)
        os.fdatasync(fd)
        count += 1
        if count & 7 == 0 and time.perf_counter() >= deadline:
            break
    return count, time.perf_counter() - start


class FsFloor:
    def __init__(self, path: Path) -> None:
        self.fd = _open_append_fd(path)
        fs_loop(self.fd, 0.05)

    def run(self, seconds: float) -> tuple[int, float]:
        return fs_loop(self.fd, seconds)

    def close(self) -> None:
        os.close(self.fd)


class ProtoFloor:
    """Per event: EVALSHA, write + fdatasync, EVALSHA (what the protocol cannot avoid)."""

    def __init__(self, path: Path, url: str) -> None:
        self.fd = _open_append_fd(path)
        self.client = redis.Redis.from_url(url)
        # Shaped like begin/commit: two keys, a token and a few arguments.
        self.script = self.client.register_script("return {'ok', ARGV[2], ARGV[3]}")
        self.keys = ["bench:{floor}:state", "bench:{floor}:lease"]
        self.token = uuid.uuid4().hex
        self.run(0.05)

    def run(self, seconds: float) -> tuple[int, float]:
        fd, script, keys, token = self.fd, self.script, self.keys, self.token
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            script(keys=keys, args=[token, 5000, "main", count])
            os.write(fd, LINE_250)
            os.fdatasync(fd)
            script(keys=keys, args=[token, 0, count, "main", count])
            count += 1
            if count & 7 == 0 and time.perf_counter() >= deadline:
                break
        return count, time.perf_counter() - start

    def close(self) -> None:
        os.close(self.fd)
        self.client.close()


class AppendMeter:
    """``Journal.append`` (or ``append_batch`` of ``batch`` events); only the calls are timed,
    making the records is not."""

    def __init__(self, bench: Bench, session_id: str, batch: int) -> None:
        self.journal = bench.journal(durability="fsync")
        self.session_id = session_id
        self.batch = batch
        self.sequence = self.journal.head(session_id)
        self.run(0.05)

    def run(self, seconds: float) -> tuple[int, float]:
        j, sid, size = self.journal, self.session_id, self.batch
        count = 0
        busy = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            first = self.sequence + 1
            if size == 1:
                one = record(sid, first)
                t0 = time.perf_counter()
                j.append(one)
                busy += time.perf_counter() - t0
            else:
                many = [record(sid, first + i) for i in range(size)]
                t0 = time.perf_counter()
                j.append_batch(many)
                busy += time.perf_counter() - t0
            self.sequence += size
            count += size
        return count, busy

    def close(self) -> None:
        self.journal.close()


def figures_1_to_4(bench: Bench, selected: set[int]) -> None:
    cfg = bench.cfg
    wanted: list[int] = [f for f in (1, 2, 3, 4) if f in selected]
    # The ratios of 3 and 4 need the floors: measure those too, just not reported.
    needed = set(wanted)
    if 3 in needed:
        needed |= {1, 2}
    if 4 in needed:
        needed |= {2}
    factories: dict[int, Callable[[], Meter]] = {
        1: lambda: FsFloor(bench.scratch / "fs-floor.dat"),
        2: lambda: ProtoFloor(bench.scratch / "proto-floor.dat", bench.server.url),
        3: lambda: AppendMeter(bench, "bench-append-1", 1),
        4: lambda: AppendMeter(bench, "bench-append-100", 100),
    }
    names = {1: "F_fs (write+fdatasync)", 2: "F_proto (EVALSHA+write+fdatasync+EVALSHA)",
             3: "Journal.append, 1 writer, fsync", 4: "append_batch(100), fsync"}
    meters: dict[int, Meter] = {}
    errors: dict[int, str] = {}
    rates: dict[int, list[float]] = {}
    try:
        for fig in sorted(needed):
            try:
                meters[fig] = factories[fig]()
                rates[fig] = []
            except Exception as exc:
                errors[fig] = f"{type(exc).__name__}: {exc}"
        for rnd in range(cfg.rounds):
            if not meters:
                break
            log(f"figures {','.join(map(str, sorted(meters)))}: round {rnd + 1}/{cfg.rounds}")
            order: list[int] = sorted(meters)
            order = order[rnd % len(order):] + order[: rnd % len(order)]  # rotate: no bias
            for fig in order:
                meter = meters[fig]
                try:
                    count, busy = meter.run(cfg.slice_s)
                    rates[fig].append(count / busy)
                except Exception as exc:
                    errors[fig] = f"{type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):
                        meter.close()
                    del meters[fig]
    finally:
        for meter in meters.values():
            with contextlib.suppress(Exception):
                meter.close()

    def median(fig: int) -> float | None:
        values = rates.get(fig)
        return statistics.median(values) if values and fig not in errors else None

    def paired(fig: int, ref: int) -> float | None:
        """Median of the per-round ratios: each ratio is measured side by side."""
        a, b = rates.get(fig) or [], rates.get(ref) or []
        pairs = [x / y for x, y in zip(a, b, strict=False) if y > 0]
        return statistics.median(pairs) if pairs and not {fig, ref} & set(errors) else None

    def spread(fig: int) -> str:
        values = rates.get(fig) or []
        if not values:
            return ""
        return f"per round: {', '.join(fmt(v) for v in values)}"

    def row(fig: int, name: str, ref_name: str, ref: int, target: str = "",
            at_least: float | None = None, note: str = "") -> Row:
        made = ratio_row(fig, name, median(fig), "events/s", ref_name, median(ref),
                         target=target, at_least=at_least, note=note)
        made.ratio = paired(fig, ref)
        if made.ratio is not None and at_least is not None:
            made.met = made.ratio >= at_least
        return made

    for fig in wanted:
        if fig in errors:
            bench.rows.append(error_row(fig, names[fig], errors[fig]))
        elif fig == 1:
            size = len(encode_line(record("bench-append-1", 1)))
            bench.rows.append(Row(1, names[1], median(1), "events/s",
                                  note=f"{spread(1)}; {len(LINE_250)}-byte lines (the journal "
                                       f"records of this bench encode to {size} bytes)"))
        elif fig == 2:
            bench.rows.append(row(2, names[2], "F_fs", 1, note=spread(2)))
        elif fig == 3:
            bench.rows.append(row(3, names[3], "F_fs", 1, ">= 0.7x F_fs", 0.7, spread(3)))
            bench.rows.append(row(3, names[3] + " vs F_proto", "F_proto", 2))
        elif fig == 4:
            bench.rows.append(row(4, names[4], "F_proto", 2, ">= 40x F_proto", 40, spread(4)))


# ----- figure 5: four writer processes ---------------------------------------------------------


class _Gate:
    """Wait on the barrier exactly once per phase, even when setup failed."""

    def __init__(self, barrier: Any) -> None:
        self.barrier = barrier
        self.passed = False

    def __call__(self) -> None:
        if not self.passed:
            self.passed = True
            self.barrier.wait(timeout=120)


def _writer_fs(path: Path, seconds: float, gate: _Gate) -> tuple[int, float]:
    fd = _open_append_fd(path)
    try:
        fs_loop(fd, 0.05)
        gate()
        return fs_loop(fd, seconds)
    finally:
        os.close(fd)


def _writer_fsync(root: str, url: str, sid: str, seconds: float, gate: _Gate) -> tuple[int, float]:
    with Journal(root, url, durability="fsync") as j:
        for seq in range(1, 11):
            j.append(record(sid, seq))
        seq = 10
        gate()
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            seq += 1
            j.append(record(sid, seq))
        return seq - 10, time.perf_counter() - start


async def _writer_batch(
    root: str, url: str, sid: str, seconds: float, gate: _Gate, window: int
) -> tuple[int, float]:
    """``window`` concurrent single-event appends in flight (a sliding window), so that the
    group commit of durability "batch" has something to group."""
    async with AsyncJournal(root, url, durability="batch") as j:
        for seq in range(1, 11):
            await j.append(record(sid, seq))
        seq = 10
        gate()
        done = 0
        inflight: set[asyncio.Task[EventRecord]] = set()
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            while len(inflight) < window:
                seq += 1
                inflight.add(asyncio.create_task(j.append(record(sid, seq))))
            finished, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                task.result()
                done += 1
        if inflight:
            finished, _ = await asyncio.wait(inflight)
            for task in finished:
                task.result()
                done += 1
        return done, time.perf_counter() - start


def writer_child(
    idx: int, root: str, url: str, scratch: str, modes: list[str], seconds: float,
    window: int, barrier: Any, out_q: Any,
) -> None:
    """Runs in a spawned process: one phase per mode, each started by the shared barrier."""
    for phase, mode in enumerate(modes):
        gate = _Gate(barrier)
        result: tuple[int, float] = (0, 0.0)
        error: str | None = None
        sid = f"bench-w{idx}-{mode}-{phase}"
        try:
            if mode == "fs":
                result = _writer_fs(Path(scratch) / f"multi-fs-{idx}.dat", seconds, gate)
            elif mode == "fsync":
                result = _writer_fsync(root, url, sid, seconds, gate)
            else:
                result = asyncio.run(_writer_batch(root, url, sid, seconds, gate, window))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        try:
            gate()
        except Exception as exc:  # a broken barrier: the parent gave up on this phase
            error = error or f"{type(exc).__name__}: {exc}"
        out_q.put((idx, phase, mode, result[0], result[1], error))


def phase_rate(out_q: Any, writers: int, phase: int, timeout: float,
               errors: list[str]) -> float:
    """The aggregate rate of one phase: each writer's (idx, phase, mode, count, elapsed,
    error) summed as count / elapsed; errors are collected, a writer of another phase is a
    bug of the bench."""
    total = 0.0
    for _ in range(writers):
        idx, got, got_mode, count, elapsed, error = out_q.get(timeout=timeout)
        if got != phase:
            raise RuntimeError(f"writer {idx} answered phase {got} in {phase}")
        if error:
            errors.append(f"{got_mode}[{idx}]: {error}")
        elif elapsed > 0:
            total += count / elapsed
    return float(total)


def figure_5(bench: Bench) -> None:
    cfg = bench.cfg
    nproc = 4
    modes = ["fs", "fsync", "batch"] * cfg.multi_rounds
    barrier = bench.mp.Barrier(nproc + 1)
    out_q = bench.mp.Queue()
    procs = [bench.start(writer_child, i, str(bench.root), bench.server.url, str(bench.scratch),
                         modes, cfg.multi_s, cfg.batch_window, barrier, out_q)
             for i in range(nproc)]
    rates: dict[str, list[float]] = {"fs": [], "fsync": [], "batch": []}
    errors: list[str] = []
    try:
        for phase, mode in enumerate(modes):
            log(f"figure 5: phase {phase + 1}/{len(modes)}: 4 processes, {mode}")
            barrier.wait(timeout=120)
            rates[mode].append(
                phase_rate(out_q, nproc, phase, cfg.multi_s + 120, errors))
    finally:
        with contextlib.suppress(Exception):
            barrier.abort()
        bench.reap(procs)
    if errors:
        raise RuntimeError("; ".join(errors[:3]))

    def med(mode: str) -> float | None:
        return statistics.median(rates[mode]) if rates[mode] else None

    def spread(mode: str) -> str:
        return "rounds: " + ", ".join(fmt(v) for v in rates[mode])

    f4 = med("fs")
    bench.rows.append(Row(5, "F_fs, 4 processes (aggregate)", f4, "events/s", note=spread("fs")))
    bench.rows.append(ratio_row(5, "4 writers x 4 sessions, fsync", med("fsync"), "events/s",
                                "F_fs x4", f4, note=spread("fsync")))
    bench.rows.append(ratio_row(
        5, "4 writers x 4 sessions, batch", med("batch"), "events/s", "F_fs x4", f4,
        target=">= 1.0x F_fs x4", at_least=1.0,
        note=f"{spread('batch')}; {cfg.batch_window} single-event appends in flight per process "
             "(AsyncJournal)"))


# ----- figure 6/7: big sessions, reads and rebuilds ------------------------------------------


def build_session(root: Path, session_id: str, n: int) -> None:
    """Write ``n`` events of one branch straight into the session file, in bulk (no append
    protocol); the journal rebuilds its Redis state and index on the first head()."""
    path = root / "events" / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    agent = str(uuid.uuid4())
    prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": the event id ends in hex
    chunk = 50_000
    with open(path, "wb") as out:
        for start in range(1, n + 1, chunk):
            stop = min(n, start + chunk - 1)
            batch = [
                EventRecord(event_id=f"{prefix}{i:012x}", session_id=session_id,
                            agent_id=agent, branch_id="main", sequence=i,
                            timestamp="2026-02-21T10:15:30.123456789Z", kind=KIND)
                for i in range(start, stop + 1)
            ]
            out.write(encoder.encode_lines(batch))
        out.flush()
        os.fsync(out.fileno())


def ensure_session(bench: Bench, n: int) -> str:
    """The id of a session with ``n`` events whose Redis state exists."""
    sid = bench.sessions.get(n)
    if sid is None:
        sid = f"bench-read-{n}"
        log(f"building a {n:,}-event session file")
        t0 = time.perf_counter()
        build_session(bench.root, sid, n)
        t1 = time.perf_counter()
        with bench.journal() as j:
            head = j.head(sid)  # the first head() rebuilds state and index
        t2 = time.perf_counter()
        if head != n:
            raise RuntimeError(f"head of the built session is {head}, expected {n}")
        log(f"built in {t1 - t0:.1f}s, first head (rebuild) {t2 - t1:.2f}s")
        bench.sessions[n] = sid
    else:
        with bench.journal() as j:
            j.head(sid)  # make sure Redis has the state (it may have restarted)
    return sid


def naive_read(path: Path, branch: str, first: int, last: int) -> list[EventRecord]:
    """The seed's way: read every line, decode it, keep the wanted ones."""
    out: list[EventRecord] = []
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            rec = decode_line(line)
            if rec.branch_id == branch and first <= rec.sequence <= last:
                out.append(rec)
    return out


def figure_6(bench: Bench) -> None:
    cfg = bench.cfg
    for k, n in enumerate(bench.cfg.read_sizes):
        label = f"N={n:,}"
        try:
            sid = ensure_session(bench, n)
            log(f"figure 6: read latency at {label}")
            first_t: list[float] = []
            last_t: list[float] = []
            with bench.journal() as j:
                lo = max(1, n - 99)
                for _ in range(3):  # warm-up
                    j.read(sid, "main", 1, 100)
                    j.read(sid, "main", lo, 100)
                for _ in range(cfg.read_reps):
                    t0 = time.perf_counter()
                    a = j.read(sid, "main", 1, 100)
                    t1 = time.perf_counter()
                    b = j.read(sid, "main", lo, 100)
                    t2 = time.perf_counter()
                    first_t.append((t1 - t0) * 1000)
                    last_t.append((t2 - t1) * 1000)
                if len(a) != min(n, 100) or len(b) != min(n, 100) or b[-1].sequence != n:
                    raise RuntimeError(f"read returned {len(a)}/{len(b)} events")
            path = bench.root / "events" / f"{sid}.jsonl"
            naive: list[float] = []
            for _ in range(cfg.naive_reps):
                t0 = time.perf_counter()
                got = naive_read(path, "main", lo, n)
                naive.append((time.perf_counter() - t0) * 1000)
                if len(got) != min(n, 100):
                    raise RuntimeError(f"naive scan found {len(got)} events")
            first_ms, last_ms = statistics.median(first_t), statistics.median(last_t)
            primary = k == 0
            bench.rows.append(ratio_row(
                6, f"read last 100 @ {label} (median)", last_ms, "ms", "first 100", first_ms,
                target="<= 1.5x first 100" if primary else "",
                at_most=1.5 if primary else None,
                note=f"p99 last {fmt(quantile(last_t, 0.99))} ms, first "
                     f"{fmt(quantile(first_t, 0.99))} ms; {cfg.read_reps} reps"))
            naive_ms = statistics.median(naive)
            bench.rows.append(Row(
                6, f"naive full scan, last 100 @ {label}", naive_ms, "ms", "indexed last 100",
                last_ms, naive_ms / last_ms if last_ms else None,
                note="seed-style: every line decoded (msgspec EventRecord), then filtered"))
        except Exception as exc:
            bench.rows.append(error_row(6, f"read latency @ {label}", exc))


def sequential_read(path: Path) -> float:
    """Seconds to read the whole file in 1 MiB chunks."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        t0 = time.perf_counter()
        while os.read(fd, MIB):
            pass
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def evict(path: Path) -> bool:
    """Drop this one file's clean pages from the page cache (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def cold_head(bench: Bench, sid: str, n: int) -> float:
    """Restart Redis empty, then time the first head() (it rebuilds from the file)."""
    bench.server.restart()
    with bench.journal() as j:
        t0 = time.perf_counter()
        head = j.head(sid)
        elapsed = time.perf_counter() - t0
    if head != n:
        raise RuntimeError(f"cold head {head}, expected {n}")
    return elapsed


def figure_7(bench: Bench) -> None:
    cfg = bench.cfg
    for k, n in enumerate(cfg.read_sizes):
        label = f"N={n:,}"
        primary = k == 0
        try:
            sid = ensure_session(bench, n)
            path = bench.root / "events" / f"{sid}.jsonl"
            size = path.stat().st_size
            sequential_read(path)  # warm the cache
            reads: dict[str, list[float]] = {"warm": [], "cold": []}
            rebuilds: dict[str, list[float]] = {"warm": [], "cold": []}
            reps = cfg.rebuild_reps if primary else 1
            evicted = True
            for rep in range(reps):
                log(f"figure 7: cold head after a Redis restart at {label} ({rep + 1}/{reps})")
                reads["warm"].append(sequential_read(path))
                rebuilds["warm"].append(cold_head(bench, sid, n))
                evicted = evict(path) and evicted
                reads["cold"].append(sequential_read(path))
                evicted = evict(path) and evicted
                rebuilds["cold"].append(cold_head(bench, sid, n))
            for cache in ("warm", "cold"):
                read_s = statistics.median(reads[cache])
                rebuild_s = statistics.median(rebuilds[cache])
                what = ("page cache warm" if cache == "warm" else
                        "file evicted by fadvise(DONTNEED)" if evicted else
                        "eviction FAILED: cache warm")
                bench.rows.append(ratio_row(
                    7, f"cold head after empty Redis (rebuild) @ {label}, {cache} cache",
                    rebuild_s * 1000, "ms", f"sequential read ({cache})", read_s * 1000,
                    target="<= 2x sequential read" if primary else "",
                    at_most=2.0 if primary else None,
                    note=f"file {size / MIB:.0f} MiB, {what}; read {size / MIB / read_s:,.0f} "
                         f"MiB/s, rebuild {size / MIB / rebuild_s:,.0f} MiB/s = "
                         f"{n / rebuild_s:,.0f} lines/s"))
        except Exception as exc:
            bench.rows.append(error_row(7, f"cold head @ {label}", exc))


# ----- figures 8/9: subscription latency and fan-out ------------------------------------------


def subscription_missing() -> str | None:
    """None when ``journal._io.subscriptions`` imports; else why not."""
    try:
        module = importlib.import_module("journal._io.subscriptions")
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not hasattr(module, "subscribe_sync"):
        return "journal._io.subscriptions has no subscribe_sync"
    return None


MISSING = "n/a (subscription module missing)"


def _consume_raw(url: str, channel: str, count: int, recv: list[tuple[int, int]],
                 ready: Callable[[], None], errors: list[str]) -> None:
    try:
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(channel)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                break
        ready()
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            now = time.monotonic_ns()
            seq = int(message["data"][:12])
            recv.append((seq, now))
            if seq >= count:
                break
        pubsub.close()
        client.close()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def _consume_journal(url: str, root: str, sid: str, last: int, recv: list[tuple[int, int]],
                     ready: Callable[[], None], errors: list[str]) -> None:
    """Subscribe from 0; event 1 is the warm-up the parent appended before (it proves we
    listen), events 2..last are measured."""
    try:
        with Journal(root, url) as j:
            sub = j.subscribe(sid, "main", after_sequence=0)
            try:
                for ev in sub:
                    now = time.monotonic_ns()
                    if ev.sequence == 1:
                        ready()
                        continue
                    recv.append((ev.sequence, now))
                    if ev.sequence >= last:
                        break
            finally:
                close = getattr(sub, "close", None)
                if close is not None:
                    close()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def subscriber_child(
    idx: int, url: str, root: str, phases: list[tuple[str, str, int]], timeout_s: float,
    ready_q: Any, out_q: Any,
) -> None:
    """Runs in a spawned process. Per phase: subscribe in a thread, say ready, collect the
    receive times (CLOCK_MONOTONIC, system-wide) until the last event or the timeout."""
    for phase, (kind, name, last) in enumerate(phases):
        recv: list[tuple[int, int]] = []
        errors: list[str] = []

        def ready(phase: int = phase) -> None:
            ready_q.put((idx, phase))

        if kind in ("raw", "raw-sent"):
            args: tuple[Any, ...] = (url, name, last, recv, ready, errors)
            thread = threading.Thread(target=_consume_raw, args=args, daemon=True)
        else:
            # Journal phases: event 1 is the warm-up, events 2..count+1 are measured.
            args = (url, root, name, last + 1, recv, ready, errors)
            thread = threading.Thread(target=_consume_journal, args=args, daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            errors.append(f"timed out after {timeout_s:.0f}s")
        out_q.put((idx, phase, list(recv), errors))
    out_q.close()
    out_q.join_thread()
    os._exit(0)  # a timed-out consumer thread may still block in a socket read


@dataclass
class PhaseResult:
    kind: str
    latencies_us: list[float]  # from the returned publish/append (raw-sent: from its send)
    from_call_us: list[float]  # from the start of the call (raw-sent: the previous reply's
    # read included)
    complete: int  # subscribers that got every event once, in order
    subscribers: int
    problems: list[str]


def run_subscription_phases(
    bench: Bench, subscribers: int, phases: list[tuple[str, str, int]], interval_s: float,
    label: str,
) -> list[PhaseResult]:
    """Start ``subscribers`` processes and run the phases: each a raw pub/sub channel
    (``raw``: PUBLISH timed until its reply; ``raw-sent``: timed until it is sent, its reply
    read before the next one) or a journal session, with ``count`` events published at a
    fixed pace once all are ready."""
    root, url = str(bench.root), bench.server.url
    expected_s = max(c for _, _, c in phases) * interval_s
    timeout_s = expected_s + 60
    ready_q = bench.mp.Queue()
    out_q = bench.mp.Queue()
    log(f"{label}: starting {subscribers} subscriber process(es)")
    procs = [bench.start(subscriber_child, i, url, root, phases, timeout_s, ready_q, out_q)
             for i in range(subscribers)]
    results: list[PhaseResult] = []
    client = redis.Redis.from_url(url)
    sender: Any = None  # raw-sent phases: a connection of their own
    journal = bench.journal()
    try:
        if any(kind == "raw-sent" for kind, _, _ in phases):
            sender = client.connection_pool.get_connection()
        for phase, (kind, name, count) in enumerate(phases):
            log(f"{label}: phase {phase + 1}/{len(phases)} ({kind}, {count} events)")
            if kind == "journal":
                journal.append(record(name, 1))  # the warm-up event, seen by every subscriber
            waiting = set(range(subscribers))
            deadline = time.monotonic() + 120
            while waiting and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    idx, got_phase = ready_q.get(timeout=1.0)
                    if got_phase == phase:
                        waiting.discard(idx)
                if not any(p.is_alive() for p in procs):
                    break
            problems = [f"{len(waiting)} subscriber(s) never became ready"] if waiting else []
            time.sleep(0.2)  # let every subscriber settle into its blocking read
            sent_call: dict[int, int] = {}
            sent_ret: dict[int, int] = {}
            pad = b"x" * 340
            seqs = range(2, count + 2) if kind == "journal" else range(1, count + 1)
            unread = 0  # raw-sent: PUBLISH replies not read yet

            def read_replies() -> None:
                nonlocal unread
                while unread:
                    sender.read_response()
                    unread -= 1

            t_next = time.monotonic() + 0.05
            for seq in seqs:
                delay = t_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                t_next += interval_s
                if kind == "raw":
                    t0 = time.monotonic_ns()
                    client.publish(name, b"%012d" % seq + pad)
                    t1 = time.monotonic_ns()
                elif kind == "raw-sent":
                    # Sent, its reply read before the next one: when a pipelined commit
                    # returns, as the journal's append does.
                    t0 = time.monotonic_ns()
                    read_replies()
                    sender.send_command("PUBLISH", name, b"%012d" % seq + pad)
                    t1 = time.monotonic_ns()
                    unread += 1
                else:
                    rec = record(name, seq)
                    t0 = time.monotonic_ns()
                    journal.append(rec)
                    t1 = time.monotonic_ns()
                sent_call[seq], sent_ret[seq] = t0, t1
            read_replies()
            lat: list[float] = []
            lat_call: list[float] = []
            complete = 0
            got = 0
            end = time.monotonic() + timeout_s + 30
            while got < subscribers and time.monotonic() < end:
                try:
                    idx, got_phase, recv, errors = out_q.get(timeout=1.0)
                except queue.Empty:
                    if not any(p.is_alive() for p in procs):
                        break
                    continue
                if got_phase != phase:
                    problems.append(f"subscriber {idx}: result of phase {got_phase} in {phase}")
                    continue
                got += 1
                seen = [s for s, _ in recv]
                if seen == list(seqs):
                    complete += 1
                else:
                    problems.append(f"subscriber {idx}: {len(seen)}/{len(seqs)} events"
                                    + (" (out of order or duplicated)" if len(set(seen)) != len(
                                        seen) or seen != sorted(seen) else ""))
                problems.extend(f"subscriber {idx}: {e}" for e in errors)
                for seq, at in recv:
                    if seq in sent_ret:
                        lat.append((at - sent_ret[seq]) / 1000)
                        lat_call.append((at - sent_call[seq]) / 1000)
            if got < subscribers:
                problems.append(f"{subscribers - got} subscriber(s) sent no result")
            results.append(PhaseResult(kind, lat, lat_call, complete, subscribers, problems))
    finally:
        journal.close()
        if sender is not None:
            client.connection_pool.release(sender)
        client.close()
        bench.reap(procs)
    return results


def _pooled(results: list[PhaseResult], kind: str) -> tuple[list[float], list[float]]:
    lat: list[float] = []
    call: list[float] = []
    for r in results:
        if r.kind == kind:
            lat += r.latencies_us
            call += r.from_call_us
    return lat, call


def figure_8(bench: Bench) -> None:
    missing = subscription_missing()
    if missing:
        bench.rows.append(Row(8, "subscription latency", text=MISSING,
                              target="p50 <= 1.5x raw, p99 <= 3x raw", note=missing))
        return
    cfg = bench.cfg
    tag = uuid.uuid4().hex[:8]
    half = cfg.sub_events // 2
    # Three rounds of phases side by side within seconds: raw, the journal, and raw with
    # PUBLISH sent as the journal sends its pipelined commit (its reply read before the next
    # one). A ratio is the median of the three rounds' ratios (this machine's pub/sub
    # latency moves by half between minutes, so a ratio of pooled phases is mostly noise).
    kinds = ("raw", "journal", "raw-sent")
    phases = [(kind, f"bench-{kind}-{tag}-{pair}", half) for pair in "abc" for kind in kinds]
    results = run_subscription_phases(bench, 1, phases, cfg.sub_interval_s, "figure 8")
    problems = [p for r in results for p in r.problems]
    rounds = [results[i:i + len(kinds)] for i in range(0, len(results), len(kinds))]
    if any(not phase.latencies_us for phase in results if phase.kind != "raw-sent"):
        raise RuntimeError("no latencies measured: " + "; ".join(problems[:3]))
    pairs = [(raw, jour) for raw, jour, _ in rounds]
    _, jour_call = _pooled(results, "journal")
    for q, name, ref_name, target, limit in (
            (0.5, "subscription latency p50 (append returned -> delivered)",
             "raw PUBLISH->SUBSCRIBE p50", "<= 1.5x raw", 1.5),
            (0.99, "subscription latency p99", "raw p99", "<= 3x raw", 3.0)):
        values = [(quantile(j.latencies_us, q), quantile(r.latencies_us, q)) for r, j in pairs]
        by_ratio = sorted((value / ref, value, ref) for value, ref in values)
        _, value, ref = by_ratio[len(by_ratio) // 2]
        note = "median of 3 side-by-side pairs (ratios " + ", ".join(
            f"{ratio:.2f}x" for ratio, _, _ in by_ratio) + ")"
        if q == 0.5:
            note += (f"; {half} events per phase at {1 / cfg.sub_interval_s:.0f}/s, 1 subscriber "
                     f"process; from append *call* p50 {fmt(quantile(jour_call, 0.5))} us")
            if problems:
                note += "; problems: " + "; ".join(problems[:3])
        bench.rows.append(ratio_row(8, name, value, "us", ref_name, ref, target=target,
                                    at_most=limit, note=note))
    name = "subscription latency p50 vs raw PUBLISH timed as the journal's commit"
    if any(not sent.latencies_us for _, _, sent in rounds):
        bench.rows.append(Row(8, name, error="a raw-sent phase measured nothing: "
                                             + "; ".join(problems[:3])))
        return
    medians = [(quantile(jour.latencies_us, 0.5), quantile(sent.latencies_us, 0.5))
               for _, jour, sent in rounds]
    by_ratio = sorted((value / ref, value, ref) for value, ref in medians if ref > 0)
    if not by_ratio:
        bench.rows.append(Row(8, name, error="raw-sent p50 of 0 us"))
        return
    ratio, value, ref = by_ratio[len(by_ratio) // 2]
    bench.rows.append(Row(
        8, name, value, "us", ref_name="raw sent p50", ref_value=ref, ratio=ratio,
        note="the raw PUBLISH timed from its send (reply read before the next one), as an "
             "append returns once its pipelined commit is sent: what the journal adds on "
             "both sides; ratios " + ", ".join(f"{r:.2f}x" for r, _, _ in by_ratio)))


def figure_9(bench: Bench) -> None:
    missing = subscription_missing()
    if missing:
        bench.rows.append(Row(9, "fan-out to 16 subscribers", text=MISSING,
                              target="every subscriber receives everything", note=missing))
        return
    cfg = bench.cfg
    n = cfg.fan_subscribers
    tag = uuid.uuid4().hex[:8]
    half = cfg.fan_events // 2
    phases = [("raw", f"bench-fanraw-{tag}-a", half), ("journal", f"bench-fan-{tag}-a", half),
              ("raw", f"bench-fanraw-{tag}-b", half), ("journal", f"bench-fan-{tag}-b", half)]
    results = run_subscription_phases(bench, n, phases, cfg.fan_interval_s, "figure 9")
    journal_phases = [r for r in results if r.kind == "journal"]
    raw_complete = sum(r.complete for r in results if r.kind == "raw")
    complete = sum(r.complete for r in journal_phases)
    expected = n * len(journal_phases)
    problems = [p for r in journal_phases for p in r.problems]
    note = (f"{len(journal_phases)} sessions x {half} events at "
            f"{1 / cfg.fan_interval_s:.0f}/s; raw pub/sub complete {raw_complete}/{expected}")
    if problems:
        note += "; problems: " + "; ".join(problems[:4])
    bench.rows.append(Row(9, f"fan-out to {n} subscriber processes: complete",
                          text=f"{complete}/{expected} got all {half} in order, once",
                          target="every subscriber receives everything",
                          met=complete == expected, note=note))
    raw, _ = _pooled(results, "raw")
    jour, jour_call = _pooled(results, "journal")
    if jour and raw:
        bench.rows.append(ratio_row(
            9, f"fan-out {n}: delivery latency p50", quantile(jour, 0.5), "us",
            f"raw fan-out {n} p50", quantile(raw, 0.5),
            note=f"from append *call* p50 {fmt(quantile(jour_call, 0.5))} us"))
        bench.rows.append(ratio_row(
            9, f"fan-out {n}: delivery latency p99", quantile(jour, 0.99), "us",
            f"raw fan-out {n} p99", quantile(raw, 0.99)))


# ----- figure 10: RSS of a replaying subscriber ---------------------------------------------


def rss_child(url: str, root: str, sid: str, n: int, out_q: Any) -> None:
    try:
        importlib.import_module("journal._io.subscriptions")
        with Journal(root, url) as j:
            j.head(sid)
            baseline = proc_status_kib("VmRSS")
            reset = False
            with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
                reset = True
            count = 0
            t0 = time.perf_counter()
            sub = j.subscribe(sid, "main", after_sequence=0)
            for ev in sub:
                count += 1
                if ev.sequence >= n:
                    break
            elapsed = time.perf_counter() - t0
            close = getattr(sub, "close", None)
            if close is not None:
                close()
            peak = proc_status_kib("VmHWM")
        out_q.put((baseline, peak, count, elapsed, reset, None))
    except Exception as exc:
        out_q.put((0, 0, 0, 0.0, False, f"{type(exc).__name__}: {exc}"))


def figure_10(bench: Bench) -> None:
    missing = subscription_missing()
    n = bench.cfg.rss_events
    name = f"subscriber RSS growth, replay of {n:,} events"
    if missing:
        bench.rows.append(Row(10, name, text=MISSING, target="<= 64 MiB", note=missing))
        return
    sid = ensure_session(bench, n)
    log(f"figure 10: a subscriber process replays {n:,} events")
    out_q = bench.mp.Queue()
    proc = bench.start(rss_child, bench.server.url, str(bench.root), sid, n, out_q)
    try:
        baseline, peak, count, elapsed, reset, error = out_q.get(timeout=240)
    finally:
        bench.reap([proc])
    if error:
        raise RuntimeError(error)
    growth = (peak - baseline) / 1024
    met = growth <= 64 and count == n
    bench.rows.append(Row(
        10, name, growth, "MiB", "baseline RSS", baseline / 1024, target="<= 64 MiB", met=met,
        note=f"peak VmHWM {peak / 1024:.0f} MiB{'' if reset else ' (HWM not reset)'}; "
             f"{count:,} events in {elapsed:.1f}s ({count / elapsed:,.0f}/s)"))


# ----- figure 11: worker groups against Redis Streams consumer groups ------------------------

GROUP_SESSIONS = 64
GROUP_WORKERS = 4
GROUP_ROUNDS = 3


def group_child(url: str, root: str, group: str, name: str, claim_ms: int,
                idle_s: float | None, out_q: Any) -> None:
    """One group worker with a no-op handler: reports (first delivery, last ack, count), and
    every new claim (session, fence, time) as it sees it."""
    j = Journal(root, url).open()
    count, first, last = 0, 0.0, 0.0
    fences: dict[str, int] = {}
    with j.consume(group, worker=name, claim_ms=claim_ms, scan_s=0.2, poll_s=0.02,
                   max_idle_s=idle_s) as ds:
        out_q.put(("ready", name, time.time()))
        for d in ds:
            now = time.time()
            if fences.get(d.event.session_id) != d.fence:
                fences[d.event.session_id] = d.fence
                out_q.put(("claim", name, d.event.session_id, now))
            first = first or now
            d.ack()
            count += 1
            last = time.time()
    out_q.put(("done", name, count, first, last - 1e-9 if count else 0.0))
    j.close()


def streams_child(url: str, name: str, out_q: Any) -> None:
    """The peer: XREADGROUP (COUNT 100) and one XACK per message, decoding each record."""
    r = redis.Redis.from_url(url)
    count, first, last = 0, 0.0, 0.0
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 1.0:
        got = r.xreadgroup("bench-g", name, {"bench:{streams}": ">"}, count=100, block=100)
        if not got:
            continue
        idle_since = time.monotonic()
        for _, messages in got:
            for mid, fields in messages:
                now = time.time()
                first = first or now
                decode_line(fields[b"e"])
                r.xack("bench:{streams}", "bench-g", mid)
                count += 1
                last = time.time()
    out_q.put(("done", name, count, first, last))
    r.close()


def _collect_done(q: Any, n: int, timeout: float) -> list[tuple[Any, ...]]:
    done: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout
    while len(done) < n and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            msg = q.get(timeout=0.5)
            if msg[0] == "done":
                done.append(msg)
    return done


def _rate(done: list[tuple[Any, ...]]) -> tuple[int, float]:
    total = sum(int(d[2]) for d in done)
    firsts = [d[3] for d in done if d[2]]
    lasts = [d[4] for d in done if d[2]]
    return total, (total / (max(lasts) - min(firsts)) if firsts else 0.0)


def figure_11(bench: Bench) -> None:
    per = 100 if bench.cfg.quick else 400
    total = GROUP_SESSIONS * per
    tag = uuid.uuid4().hex[:6]
    # A root of its own: the group (start="earliest") must see only this figure's sessions,
    # not those the other figures left in the bench's root.
    group_root = bench.root / f"groups-{tag}"
    j = Journal(group_root, bench.server.url, durability="none").open()
    lines: list[bytes] = []
    for s in range(GROUP_SESSIONS):
        recs = [record(f"grp-{tag}-{s}", i) for i in range(1, per + 1)]
        for k in range(0, per, 100):
            j.append_batch(recs[k:k + 100])
        lines += [encode_line(r) for r in recs]
    r = redis.Redis.from_url(bench.server.url)
    pipe = r.pipeline(transaction=False)
    for k, line in enumerate(lines):
        pipe.xadd("bench:{streams}", {"e": line})
        if k % 1000 == 999:
            pipe.execute()
    pipe.execute()
    url, root = bench.server.url, str(group_root)

    def run(kind: str, group: str) -> tuple[int, float]:
        q = bench.mp.Queue()
        procs = []
        for w in range(GROUP_WORKERS):
            args = ((url, root, group, f"w{w}", 10_000, 1.0, q) if kind == "group"
                    else (url, f"c{w}", q))
            p = bench.mp.Process(target=group_child if kind == "group" else streams_child,
                                 args=args)
            p.start()
            procs.append(p)
            bench.procs.append(p)
        result = _rate(_collect_done(q, GROUP_WORKERS, 300))
        for p in procs:
            p.join(timeout=30)
        return result

    # Rounds alternate which side goes first (the machine is shared: its load drifts); the
    # figure is the median of the per-round ratios. Each round is a fresh group on either
    # side, over the same events.
    rounds: list[tuple[int, float, int, float]] = []
    for n in range(GROUP_ROUNDS):
        with contextlib.suppress(redis.ResponseError):
            r.xgroup_destroy("bench:{streams}", "bench-g")
        r.xgroup_create("bench:{streams}", "bench-g", id="0")
        got: dict[str, tuple[int, float]] = {}
        for kind in (("streams", "group") if n % 2 == 0 else ("group", "streams")):
            got[kind] = run(kind, f"bench{n}")
        rounds.append((*got["group"], *got["streams"]))
        log(f"figure 11 round {n + 1}: group {got['group'][1]:,.0f}/s, "
            f"streams {got['streams'][1]:,.0f}/s")
    ratios = [g / s_ if s_ else 0.0 for _, g, _, s_ in rounds]
    ratio = statistics.median(ratios)
    g_rate = statistics.median(x[1] for x in rounds)
    s_rate = statistics.median(x[3] for x in rounds)
    complete = all(x[0] == total and x[2] == total for x in rounds)
    bench.rows.append(Row(
        11, f"worker group, {GROUP_WORKERS} workers x {GROUP_SESSIONS} sessions, no-op handler",
        g_rate, "events/s", f"Streams XREADGROUP+XACK x{GROUP_WORKERS}", s_rate, ratio,
        ">= 1.0x Streams", ratio >= 1.0 and complete,
        note=f"median of {GROUP_ROUNDS} alternating rounds, ratios "
             f"{', '.join(f'{x:.2f}' for x in ratios)}; "
             + ("every event delivered in every round" if complete else
                "INCOMPLETE: " + ", ".join(f"{x[0]}/{total} group, {x[2]}/{total} stream"
                                           for x in rounds))))
    r.delete("bench:{streams}")
    r.close()
    j.close()
    _rebalance(bench, group_root, tag, f"bench{GROUP_ROUNDS - 1}")


def _rebalance(bench: Bench, group_root: Path, tag: str, group: str) -> None:
    """A worker joins one that holds every session, then dies (SIGKILL), while events keep
    coming: the time until the joiner's first delivery, and until the dead worker's
    sessions are delivered by the survivor (claim_ms = 2000)."""
    claim_ms = 2000
    url, root = bench.server.url, str(group_root)
    j = Journal(group_root, url, durability="none").open()
    sids = [f"grp-{tag}-{s}" for s in range(GROUP_SESSIONS)]
    heads = {s: j.head(s) for s in sids}
    q = bench.mp.Queue()
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            for s in sids:
                heads[s] += 1
                j.append(record(s, heads[s]))
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    a = bench.mp.Process(target=group_child, args=(url, root, group, "ra", claim_ms, None, q))
    a.start()
    bench.procs.append(a)
    feeder.start()
    claims: list[tuple[Any, ...]] = []
    ready: dict[str, float] = {}

    def drain(until: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                msg = q.get(timeout=0.2)
                if msg[0] == "claim":
                    claims.append(msg)
                elif msg[0] == "ready":
                    ready[msg[1]] = msg[2]

    drain(lambda: len({c[2] for c in claims if c[1] == "ra"}) >= GROUP_SESSIONS, 60)
    b = bench.mp.Process(target=group_child, args=(url, root, group, "rb", claim_ms, None, q))
    b.start()
    bench.procs.append(b)
    drain(lambda: "rb" in ready and any(c[1] == "rb" for c in claims), 60)
    joined = [c[3] for c in claims if c[1] == "rb"]
    join_s = min(joined) - ready["rb"] if joined and "rb" in ready else None
    drain(lambda: False, 3.0)  # let the balance settle
    held_b = {c[2] for c in claims if c[1] == "rb"}
    os.kill(b.pid, signal.SIGKILL)
    killed = time.time()
    drain(lambda: held_b <= {c[2] for c in claims if c[1] == "ra" and c[3] > killed}, 60)
    moved = [min(c[3] for c in claims if c[1] == "ra" and c[2] == s and c[3] > killed)
             for s in held_b if any(c[1] == "ra" and c[2] == s and c[3] > killed for c in claims)]
    stop.set()
    feeder.join(timeout=10)
    a.terminate()
    a.join(timeout=10)
    b.join(timeout=10)
    j.close()
    bench.rows.append(Row(11, "rebalance: a joining worker's first delivery", join_s, "s",
                          note="after it entered consume(); scan_s = 0.2"))
    bench.rows.append(Row(
        11, "rebalance: a SIGKILLed worker's sessions all moving on",
        (max(moved) - killed) if moved and len(moved) == len(held_b) else None, "s",
        note=f"{len(moved)}/{len(held_b)} sessions moved; claim_ms = {claim_ms}"))
# ----- figures 12-13: the HTTP gateway -----------------------------------------------------


@contextlib.contextmanager
def gateway(bench: Bench) -> Iterator[str]:
    """`journal serve` on a free loopback port, against the bench's Redis and root."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "journal", "serve", "--root", str(bench.root), "--redis-url",
         bench.server.url, "--port", str(port)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("journal serve did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _http_append_rate(client: Any, sid: str, seconds: float, batch: int, start: int) -> float:
    seq, done, t0 = start, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        body = [{"sequence": seq + i, "kind": KIND} for i in range(batch)]
        r = client.post(f"/sessions/{sid}/events", json=body if batch > 1 else body[0])
        if r.status_code != 201:
            raise RuntimeError(f"POST answered {r.status_code}: {r.text[:200]}")
        seq += batch
        done += batch
    return done / (time.perf_counter() - t0)


def _local_append_rate(j: Journal, sid: str, seconds: float, batch: int, start: int) -> float:
    seq, done, t0 = start, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if batch == 1:
            j.append(record(sid, seq))
        else:
            j.append_batch([record(sid, seq + i) for i in range(batch)])
        seq += batch
        done += batch
    return done / (time.perf_counter() - t0)


def _sse_reader(port: int, path: str, count: int, recv: dict[int, int],
                ready: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buf = b""
        while len(recv) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            now = time.perf_counter_ns()
            buf += chunk
            if b"stream.status" in buf:
                ready.set()
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"id: "):
                        recv.setdefault(int(line[4:]), now)


def _sub_reader(j: Journal, sid: str, count: int, recv: dict[int, int],
                ready: threading.Event) -> None:
    sub = j.subscribe(sid, "main", idle_s=0.2)
    try:
        ready.set()
        for ev in sub:
            recv[ev.sequence] = time.perf_counter_ns()
            if len(recv) >= count:
                break
    finally:
        sub.close()  # type: ignore[attr-defined]


def http_figures(bench: Bench, which: int) -> None:
    import httpx

    cfg = bench.cfg
    tag = uuid.uuid4().hex[:8]
    with gateway(bench) as base, httpx.Client(base_url=base, timeout=30) as client, \
            bench.journal() as j:
        if which == 12:
            rounds, slice_s = (2, 1.0) if cfg.quick else (4, 2.0)
            rates: dict[str, list[float]] = {k: [] for k in ("post1", "local1", "post100",
                                                             "local100")}
            next_seq = dict.fromkeys(rates, 1)
            for _ in range(rounds):
                for key in rates:
                    batch = 100 if key.endswith("100") else 1
                    sid = f"bench-http-{key}-{tag}"
                    run = _http_append_rate if key.startswith("post") else _local_append_rate
                    target: Any = client if key.startswith("post") else j
                    rate = run(target, sid, slice_s, batch, next_seq[key])
                    next_seq[key] = j.head(sid) + 1
                    rates[key].append(rate)
            med = {k: statistics.median(v) for k, v in rates.items()}
            note = f"{rounds} interleaved rounds of {slice_s:g}s, one client, keep-alive"
            bench.rows.append(ratio_row(12, "HTTP append, one event per POST", med["post1"],
                                        "events/s", "Journal.append", med["local1"], note=note))
            bench.rows.append(ratio_row(12, "HTTP append, 100 events per POST",
                                        med["post100"], "events/s", "append_batch(100)",
                                        med["local100"]))
            return
        count = 150 if cfg.quick else 500
        sid = f"bench-sse-{tag}"
        port = int(base.rsplit(":", 1)[1])
        sse: dict[int, int] = {}
        sub: dict[int, int] = {}
        ready = [threading.Event(), threading.Event()]
        with Journal(bench.root, bench.server.url) as reader_j:
            threads = [
                threading.Thread(target=_sse_reader, daemon=True,
                                 args=(port, f"/sessions/{sid}/events/stream", count, sse,
                                       ready[0])),
                threading.Thread(target=_sub_reader, daemon=True,
                                 args=(reader_j, sid, count, sub, ready[1])),
            ]
            for t in threads:
                t.start()
            for r in ready:
                r.wait(10)
            time.sleep(0.3)
            sent: dict[int, int] = {}
            for seq in range(1, count + 1):
                j.append(record(sid, seq))
                sent[seq] = time.perf_counter_ns()
                time.sleep(0.004)
            for t in threads:
                t.join(30)
        if len(sse) < count or len(sub) < count:
            raise RuntimeError(f"SSE got {len(sse)}, the subscription {len(sub)} of {count}")
        lat_sse = [max(0, sse[s] - sent[s]) / 1000 for s in sent]
        lat_sub = [max(0, sub[s] - sent[s]) / 1000 for s in sent]
        note = (f"{count} events at ~{1 / 0.004:.0f}/s; appender and both readers in one "
                "process (threads), the server in another")
        bench.rows.append(ratio_row(13, "SSE latency p50 (append returned -> frame)",
                                    quantile(lat_sse, 0.5), "us", "Python subscription p50",
                                    quantile(lat_sub, 0.5), note=note))
        bench.rows.append(ratio_row(13, "SSE latency p99", quantile(lat_sse, 0.99), "us",
                                    "Python subscription p99", quantile(lat_sub, 0.99)))
# ----- figure 14: the cost of one durable append ---------------------------------------------

COST_WARMUP = 300  # appends before measuring: the file, the lease and the connections exist
COST_CONTENT = "x" * 250  # a 250-byte UserMessage, as in issue 13


def cost_record(session_id: str, sequence: int) -> EventRecord:
    return EventRecord.new(session_id, "main", sequence,
                           {"type": "UserMessage", "content": COST_CONTENT})


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost_child(root: str, url: str, sid: str, n: int, redis_pid: int) -> dict[str, float]:
    """One writer: warm up, then ``n`` durable appends. Client CPU from getrusage, the
    server's from /proc (run as ``bench.py --cost-child``, so strace can wrap it)."""
    with Journal(root, url, durability="fsync") as j:
        for seq in range(1, COST_WARMUP + 1):
            j.append(cost_record(sid, seq))
        records = [cost_record(sid, COST_WARMUP + 1 + i) for i in range(n)]
        server0 = proc_cpu_s(redis_pid)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for one in records:
            try:
                j.append(one)
            except AppendOutcomeUnknown:  # a stall (strace, a busy machine): resolve it
                j.append(one)
        wall = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        server1 = proc_cpu_s(redis_pid)
    per = 1e6 / max(n, 1)
    return {
        "user_us": (usage1.ru_utime - usage0.ru_utime) * per,
        "sys_us": (usage1.ru_stime - usage0.ru_stime) * per,
        "server_us": (server1 - server0) * per,
        "rate": n / wall if wall > 0 else 0.0,
    }


def floor_cpu_us(bench: Bench, n: int) -> float:
    """CPU (user + sys) of one O_APPEND write + fdatasync of the same line: the floor."""
    line = encode_line(cost_record("bench-floor", 1))
    fd = _open_append_fd(bench.scratch / "cpu-floor.dat")
    try:
        for _ in range(50):
            os.write(fd, line)
            os.fdatasync(fd)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            os.write(fd, line)
            os.fdatasync(fd)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
    spent = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return spent * 1e6 / n


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def floor_round_trip_cpu_us(bench: Bench, n: int, command: str) -> tuple[float, float]:
    """The least one durable append can cost on this machine with one Redis round trip: the
    same line's O_APPEND write + fdatasync, then one command sent and its reply read on a
    raw socket (no client library). ``command`` is ``PING`` (the cheapest there is), or
    ``EVALSHA`` of an empty script (``return 1``) with the commit's keys and arguments,
    its announcement included: what running any script costs before its first line; or
    ``python``: that ``EVALSHA``, with each event's record (made beforehand, as figure 14's
    writer makes its records) encoded, its announcement made and the command packed for
    it, as the leanest Python client would (no checks, no lease, no state): what the
    language itself costs on top of the syscalls.
    Returns (client CPU, redis-server CPU) per event; the server's is paid at this pace
    (woken once per fsync)."""
    server = bench.server
    line = encode_line(cost_record("bench-floor", 1))
    fd = _open_append_fd(bench.scratch / f"cpu-floor-rt-{command}.dat")
    if server.port:
        sock = socket.create_connection((server.host, server.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(server.unix_socket))
    try:
        fixed = _resp(b"PING")  # the command of every event, but in the python mode
        head: tuple[bytes, ...] = ()
        if command != "PING":
            sock.sendall(_resp(b"SCRIPT", b"LOAD", b"return 1"))
            sha = sock.recv(128).split(b"\r\n")[1]
            keys = [b"{bench-floor}:%b" % k for k in (b"state", b"lease", b"channel", b"want")]
            head = (b"EVALSHA", sha, b"4", *keys, uuid.uuid4().hex.encode(), b"100")
            fixed = _resp(*head, b"123456", b"update", b"PUBLISH", b"m" * (len(line) + 120),
                          b"main", b"42")
        sequence = 0
        records = ([cost_record("bench-floor", i) for i in range(1, n + 51)]
                   if command == "python" else [])

        def one() -> None:
            nonlocal sequence
            sequence += 1
            if command == "python":
                data = encode_line(records[sequence - 1])
                end = sequence * len(data)
                message = encode_announcement("bench-floor", "main", sequence, sequence,
                                              end - len(data), end, data)
                send = _resp(*head, b"%d" % end, b"update", b"PUBLISH", message, b"main",
                             b"%d" % sequence)
            else:
                data, send = line, fixed
            os.write(fd, data)
            os.fdatasync(fd)
            sock.sendall(send)
            if sock.recv(64) not in (b"+PONG\r\n", b":1\r\n"):
                raise RuntimeError(f"the round-trip floor's {command} failed")

        for _ in range(50):
            one()
        assert server.pid is not None
        server0 = proc_cpu_s(server.pid)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            one()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        server1 = proc_cpu_s(server.pid)
    finally:
        sock.close()
        os.close(fd)
    spent = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return spent * 1e6 / n, (server1 - server0) * 1e6 / n


def _cost_command(bench: Bench, sid: str, n: int) -> list[str]:
    pid = bench.server.pid
    assert pid is not None
    return [sys.executable, str(Path(__file__).resolve()), "--cost-child",
            str(bench.root), bench.server.url, sid, str(n), str(pid)]


def strace_counts(path: Path) -> dict[str, int]:
    """Calls per syscall from an ``strace -c`` summary."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            with contextlib.suppress(ValueError):
                counts[parts[-1]] = int(parts[3])
    return counts


def syscalls_per_append(bench: Bench, n: int, tag: str) -> tuple[float, dict[str, float]]:
    """``strace -c -f`` of a child with ``n`` appends minus one with none (same warm-up):
    the steady-state syscalls of one append, in total and by name."""
    strace = shutil.which("strace")
    assert strace is not None
    totals: list[dict[str, int]] = []
    for count in (0, n):
        out = bench.scratch / f"strace-{tag}-{count}.txt"
        sid = f"bench-cost-strace-{tag}-{count}"
        done = subprocess.run([strace, "-c", "-f", "-o", str(out),
                               *_cost_command(bench, sid, count)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"strace run failed: {done.stderr.strip()[-300:]}")
        totals.append(strace_counts(out))
    base, full = totals
    by_name = {name: (full.get(name, 0) - base.get(name, 0)) / n
               for name in set(base) | set(full)}
    by_name = {k: v for k, v in by_name.items() if v >= 0.05}
    return sum(by_name.values()), by_name


def figure_14(bench: Bench) -> None:
    n = 1000 if bench.cfg.quick else 5000
    runs: list[dict[str, float]] = []
    for rnd in range(3):
        log(f"figure 14: cost run {rnd + 1}/3 ({n:,} appends)")
        sid = f"bench-cost-{uuid.uuid4().hex[:8]}"
        out = subprocess.run(_cost_command(bench, sid, n), capture_output=True, text=True,
                             timeout=600)
        if out.returncode:
            raise RuntimeError(f"cost run failed: {out.stderr.strip()[-300:]}")
        runs.append(msgspec.json.decode(out.stdout.strip().splitlines()[-1]))

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    floor = statistics.median(floor_cpu_us(bench, n) for _ in range(3))
    trips = [floor_round_trip_cpu_us(bench, n, "PING") for _ in range(3)]
    trip_client = statistics.median(t[0] for t in trips)
    trip_server = statistics.median(t[1] for t in trips)
    empty_script = statistics.median(floor_round_trip_cpu_us(bench, n, "EVALSHA")[1]
                                     for _ in range(3))
    leanest = statistics.median(floor_round_trip_cpu_us(bench, n, "python")[0]
                                for _ in range(3))
    client = med("user_us") + med("sys_us")
    spread = ", ".join(fmt(r["user_us"] + r["sys_us"]) for r in runs)
    bench.rows.append(Row(14, "F_fs CPU per event (write+fdatasync, getrusage)", floor, "us",
                          note="the same line, one O_APPEND write + fdatasync, median of 3"))
    bench.rows.append(Row(14, "floor CPU: write+fdatasync + one PING round trip (raw socket)",
                          trip_client, "us",
                          note="the least a durable append with one Redis round trip costs "
                               "the client here; median of 3"))
    bench.rows.append(Row(14, "floor CPU in Python: encode the record, write+fdatasync, "
                              "one EVALSHA (raw socket)", leanest, "us",
                          note="the leanest Python client: no checks, lease or state, "
                               "just the line, the announcement, the syscalls and the "
                               "command; median of 3"))
    bench.rows.append(Row(14, "client CPU per durable append (getrusage)", client, "us",
                          ref_name="floor CPU", ref_value=trip_client,
                          ratio=client / trip_client if trip_client else None,
                          target="<= 120 us", met=client <= 120,
                          note=f"user {fmt(med('user_us'))} + sys {fmt(med('sys_us'))}; "
                               f"{client / leanest:.2f}x the leanest Python client; "
                               f"runs: {spread}; 1 writer, {n:,} appends of a 250-byte "
                               "UserMessage, median of 3"))
    server = med("server_us")
    bench.rows.append(Row(14, "redis-server CPU per bare PING at the same pace", trip_server,
                          "us", note="the floor run's server side: any one command costs "
                                     "this here; median of 3"))
    bench.rows.append(Row(14, "redis-server CPU per EVALSHA of an empty script, same pace",
                          empty_script, "us",
                          note="'return 1' with the commit's 4 keys and 8 arguments (its "
                               "announcement too): a script's cost before its first line; "
                               "median of 3"))
    bench.rows.append(Row(14, "redis-server CPU per durable append (/proc/pid/stat)", server,
                          "us", ref_name="PING", ref_value=trip_server,
                          ratio=server / trip_server if trip_server else None,
                          target="<= 40 us", met=server <= 40,
                          note="runs: " + ", ".join(fmt(r["server_us"]) for r in runs)))
    if shutil.which("strace") is None:
        bench.rows.append(Row(14, "syscalls per durable append", text="n/a (no strace)",
                              target="<= 7"))
        return
    samples: list[tuple[float, dict[str, float]]] = []
    for rnd in range(3):
        log(f"figure 14: strace run {rnd + 1}/3")
        samples.append(syscalls_per_append(bench, n, str(rnd)))
    samples.sort(key=lambda s: s[0])
    total, by_name = samples[1]
    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]))
    bench.rows.append(Row(14, "syscalls per durable append (strace -c -f)", total, "calls",
                          target="<= 7", met=round(total, 2) <= 7,
                          note=f"runs: {', '.join(fmt(s[0]) for s in samples)}; median run: "
                               f"{top}"))


# ----- figure 15: the fleet against a durable Redis peer ---------------------------------------

# The peer: what a team would build on Redis alone. A Lua compare-and-set on the stream's
# head, then XADD of the event, on a server with appendfsync always (the AOF is fsynced
# before the reply), so an acknowledged event is as durable as the journal's. Its writers
# make and encode the same record per event as the journal's (see _fleet_peer).
PEER_CAS_XADD = """
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
if head + 1 ~= tonumber(ARGV[1]) then return {0, head} end
redis.call('XADD', KEYS[2], '*', 'seq', ARGV[1], 'event', ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return {1, head + 1}
"""
FLEETS = ((1, 1), (4, 4), (16, 64))  # (writer processes, sessions), one owner per session


def _round_robin(sids: list[str], one: Callable[[str], None],
                 seconds: float) -> tuple[int, float]:
    """One write per call of ``one``, to the sessions in turn, for ``seconds``: (count,
    elapsed). The three writers of a fleet share it, so they pay the same loop."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        one(sids[count % len(sids)])
        count += 1
    return count, time.perf_counter() - start


def _fleet_peer(url: str, sids: list[str], seconds: float, gate: _Gate) -> tuple[int, float]:
    """Each event is the record the journal's writers make (fresh ids, its own sequence),
    encoded as the line the journal would write: the per-event work of any real writer."""
    client = redis.Redis.from_url(url)
    try:
        script = client.register_script(PEER_CAS_XADD)
        heads = dict.fromkeys(sids, 0)

        def one(sid: str) -> None:
            heads[sid] += 1
            ok = script(keys=[f"peer:{{{sid}}}:head", f"peer:{{{sid}}}:stream"],
                        args=[heads[sid], encode_line(cost_record(sid, heads[sid]))])
            if not ok[0]:
                raise RuntimeError(f"peer CAS refused {sid} #{heads[sid]}")

        for sid in sids:
            one(sid)
        gate()
        return _round_robin(sids, one, seconds)
    finally:
        client.close()


def _fleet_journal(root: str, url: str, sids: list[str], seconds: float,
                   gate: _Gate) -> tuple[int, float]:
    with Journal(root, url, durability="fsync") as j:
        heads = {sid: j.head(sid) for sid in sids}
        for sid in sids:
            heads[sid] += 1
            j.append(cost_record(sid, heads[sid]))
        gate()

        def one(sid: str) -> None:
            heads[sid] += 1
            record = cost_record(sid, heads[sid])
            try:
                j.append(record)
            except AppendOutcomeUnknown:  # a stall past the lease: retrying resolves it
                j.append(record)

        return _round_robin(sids, one, seconds)


def _fleet_raw(scratch: str, sids: list[str], seconds: float, gate: _Gate) -> tuple[int, float]:
    """The disk's own floor for the same fleet: one O_APPEND file per session, the same
    line, write + fdatasync, round robin."""
    line = encode_line(cost_record(sids[0], 1))
    fds = {sid: _open_append_fd(Path(scratch) / f"fleet-raw-{sid}.dat") for sid in sids}
    try:
        gate()

        def one(sid: str) -> None:
            os.write(fds[sid], line)
            os.fdatasync(fds[sid])

        return _round_robin(sids, one, seconds)
    finally:
        for fd in fds.values():
            os.close(fd)


def fleet_child(idx: int, root: str, scratch: str, url: str, peer_url: str, sids: list[str],
                modes: list[str], seconds: float, barrier: Any, out_q: Any) -> None:
    """Runs in a spawned process: one phase per mode, each started by the shared barrier."""
    for phase, mode in enumerate(modes):
        gate = _Gate(barrier)
        result: tuple[int, float] = (0, 0.0)
        error: str | None = None
        try:
            if mode == "peer":
                result = _fleet_peer(peer_url, [f"{s}-{phase}" for s in sids], seconds, gate)
            elif mode == "raw":
                result = _fleet_raw(scratch, sids, seconds, gate)
            else:
                result = _fleet_journal(root, url, sids, seconds, gate)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        try:
            gate()
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
        out_q.put((idx, phase, mode, result[0], result[1], error))


def figure_15(bench: Bench) -> None:
    cfg = bench.cfg
    seconds = 1.5 if cfg.quick else 3.0
    rounds = 3
    peer_dir = bench.scratch / "peer-redis"
    peer_dir.mkdir(exist_ok=True)
    with RedisServer(dir=peer_dir, extra_args=["--appendonly", "yes",
                                               "--appendfsync", "always"]) as peer:
        for writers, sessions in FLEETS:
            modes = ["peer", "journal", "raw"] * rounds
            barrier = bench.mp.Barrier(writers + 1)
            out_q = bench.mp.Queue()
            tag = uuid.uuid4().hex[:6]
            per = sessions // writers
            procs = [bench.start(fleet_child, i, str(bench.root), str(bench.scratch),
                                 bench.server.url, peer.url,
                                 [f"fleet-{tag}-{i * per + k}" for k in range(per)], modes,
                                 seconds, barrier, out_q)
                     for i in range(writers)]
            rates: dict[str, list[float]] = {"peer": [], "journal": [], "raw": []}
            errors: list[str] = []
            try:
                for phase, mode in enumerate(modes):
                    log(f"figure 15: {writers} writers x {sessions} sessions, phase "
                        f"{phase + 1}/{len(modes)}: {mode}")
                    barrier.wait(timeout=180)
                    rates[mode].append(
                        phase_rate(out_q, writers, phase, seconds + 180, errors))
            finally:
                with contextlib.suppress(Exception):
                    barrier.abort()
                bench.reap(procs)
            name = f"{writers} writer{'s' if writers > 1 else ''} x {sessions} session" + (
                "s" if sessions > 1 else "")
            if errors:
                bench.rows.append(error_row(12, name, "; ".join(errors[:3])))
                continue
            peer_rate = statistics.median(rates["peer"])
            jour_rate = statistics.median(rates["journal"])
            pairs = [a / b for a, b in zip(rates["journal"], rates["peer"], strict=True) if b]
            bench.rows.append(Row(15, f"peer: Lua CAS + XADD, appendfsync always, {name}",
                                  peer_rate, "events/s",
                                  note="rounds: " + ", ".join(fmt(v) for v in rates["peer"])))
            target = ">= 1.0x peer" if writers > 1 else ""
            made = ratio_row(15, f"journal, fsync, {name}", jour_rate, "events/s",
                             "peer", peer_rate, target=target,
                             at_least=1.0 if writers > 1 else None,
                             note="rounds: " + ", ".join(fmt(v) for v in rates["journal"])
                                  + "; ratio: median of the per-round ratios")
            made.ratio = statistics.median(pairs) if pairs else None
            if made.ratio is not None and writers > 1:
                made.met = made.ratio >= 1.0
            bench.rows.append(made)
            bench.rows.append(Row(15, f"raw write+fdatasync, one file per session, {name}",
                                  statistics.median(rates["raw"]), "events/s",
                                  note="the disk's floor for this fleet; rounds: "
                                       + ", ".join(fmt(v) for v in rates["raw"])))


# ----- figure 16: the cost of the per-line checksums -----------------------------------------


@contextlib.contextmanager
def _without_checksums(index: Path | None = None, zeroed: bytes = b"") -> Iterator[None]:
    """The same code with CRC32C replaced by a constant (0); ``index`` holds ``zeroed``
    meanwhile, so reads still pass their comparison."""
    from journal._storage import session_file

    saved = session_file.checksum, session_file.checksum_of
    kept = index.read_bytes() if index is not None else b""
    session_file.checksum = session_file.checksum_of = lambda raw: 0
    if index is not None:
        index.write_bytes(zeroed)
    try:
        yield
    finally:
        session_file.checksum, session_file.checksum_of = saved
        if index is not None:
            index.write_bytes(kept)


def _timed_per_call(fn: Callable[[], object], seconds: float) -> float:
    """CPU microseconds per call (process time: other work on the machine does not count)."""
    calls = 0
    start = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            fn()
        calls += 20
    return (time.process_time() - start) / calls * 1e6


def _append_cpu_us(j: Journal, sid: str, first: int, n: int) -> float:
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    for seq in range(first, first + n):
        one = cost_record(sid, seq)
        try:
            j.append(one)
        except AppendOutcomeUnknown:  # a stall (a busy machine): resolve it
            j.append(one)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    spent = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return spent * 1e6 / n


def figure_16(bench: Bench) -> None:
    from journal._storage import session_file
    from journal._storage.session_file import INDEX_ENTRY, SessionStore

    rounds = 5 if bench.cfg.quick else 9
    slice_s = 0.3 if bench.cfg.quick else 1.0
    appends = 200 if bench.cfg.quick else 500
    tag = uuid.uuid4().hex[:6]
    sid = f"bench-crc-{tag}"
    with bench.journal(durability="fsync") as j:
        for start in range(1, 1001, 100):
            j.append_batch([cost_record(sid, seq) for seq in range(start, start + 100)])
        committed = (bench.root / "events" / f"{sid}.jsonl").stat().st_size
        index = bench.root / "index" / sid / f"main{session_file.INDEX_SUFFIX}"
        zeroed = b"".join(INDEX_ENTRY.pack(o, n, 0)
                          for o, n, _ in INDEX_ENTRY.iter_unpack(index.read_bytes()))
        store = SessionStore(bench.root, sid)
        line = encode_line(cost_record(sid, 1))

        def read() -> object:
            return store.read("main", 901, 1000, committed)

        def rows() -> object:
            return session_file.line_rows(line, 0)

        got: dict[str, list[float]] = {k: [] for k in
                                       ("read", "read0", "rows", "rows0", "app", "app0")}
        heads = {"with": 0, "without": 0}
        def measure(suffix: str, mode: str) -> None:
            got["read" + suffix].append(_timed_per_call(read, slice_s))
            got["rows" + suffix].append(_timed_per_call(rows, slice_s))
            got["app" + suffix].append(_append_cpu_us(j, f"{sid}-{mode}", heads[mode] + 1,
                                                      appends))
            heads[mode] += appends

        for rnd in range(rounds):
            log(f"figure 16: round {rnd + 1}/{rounds}")
            # Which goes first alternates, so a drift of the machine favours neither.
            for first in ((True, False) if rnd % 2 == 0 else (False, True)):
                if first:
                    measure("", "with")
                else:
                    with _without_checksums(index, zeroed):
                        measure("0", "without")

    def pair(key: str) -> tuple[float, float, float]:
        """Medians with and without, and the median of the per-round differences."""
        diffs = [a - b for a, b in zip(got[key], got[key + "0"], strict=True)]
        return (statistics.median(got[key]), statistics.median(got[key + "0"]),
                statistics.median(diffs))

    for key, name, what in (
        ("read", "storage read of 100 events (SessionStore.read, indexed)", "per read"),
        ("rows", "index rows of one 250-byte line (line_rows)", "per append"),
        ("app", "client CPU per durable append (getrusage)", "per append"),
    ):
        with_, without, diff = pair(key)
        bench.rows.append(Row(16, f"{name}, with CRC32C", with_, "us",
                              ref_name="without", ref_value=without,
                              ratio=with_ / without if without else None,
                              note=f"checksum cost {what}: {fmt(diff)} us (median of the "
                                   f"per-round differences, {rounds} alternating rounds)"))


# ----- main ---------------------------------------------------------------------------------


def parse_only(text: str) -> set[int]:
    chosen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            chosen |= set(range(int(lo), int(hi) + 1))
        else:
            chosen.add(int(part))
    bad = chosen - set(ALL_FIGURES)
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"figures are 1..16, got {text!r}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast run (about a minute): shorter slices, N=20,000")
    parser.add_argument("--only", type=parse_only, default=set(ALL_FIGURES),
                        help="figures to run, e.g. 1,3,6 or 1-4 (default: all)")
    parser.add_argument("--events", type=int, default=None,
                        help="N, the session size of figures 6/7 (default 1,000,000; "
                             "20,000 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "latest.md",
                        help="write the table as markdown here (default bench-results/latest.md)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if args.events is not None and args.events < 100:
        parser.error("--events must be at least 100")
    return args


FIGURES: dict[int, tuple[str, Callable[[Bench], None]]] = {
    5: ("4 writer processes", figure_5),
    6: ("read latency", figure_6),
    7: ("cold head / rebuild", figure_7),
    8: ("subscription latency", figure_8),
    9: ("fan-out to 16 subscribers", figure_9),
    10: ("subscriber RSS", figure_10),
    11: ("worker group vs Redis Streams", figure_11),
    12: ("HTTP append throughput", lambda b: http_figures(b, 12)),
    13: ("SSE latency", lambda b: http_figures(b, 13)),
    14: ("cost of one durable append", figure_14),
    15: ("the fleet against a durable Redis peer", figure_15),
    16: ("cost of the per-line checksums", figure_16),
}


@contextlib.contextmanager
def data_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=pick_data_base()))
    try:
        yield path
    finally:
        if keep:
            log(f"kept data in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--cost-child"]:
        root, url, sid, n, pid = argv[1:6]
        print(msgspec.json.encode(cost_child(root, url, sid, int(n), int(pid))).decode())
        return 0
    args = parse_args(argv)
    cfg = Config.make(args.quick, args.events)
    selected: set[int] = args.only
    started = time.monotonic()
    with data_dir(args.keep_data) as base, RedisServer() as server:
        root, scratch = base / "journal", base / "floors"
        root.mkdir()
        scratch.mkdir()
        info = machine_info(base, server)
        header = "\n".join(f"- {k}: {v}" for k, v in info)
        print(header, flush=True)
        bench = Bench(cfg, root, scratch, server, multiprocessing.get_context("spawn"))
        try:
            if selected & {1, 2, 3, 4}:
                try:
                    figures_1_to_4(bench, selected)
                except Exception as exc:
                    bench.rows.append(error_row(1, "figures 1-4", exc))
            for fig, (name, run) in FIGURES.items():
                if fig not in selected:
                    continue
                log(f"figure {fig}: {name}")
                try:
                    run(bench)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    bench.rows.append(error_row(fig, name, exc))
        finally:
            bench.reap()
    elapsed = time.monotonic() - started
    mode = "quick" if cfg.quick else "full"
    table = render(bench.rows)
    summary = (f"\n{mode} run, figures {','.join(map(str, sorted(selected)))}, N = "
               f"{', '.join(f'{n:,}' for n in cfg.read_sizes)}, {elapsed:.0f}s")
    print(summary)
    print()
    print(table, flush=True)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# journal benchmark\n\n{header}\n{summary}\n\n{table}\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
