"""``journal demo``: start Redis, a fleet and a subscriber; check everything; summarize."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from journal._io.journals import Journal
from journal._model.records import EventRecord
from journal.cli.demo.fleet import BRANCH, PAGE
from journal.errors import (
    JournalError,
)
from journal.settings import redact_url

# ----- the demo ------------------------------------------------------------------------------


@dataclass
class Check:
    ok: bool
    text: str


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(min(int(q), 99), 1) - 1]


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1000:.1f} ms"


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _kill_all(procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _child_env(redis_url: str, root: Path, durability: str | None) -> dict[str, str]:
    # The URL goes by environment, not argv: a password must not show up in `ps`.
    env = dict(os.environ)
    env["JOURNAL_REDIS_URL"] = redis_url
    env["JOURNAL_ROOT"] = str(root)
    if durability is not None:
        env["JOURNAL_DURABILITY"] = durability
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_demo(args: argparse.Namespace, *, root: Path | None, redis_url: str | None,
             durability: str | None) -> int:
    """``journal demo``: start, run, watch, verify, summarize. 0 only if every check passed."""
    from journal.server.embedded import embedded_status, ensure_embedded, stop_embedded

    temporary = root is None
    root = Path(tempfile.mkdtemp(prefix="journal-demo-")) if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    started_redis = False
    passed = ran = False
    out = sys.stdout
    try:
        if redis_url is None:
            started_redis = embedded_status(root) is None
            redis_url = ensure_embedded(root)
            how = "embedded, started for this demo" if started_redis else "embedded, reused"
        else:
            how = "given by --redis-url"
        run_id = uuid.uuid4().hex[:6]
        prefix = f"demo-{run_id}"
        sessions = [f"{prefix}-{i}" for i in range(1, args.sessions + 1)]
        print(f"journal demo: {args.workers} worker processes x {args.sessions} shared sessions "
              f"for {args.duration:g} s (durability "
              f"{durability or os.environ.get('JOURNAL_DURABILITY') or 'fsync'})", file=out)
        print(f"  root      {root}{' (temporary)' if temporary else ''}", file=out)
        print(f"  redis     {redact_url(redis_url)} ({how})", file=out)
        print(f"  sessions  {', '.join(sessions)} (branches main, {BRANCH})", file=out)
        print("", file=out)
        if args.group_workers:
            print(f"worker group {prefix}: {args.group_workers} processes share every "
                  f"session's events (journal group status {prefix})", file=out)
        print("live feed (a subscriber process, one subscription per session and branch):",
              file=out)
        out.flush()
        ran = True
        passed, lines = _run(args, root, work, redis_url, durability, sessions, prefix)
        for line in lines:
            print(line, file=out)
        return 0 if passed else 1
    finally:
        if started_redis:
            with contextlib.suppress(JournalError):  # never mask the demo's own outcome
                stop_embedded(root)
        # A failed run is evidence: keep it. A run that never started leaves nothing behind.
        if args.keep or (ran and not passed):
            print(f"kept for inspection: {root}", file=out)
        elif temporary:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, root: Path, work: Path, redis_url: str,
         durability: str | None, sessions: list[str], prefix: str) -> tuple[bool, list[str]]:
    env = _child_env(redis_url, root, durability)
    spec = {
        "root": str(root), "sessions": sessions, "ready": str(work / "ready"),
        "expect": str(work / "expect.json"), "seen": str(work / "seen.jsonl"),
        "timeout": args.duration + 60.0, "grace": 15.0,
        "work": str(work), "group": prefix,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    procs: list[subprocess.Popen[Any]] = []
    try:
        subscriber = subprocess.Popen(
            [sys.executable, "-m", "journal.cli.demo.subscriber", str(work / "spec.json")],
            env=env, stdin=subprocess.DEVNULL,
        )
        procs.append(subscriber)
        deadline = time.monotonic() + 30
        while not os.path.exists(spec["ready"]):
            if subscriber.poll() is not None or time.monotonic() > deadline:
                return False, ["FAIL: the subscriber did not start"]
            time.sleep(0.02)
        group_procs = _start_group(args, root, work, redis_url, env, spec, procs)
        if group_procs is None:
            return False, ["FAIL: the worker group did not start"]
        began = time.monotonic()
        workers = []
        for i in range(1, args.workers + 1):
            argv = [sys.executable, "-m", "journal.cli", "fleet", "--json",
                    "--sessions", str(args.sessions), "--prefix", prefix,
                    "--duration", str(args.duration), "--pause", str(args.pause),
                    "--worker-id", f"worker-{i}", "--acked", str(work / f"acked-{i}.jsonl")]
            workers.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
            procs.append(workers[-1])
        stats: list[dict[str, Any]] = []
        failures: list[str] = []
        for i, proc in enumerate(workers, start=1):
            try:
                stdout, stderr = proc.communicate(timeout=args.duration + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                failures.append(f"worker-{i} did not finish in time")
            if proc.returncode != 0:
                failures.append(f"worker-{i} exited {proc.returncode}: "
                                f"{stderr.strip().splitlines()[-1:] or ''}")
            with contextlib.suppress(ValueError, IndexError):
                stats.append(json.loads(stdout.strip().splitlines()[-1]))
        # The workers' own clocks (from their first append attempt): process start-up is
        # not part of the write rate.
        writing = max((float(s.get("elapsed", 0.0)) for s in stats),
                      default=time.monotonic() - began)
        last_ack = max((a["acked_at"] for i in range(1, args.workers + 1)
                        for a in _read_jsonl(work / f"acked-{i}.jsonl")), default=time.time())

        with Journal(root, redis_url) as j:
            heads = {s: j.branches(s) for s in sessions}
            tmp = work / "expect.json.tmp"
            tmp.write_text(json.dumps(heads))
            os.replace(tmp, spec["expect"])  # atomic: the subscriber never reads half a file
            try:
                subscriber.wait(timeout=spec["grace"] + 10)
            except subprocess.TimeoutExpired:
                failures.append("the subscriber did not finish")
            else:
                if subscriber.returncode != 0:
                    failures.append(f"the subscriber exited {subscriber.returncode}")
            records = {
                (s, b): _read_branch(j, s, b, h) for s, hs in heads.items() for b, h in hs.items()
            }
            failures += _stop_group(j, prefix, sessions, group_procs)
        return _verify_and_summarize(args, root, work, sessions, heads, records, stats,
                                     failures, writing, last_ack)
    finally:
        _kill_all(procs)


def _start_group(args: argparse.Namespace, root: Path, work: Path, redis_url: str,
                 env: dict[str, str], spec: dict[str, Any],
                 procs: list[subprocess.Popen[Any]]) -> list[subprocess.Popen[Any]] | None:
    """Create the demo's group (at "latest": a reused root's older sessions are not its
    work) and start its worker processes; None if one did not get ready."""
    if not args.group_workers:
        return []
    from journal._groups.admin import create_group

    with Journal(root, redis_url) as j:
        create_group(j, spec["group"], start="latest")
    started = []
    for i in range(1, args.group_workers + 1):
        argv = [sys.executable, "-m", "journal.cli.demo.groupworker", str(work / "spec.json"),
                f"g{i}"]
        started.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL))
        procs.append(started[-1])
    deadline = time.monotonic() + 30
    while not all((work / f"group-g{i}.ready").exists()
                  for i in range(1, args.group_workers + 1)):
        if any(p.poll() is not None for p in started) or time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return started


def _stop_group(j: Journal, group: str, sessions: list[str],
                group_procs: list[subprocess.Popen[Any]]) -> list[str]:
    """Wait until the group has caught up with this run's sessions, then stop its workers
    (SIGTERM: they commit, write their checkpoints down and leave)."""
    if not group_procs:
        return []
    from journal._groups.admin import status

    failures = []
    deadline = time.monotonic() + 30
    while True:
        lag = sum(sum(s["lag"].values()) for s in status(j, group)["sessions"]
                  if s["session"] in sessions)
        if lag == 0:
            break
        if time.monotonic() > deadline:
            failures.append(f"the worker group did not catch up (lag {lag} events)")
            break
        time.sleep(0.1)
    for p in group_procs:
        p.terminate()
    for i, p in enumerate(group_procs, start=1):
        try:
            if p.wait(timeout=15) != 0:
                failures.append(f"group worker g{i} exited {p.returncode}")
        except subprocess.TimeoutExpired:
            failures.append(f"group worker g{i} did not stop")
    return failures


def _group_summary(args: argparse.Namespace, work: Path, where: dict[str, tuple[str, str, int]],
                   ) -> tuple[Check | None, list[tuple[str, str]]]:
    """Every event handled at least once by the group, and what each worker handled."""
    if not args.group_workers:
        return None, []
    handled: set[str] = set()
    rows = []
    for i in range(1, args.group_workers + 1):
        lines = list(_read_jsonl(work / f"group-g{i}.jsonl"))
        mine = [x for x in lines if x["e"] in where]
        handled |= {x["e"] for x in mine}
        positions = collections.Counter((x["s"], x["b"], x["q"]) for x in mine)
        again = sum(1 for x in mine if x["a"] > 1) + sum(c - 1 for c in positions.values())
        held = len({x["s"] for x in mine})
        rows.append((f"group worker g{i}", f"{len(mine):,} events, {held} session"
                     f"{'' if held == 1 else 's'}, {again} redeliveries"))
    missing = len(set(where) - handled)
    check = Check(not missing, f"the worker group handled each of the {len(where)} events "
                  "at least once" if not missing else
                  f"the worker group never handled {missing} of {len(where)} events")
    return check, rows


def _read_branch(j: Journal, session: str, branch: str, head: int) -> list[EventRecord]:
    out: list[EventRecord] = []
    while len(out) < head:
        page = j.read(session, branch, len(out) + 1, min(PAGE, head - len(out)))
        if not page:
            break
        out.extend(page)
    return out


def _verify_and_summarize(
    args: argparse.Namespace, root: Path, work: Path, sessions: list[str],
    heads: dict[str, dict[str, int]], records: dict[tuple[str, str], list[EventRecord]],
    stats: list[dict[str, Any]], failures: list[str], writing: float, last_ack: float,
) -> tuple[bool, list[str]]:
    from journal.cli.verify import verify_report

    checks: list[Check] = [Check(False, f) for f in failures]
    where: dict[str, tuple[str, str, int]] = {}
    created: dict[str, float] = {}
    duplicates = 0
    gaps = []
    for (session, branch), recs in records.items():
        sequences = [r.sequence for r in recs]
        if sequences != list(range(1, heads[session][branch] + 1)):
            gaps.append(f"{session}/{branch}")
        for r in recs:
            if r.event_id in where:
                duplicates += 1
            where[r.event_id] = (session, branch, r.sequence)
            created[r.event_id] = r.datetime.timestamp()
    total = sum(len(r) for r in records.values())
    branch_count = sum(len(h) for h in heads.values())
    checks.append(Check(
        not gaps and not duplicates,
        f"{len(sessions)} sessions, {branch_count} branches, {total} events: "
        + ("no gap, no duplicate" if not gaps and not duplicates
           else f"gaps on {', '.join(gaps) or 'none'}, {duplicates} duplicate event ids"),
    ))
    shape_bad = []
    for (session, branch), recs in records.items():
        want = (["SessionCreated", "PhaseEntered"] if branch == "main" else ["BranchCreated"])
        if [r.kind_type for r in recs[: len(want)]] != want:
            shape_bad.append(f"{session}/{branch}")
    checks.append(Check(
        not shape_bad,
        "aiOS shape: SessionCreated + PhaseEntered{sleep} open every session, "
        "BranchCreated opens every branch" if not shape_bad
        else f"aiOS shape broken on {', '.join(shape_bad)}",
    ))

    acked = [a for i in range(1, args.workers + 1) for a in _read_jsonl(work / f"acked-{i}.jsonl")]
    lost = [a for a in acked
            if where.get(a["event_id"]) != (a["session_id"], a["branch_id"], a["sequence"])]
    checks.append(Check(
        not lost and len(acked) == total,
        f"{len(acked)} acknowledged events, all in the files at their sequence"
        if not lost and len(acked) == total
        else f"{len(lost)} acknowledged events missing or misplaced; "
             f"{len(acked)} acked vs {total} stored",
    ))

    seen = list(_read_jsonl(work / "seen.jsonl"))
    counts = collections.Counter(s["event_id"] for s in seen)
    twice = sum(1 for c in counts.values() if c > 1)
    missed = len(set(where) - set(counts))
    foreign = len(set(counts) - set(where))
    checks.append(Check(
        not twice and not missed and not foreign,
        f"the subscriber saw each of the {total} events exactly once"
        if not twice and not missed and not foreign
        else f"subscriber: {missed} missed, {twice} seen more than once, {foreign} unknown",
    ))

    group_check, group_rows = _group_summary(args, work, where)
    if group_check is not None:
        checks.append(group_check)

    report = verify_report(root, sessions)
    checks.append(Check(
        not report.findings,
        "journal verify: no findings" if not report.findings
        else f"journal verify: {len(report.findings)} findings, e.g. {report.findings[0]}",
    ))

    lags = sorted(max(s["seen_at"] - created[s["event_id"]], 0.0) for s in seen
                  if s["event_id"] in created)
    last_seen = max((s["seen_at"] for s in seen), default=last_ack)
    conflicts = sum(s.get("conflicts", 0) for s in stats)
    unknown = sum(s.get("unknown", 0) + s.get("unavailable", 0) for s in stats)
    appended = sum(s.get("appends", 0) for s in stats)
    passed = all(c.ok for c in checks)

    lines = ["", "verification"]
    lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.text}" for c in checks]
    lines += ["", "sessions"]
    width = max(len(s) for s in sessions)
    for session in sessions:
        path = root / "events" / f"{session}.jsonl"
        size = path.stat().st_size if path.exists() else 0
        branches = ", ".join(f"{b} {h}" for b, h in sorted(heads[session].items(),
                                                           key=lambda kv: kv[0] != "main"))
        lines.append(f"  {session:<{width}}  {size:>9,} bytes  {branches}")
    rows = [
        ("workers", f"{args.workers} processes, {len(stats)} reported"),
        ("events", f"{total:,} ({appended:,} acknowledged to workers)"),
        ("sessions", f"{len(sessions)} ({branch_count} branches)"),
        ("conflicts retried", f"{conflicts:,}" + (f" (+{unknown} other retries)" if unknown
                                                  else "")),
        ("appends per second", f"{total / writing:,.0f} over {writing:.1f} s"
         if writing > 0 else "n/a"),
        ("subscriber lag", f"p50 {_ms(_percentile(lags, 50))}, p99 {_ms(_percentile(lags, 99))},"
                           f" max {_ms(lags[-1] if lags else float('nan'))}"
                           " (event created -> seen)"),
        ("final lag", f"{_ms(max(last_seen - last_ack, 0.0))} (last ack -> subscriber caught up)"),
        *group_rows,
        ("result", "PASS" if passed else "FAIL"),
    ]
    lines += ["", "summary"]
    lines += [f"  {name:<20} {value}" for name, value in rows]
    return passed, lines


