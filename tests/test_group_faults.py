"""Worker groups under faults, with real processes and a real Redis (single and Cluster).

Four worker processes in one group and three writer processes over 40 sessions. During the
run one worker is SIGKILLed, one stops itself (SIGSTOP) inside a handler and is continued
after its claim expired, one joins late, Redis loses everything once, and one event is
poison. Then the handlers' start/end logs are checked: every event handled, in order per
(session, branch), never two holders inside one session at once, checkpoints equal to the
heads, every redelivery explained by a fault, the zombie's late ack refused, the poison
event parked and its session gone on. ``JOURNAL_GROUP_FULL=1`` runs a longer trial.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from journal import Journal
from journal._groups.admin import status
from journal._groups.store import GroupStore
from journal.testing import RedisServer

PROCS = Path(__file__).with_name("group_procs.py")
FULL = os.environ.get("JOURNAL_GROUP_FULL") == "1"
CLAIM_MS = 1500
SCAN_S = 0.3
FLUSH_S = 0.2
SESSIONS = [f"s{i:02d}" for i in range(40)]
POISON = "s07/main#5"


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Trial:
    root: Path
    url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)  # fault -> when (time.time())

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, str(PROCS), *args, "--root", str(self.root),
                              "--url", self.url], stderr=subprocess.PIPE)
        self.procs[name] = p
        return p

    def worker(self, name: str, freeze: str = "") -> None:
        self.spawn(name, "worker", "--name", name, "--log", str(self.root.parent / "log"),
                   "--claim-ms", str(CLAIM_MS), "--freeze", freeze)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait(timeout=10)
            if p.stderr:
                p.stderr.close()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def run_trial(t: Trial, journal: Callable[[], Journal], lose_redis: Callable[[], None]) -> None:
    count = 60 if FULL else 25
    freeze = t.root.parent / "freeze-w2"
    for i in range(3):
        t.spawn(f"writer{i}", "writer", "--sessions", ",".join(SESSIONS[i::3]),
                "--count", str(count), "--pause", "0.3" if FULL else "0.25", "--poison", POISON)
    for name in ("w1", "w2", "w3"):
        t.worker(name, freeze=str(freeze) if name == "w2" else "")
    time.sleep(1.0)
    freeze.touch()  # w2 stops itself inside its next handler
    wait(lambda: _state(t.procs["w2"].pid) == "T", 20, "w2 to stop inside a handler")
    t.events["stop"] = time.time()
    time.sleep(0.3)
    os.kill(t.procs["w3"].pid, signal.SIGKILL)
    t.events["kill"] = time.time()
    time.sleep(CLAIM_MS / 1000 * 1.6)
    os.kill(t.procs["w2"].pid, signal.SIGCONT)
    t.events["cont"] = time.time()
    t.worker("w4")  # joins late
    t.events["join"] = time.time()
    time.sleep(0.5)
    lose_redis()
    t.events["restart"] = time.time()
    for i in range(3):
        assert t.procs[f"writer{i}"].wait(timeout=120) == 0
    j = journal()
    try:
        wait(lambda: status(j, "g")["lag"] == 0, 90, "the group to catch up with every head")
        final = status(j, "g")
        heads = {s: j.branches(s) for s in SESSIONS}
    finally:
        j.close()
    for name in ("w1", "w2", "w4"):
        t.procs[name].send_signal(signal.SIGTERM)
    for name in ("w1", "w2", "w4"):
        t.procs[name].wait(timeout=30)
    check(t, heads, final)


def check(t: Trial, heads: dict[str, dict[str, int]], final: dict[str, Any]) -> None:
    lines = [json.loads(x) for x in (t.root.parent / "log").read_text().splitlines()]
    lines.sort(key=lambda x: x["t"])
    store = GroupStore(t.root, "g")
    parked = {(p.session_id, p.branch_id, p.sequence) for p in store.parked()}
    ok_end: dict[tuple[str, str, int], float] = {}
    settled: dict[tuple[str, str, int], float] = {}
    out_of_order = 0
    starts: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    open_: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    intervals: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)
    refused = defaultdict(int)
    # Pair each start with its done and end; a done without an end (SIGKILL in between)
    # counts as handled and acked: the stricter reading for every check below.
    handlings: list[dict[str, Any]] = []
    for x in lines:
        key = (x["s"], x["b"], x["q"], x["w"])
        if x["op"] == "start":
            open_[key] = h = dict(x, done=None, ok=None)
            handlings.append(h)
        elif x["op"] == "done":
            open_[key].update(done=x["t"], nack=x["nack"])
        else:
            open_.pop(key)["ok"] = x["ok"]
    # (by time, starts first: two lines may carry the same time.time(), and the dicts
    # themselves do not compare)
    events = sorted([(h["t"], 0, h) for h in handlings]
                    + [(h["done"], 1, h) for h in handlings if h["done"] is not None],
                    key=lambda e: (e[0], e[1]))
    for when, kind, h in events:
        pos = (h["s"], h["b"], h["q"])
        if kind == 0:
            if h["q"] > 1 and (h["s"], h["b"], h["q"] - 1) not in settled:
                out_of_order += 1
            starts[pos].append(h)
        elif h["ok"] is not False:
            settled.setdefault(pos, when)
            if not h.get("nack"):
                ok_end.setdefault(pos, when)
            intervals[h["s"]].append((h["t"], when, h["w"], h["f"]))
        else:
            refused[h["w"]] += 1
    # every event handled at least once (or parked)
    lost = [(s, b, q) for s, bs in heads.items() for b, h in bs.items() for q in range(1, h + 1)
            if (s, b, q) not in ok_end and (s, b, q) not in parked]
    # never two holders inside one session at once
    concurrent = 0
    for ivs in intervals.values():
        ivs.sort()
        for a, b in itertools.pairwise(ivs):
            if b[0] < a[1] and b[3] != a[3]:
                concurrent += 1
    # every redelivery explained: a fault of its earlier handler, a nack, or the Redis loss
    faulty = {"w2", "w3"}
    unexplained = []
    for pos, ss in starts.items():
        for a, b in itertools.pairwise(ss):
            if a["w"] in faulty or f"{pos[0]}/{pos[1]}#{pos[2]}" == POISON:
                continue
            if a.get("ok") is False:  # its claim had expired (a starved worker): refused
                continue
            if t.events["restart"] - FLUSH_S - 1.0 <= b["t"] and a["t"] <= t.events["restart"] + 1:
                continue
            unexplained.append((pos, a, b))
    # the killed worker's sessions moved on within the documented window
    window = CLAIM_MS / 1000 + SCAN_S + 2.0
    w3_sessions = {x["s"] for x in lines if x["w"] == "w3"}
    moved = {s: min((x["t"] for x in lines if x["s"] == s and x["t"] > t.events["kill"]
                     and x["w"] != "w3"), default=None) for s in w3_sessions}
    # The Redis loss comes 2.9 s after the kill, inside this window: it ends every claim
    # (also the survivors' fresh claims of the dead worker's sessions), so a session that
    # had not moved by then moves within the window after the loss instead.
    restart = t.events["restart"]
    late = {s: m - t.events["kill"] for s, m in moved.items()
            if m is not None and m - t.events["kill"] > window
            and not (restart < m and m - restart <= window)}
    ckpt = {s["session"]: s["checkpoints"] for s in final["sessions"]}
    files = {s: (store.read(s).branches if store.read(s) else {}) for s in heads}  # type: ignore[union-attr]
    poison_s, poison_b, poison_q = POISON.replace("#", "/").split("/")
    print(f"\ngroup trial: {len(ok_end)} events handled, lost {len(lost)}, out of order "
          f"{out_of_order}, concurrent holders {concurrent}, redeliveries "
          f"{sum(len(v) - 1 for v in starts.values())}, unexplained {len(unexplained)}, "
          f"zombie acks refused {refused['w2']}, parked {sorted(parked)}")
    expected = {s: dict(bs) for s, bs in heads.items()}
    failures = []
    if lost:
        failures.append(f"lost {len(lost)} event(s), first {lost[:5]}")
    if out_of_order:
        failures.append(f"{out_of_order} handled out of order")
    if concurrent:
        failures.append(f"{concurrent} overlapping handlings by two claims in one session")
    if unexplained:
        pos, a, b = unexplained[0]
        failures.append(f"{len(unexplained)} unexplained redelivery(ies), first {pos}: "
                        f"{a} then {b}; faults {t.events}")
    if late:
        failures.append(f"killed worker's sessions moved on later than the {window:.1f} s "
                        f"window: { {s: round(d, 2) for s, d in late.items()} } s after the "
                        f"kill (the Redis loss came {restart - t.events['kill']:.2f} s after it)")
    if not refused["w2"]:
        failures.append("the zombie's late ack was not refused")
    if ckpt != expected:
        diff = {s: (ckpt.get(s), expected[s]) for s in expected if ckpt.get(s) != expected[s]}
        failures.append(f"checkpoints (redis/status) != heads for {len(diff)} session(s): "
                        f"{diff} (status lag {final['lag']})")
    if files != ckpt:
        diff = {s: (files.get(s), ckpt.get(s)) for s in ckpt if files.get(s) != ckpt.get(s)}
        failures.append(f"durable checkpoint files != redis after a clean stop: {diff}")
    if (poison_s, poison_b, int(poison_q)) not in parked:
        failures.append(f"the poison event {POISON} was not parked (parked: {sorted(parked)})")
    after = (poison_s, poison_b, int(poison_q) + 1)
    if after not in ok_end:
        poison_lines = [x for x in lines if x["s"] == poison_s and x["b"] == poison_b
                        and x["q"] >= int(poison_q)]
        failures.append(f"the poison's session did not go on: {after} never handled; "
                        f"head {heads[poison_s].get(poison_b)}; log {poison_lines[:12]}")
    assert not failures, "\n".join(failures)

def test_group_faults_single_redis(tmp_path: Path) -> None:
    with RedisServer(dir=tmp_path / "redis") as server:
        t = Trial(tmp_path / "data", server.url)
        try:
            run_trial(t, lambda: Journal(t.root, server.url).open(),
                      lambda: server.restart())
        finally:
            t.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    from tests.cluster import LocalCluster, skip_reason

    if skip_reason():
        pytest.skip(skip_reason() or "")
    c = LocalCluster(tmp_path / "cluster")
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.mark.slow
def test_group_faults_cluster(tmp_path: Path, cluster: Any) -> None:
    def lose_everything() -> None:  # every primary forgets every key and script
        for port in cluster.primary_ports():
            client = cluster.client(port)
            client.flushall()
            client.script_flush()

    t = Trial(tmp_path / "data", cluster.url)
    try:
        run_trial(t, lambda: Journal(t.root, cluster.url).open(), lose_everything)
    finally:
        t.close()
