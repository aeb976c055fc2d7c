"""The journal on a real local Redis Cluster (3 primaries + 3 replicas, ``tests/cluster.py``)
and on Redis Sentinel.

One cluster serves the whole module (starting one takes ~2 s); every test starts from a
healthy cluster with every primary flushed. The tests that kill nodes restart them and wait
for the cluster to be healthy again, so the topology may have changed (a replica promoted)
but never the shape. Every process is killed and reaped in a ``finally``, even when a test
fails. The module skips (with the reason) when the redis-server binary is older than 7.

The URL and settings checks at the end need no server and always run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from journal import (
    AsyncJournal,
    EventRecord,
    InvalidInput,
    Journal,
    JournalError,
    RedisUnavailable,
    SequenceConflict,
)
from journal._io.connect import parse_target
from journal.settings import JournalSettings, redact_url
from tests import backends
from tests.backends import Backend
from tests.cluster import LocalCluster, SentinelSetup, running_sentinel, skip_reason, wait_for
from tests.support import Fleet, Proc, check_history, wait_all

REASON = skip_reason()
WORKER = Path(__file__).with_name("workers.py")


# ----- fixtures ------------------------------------------------------------------------------
# ``cluster`` (one LocalCluster for the whole session) and ``cluster_backend`` are in conftest.


@dataclass
class ClusterBackend(backends.ClusterBackend):
    """The cluster backend, plus helper processes (``tests/sub_helpers.py``) that are killed
    and reaped with it."""

    procs: list[Proc] = field(default_factory=list)

    def helper(self, *args: str) -> Proc:
        proc = Proc(list(args), self.root.parent / f"helper-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        super().close()


@pytest.fixture
def cb(cluster: LocalCluster, tmp_path: Path) -> Iterator[ClusterBackend]:
    cluster.wait_healthy()
    b = ClusterBackend("cluster", tmp_path / "data", url=cluster.url, cluster=cluster,
                       sharded_only=True)
    b.flush()
    try:
        yield b
    finally:
        b.close()


def sessions_on(c: LocalCluster, j: Journal, port: int, count: int, prefix: str) -> list[str]:
    """``count`` session ids whose slot the primary at ``port`` serves."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        session = f"{prefix}{n}"
        n += 1
        if c.primary_of(j.core.keys(session).state) == port:
            out.append(session)
    return out


def shard_subscribers(c: LocalCluster, channel: str) -> int:
    port = c.primary_of(channel)
    return int(c.client(port).execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])


def ev(seq: int, session: str, branch: str = "main", tag: str = "m") -> EventRecord:
    return EventRecord.new(session, branch, seq, {"type": "UserMessage", "content": f"{tag}{seq}"})


def file_lines(b: Backend, session: str) -> list[dict[str, Any]]:
    path = b.root / "events" / f"{session}.jsonl"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ----- where sessions live -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_sessions_spread_over_every_primary(cb: ClusterBackend) -> None:
    c = cb.cluster
    assert c is not None
    j = cb.journal()
    assert j.settings.sharded_pubsub  # forced on by the redis+cluster:// URL
    sessions = [f"agent-{n}" for n in range(12)]
    owner: dict[str, int] = {}
    for s in sessions:
        keys = j.core.keys(s)
        slots = {c.keyslot(k) for k in keys.all}
        assert len(slots) == 1, f"{s}: its keys span slots {slots}"  # the {sid} hash tag
        owner[s] = c.primary_of(keys.state)
    assert set(owner.values()) == set(c.primary_ports()), owner  # all 3 shards are used
    for s in sessions:
        j.append_batch([ev(1, s), ev(2, s)])
        j.append(ev(3, s))
    for s in sessions:
        assert j.head(s) == 3
        assert [r.sequence for r in j.read(s)] == [1, 2, 3]
        # the state is on the session's own primary, and only there
        key = j.core.keys(s).state
        assert c.client(owner[s]).hget(key, "h:main") == "3"
        for port in set(owner.values()) - {owner[s]}:
            with pytest.raises(redis.exceptions.MovedError):
                c.client(port).hget(key, "h:main")
    j.close()

    async def also_async() -> list[int]:
        async with cb.async_journal() as aj:
            for s in sessions:
                await aj.append(ev(4, s))
            return [await aj.head(s) for s in sessions]

    assert asyncio.run(also_async()) == [4] * len(sessions)


# ----- processes -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_four_processes_race_on_two_shards(cb: ClusterBackend) -> None:
    c = cb.cluster
    assert c is not None
    j = cb.journal()
    ports = c.primary_ports()
    race = [sessions_on(c, j, ports[0], 1, "race-a")[0],
            sessions_on(c, j, ports[1], 1, "race-b")[0]]
    j.close()
    fleets = [Fleet(cb, session=s) for s in race]
    fleets[1].spawned = 10  # its workers (and their .acks files) are w11, w12
    try:
        procs = [f.spawn(50) for f in fleets for _ in range(2)]
        wait_all(procs, 50)
        errors = [p.stderr.read() for p in procs if p.stderr]
        assert [p.returncode for p in procs] == [0] * 4, errors
        for f in fleets:
            assert len(f.acked()) == 100
            assert check_history(cb, f.session, f.acked()) == 100
    finally:
        for f in fleets:
            f.close()


@pytest.mark.timeout(60)
def test_gapless_subscriptions_with_writer_processes(cb: ClusterBackend, tmp_path: Path) -> None:
    j = cb.journal()
    session = "live"
    channel = j.core.keys(session).channel
    outs = [tmp_path / "sync.json", tmp_path / "async.json"]
    common = ["--root", str(cb.root), "--url", cb.url or "", "--session", session]
    subs = [cb.helper("subscribe", *common, "--until", "300", "--out", str(out), *extra)
            for out, extra in zip(outs, ([], ["--async"]), strict=True)]
    assert cb.cluster is not None
    wait_for(lambda: shard_subscribers(cb.cluster, channel) >= 2, 20, "SSUBSCRIBE x2")
    writers = [cb.helper("write", *common, "--count", "150", "--tag", f"w{n}") for n in (1, 2)]
    for w in writers:
        w.finish(40)
    for s in subs:
        s.finish(30)
    ids = [r.event_id for r in j.read(session, "main", 1, 400)]
    for out in outs:
        got = json.loads(out.read_text())
        assert got["seqs"] == list(range(1, 301))
        assert got["ids"] == ids
        assert got["stats"]["live_events"] > 0
    j.close()


# ----- failures ------------------------------------------------------------------------------


Writer = tuple[str, subprocess.Popen[bytes], Path, Path]  # session, process, acks, stats


def start_writers(b: ClusterBackend, sessions: list[str], per_session: int, count: int,
                  tag: str, *extra: str) -> list[Writer]:
    """tests/workers.py processes (the aiOS loop; acks and tail-recovery counters)."""
    out = []
    for s in sessions:
        for w in range(per_session):
            name = f"{tag}-{s}-{w}"
            acks, stats = b.root.parent / f"{name}.acks", b.root.parent / f"{name}.stats"
            err = (b.root.parent / f"{name}.err").open("wb")
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), "--root", str(b.root), "--url", b.url or "",
                 "--session", s, "--count", str(count), "--acks", str(acks), "--name", name,
                 "--stats", str(stats), *extra],
                stderr=err)
            err.close()
            out.append((s, proc, acks, stats))
    return out


def writer_errors(writers: list[Writer]) -> str:
    return "\n".join(a.with_suffix(".err").read_text(errors="replace")[-2000:]
                     for _, _, a, _ in writers if a.with_suffix(".err").exists())


def wait_writers(writers: list[Writer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for _, proc, _, _ in writers:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    assert [p.returncode for _, p, _, _ in writers] == [0] * len(writers), \
        writer_errors(writers)


def kill_writers(writers: list[Writer]) -> None:
    for _, proc, _, _ in writers:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def acked_by(writers: list[Writer], session: str) -> list[str]:
    return [line for s, _, a, _ in writers if s == session and a.exists()
            for line in a.read_text().split()]


def phantom_lines(b: ClusterBackend, session: str, acked: list[str]) -> list[str]:
    """Lines in the file that no writer was told about: a writer got SequenceConflict for
    an event that is committed after all. No writer is killed in these tests, so every
    line but check_history's "final" one and the test's own padding should have been
    acknowledged to a writer process."""
    known = set(acked)
    return [rec["kind"]["content"] for rec in file_lines(b, session)
            if rec["event_id"] not in known and rec["kind"]["content"] != "final"
            and not rec["kind"]["content"].startswith("pad")]


@pytest.fixture
def recoveries(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the tail recoveries of this process that rolled lines forward."""
    from journal._storage.session_file import SessionStore

    stats = {"recoveries": 0, "rolled_forward": 0}
    original = SessionStore.scan_tail

    def counted(self: SessionStore, *args: Any, **kwargs: Any) -> Any:
        found = original(self, *args, **kwargs)
        if found.kept:
            stats["recoveries"] += 1
            stats["rolled_forward"] += len(found.kept)
        return found

    monkeypatch.setattr(SessionStore, "scan_tail", counted)
    return stats


def cut_replication(c: LocalCluster, primary: int, replica: int) -> None:
    """From now on the primary's writes never reach the replica: its replication link is
    killed, and a wrong masterauth keeps it from syncing again (the primary has no
    password, so the replica's AUTH fails). The cluster bus stays up, so the replica
    still takes over when the primary dies."""
    c.client(replica).config_set("masterauth", "not-the-password")
    assert int(c.client(primary).execute_command("CLIENT", "KILL", "TYPE", "replica")) >= 1


def heads_on(port: int, keys: dict[str, str], replica: bool = False) -> dict[str, int]:
    client = redis.Redis(port=port, single_connection_client=True, decode_responses=True,
                         socket_timeout=2)
    try:
        if replica:
            client.execute_command("READONLY")
        return {s: int(client.hget(k, "h:main") or 0) for s, k in keys.items()}
    finally:
        client.close()


def fail_over(c: LocalCluster, victim: int, replica: int) -> float:
    """SIGKILL ``victim``, wait for ``replica`` to take over, bring the victim back (empty:
    it rejoins as a replica). Returns the seconds from the kill to the takeover."""
    c.kill(victim)
    killed_at = time.monotonic()
    assert c.wait_promoted(victim, 20) == replica
    took = time.monotonic() - killed_at
    c.client(replica).config_set("masterauth", "")
    c.restart(victim)
    return took


PAD_TO = 4000  # the hot session is padded to this many events, so subscribers know the end


@pytest.mark.timeout(90)
def test_a_primary_is_killed_while_writers_and_subscribers_run(
    cb: ClusterBackend, tmp_path: Path, recoveries: dict[str, int], record_property: Any
) -> None:
    """SIGKILL a primary mid-run; its replica takes over; writers go on. Nothing is lost,
    no event is stored twice, and the subscribers see exactly the committed sequence.

    The replica is made to miss the primary's last commits first (``cut_replication``), so
    the promoted replica holds heads that went stale, as asynchronous replication allows.
    The files are the truth: the first writer (or reader) on the new primary finds the file
    longer than the stale committed length and recovers the tail, rolling the acknowledged
    lines forward instead of writing over them. The gap is measured on both nodes before
    the kill, and the recoveries are counted."""
    c = cb.cluster
    assert c is not None
    j = cb.journal()
    victim = c.primary_ports()[0]
    replica = c.replicas_of(victim)[0]
    hot = sessions_on(c, j, victim, 2, "hot")
    calm = sessions_on(c, j, c.primary_ports()[1], 1, "calm")
    common = ["--root", str(cb.root), "--url", cb.url or "", "--session", hot[0]]
    outs = [tmp_path / "sync.json", tmp_path / "async.json"]
    subs = [cb.helper("subscribe", *common, "--until", str(PAD_TO), "--out", str(out), *extra)
            for out, extra in zip(outs, ([], ["--async"]), strict=True)]
    wait_for(lambda: shard_subscribers(c, j.core.keys(hot[0]).channel) >= 2, 20, "SSUBSCRIBE")
    writers = start_writers(cb, hot + calm, 2, 10**6, "w", "--duration", "6")
    try:
        def head(s: str) -> int:
            try:
                return j.head(s)
            except JournalError:
                return 0

        wait_for(lambda: min(head(s) for s in hot) >= 50, 30, "50 events in each hot session")
        cut_replication(c, victim, replica)
        time.sleep(0.3)  # the writers commit on the primary only
        keys = {s: j.core.keys(s).state for s in hot}
        stale = {s: (before, after) for s, before, after in zip(
            hot, heads_on(victim, keys).values(), heads_on(replica, keys, True).values(),
            strict=True)}
        failover_s = fail_over(c, victim, replica)
        wait_writers(writers, 60)
        assert head(hot[0]) < PAD_TO - 100, "the writers were faster than PAD_TO allows"
        while (top := j.head(hot[0])) < PAD_TO:
            j.append_batch([ev(n, hot[0], tag="pad")
                            for n in range(top + 1, min(top + 200, PAD_TO) + 1)])
        for sub in subs:
            sub.finish(30)
    finally:
        kill_writers(writers)
    counters = [json.loads(st.read_text()) for *_, st in writers if st.exists()]
    rolled = sum(x["rolled_forward"] for x in counters) + recoveries["rolled_forward"]
    phantoms = {s: phantom_lines(cb, s, acked_by(writers, s)) for s in hot + calm}
    report = {"stale_heads(old primary, promoted replica)": stale,
              "failover_s": round(failover_s, 2),
              "events": {s: j.head(s) for s in hot + calm},
              "recoveries": sum(x["recoveries"] for x in counters) + recoveries["recoveries"],
              "rolled_forward": rolled,
              "conflicted_but_committed": {s: len(p) for s, p in phantoms.items()}}
    record_property("failover", report)
    print(f"\nfailover: {report}")
    for s in hot + calm:
        check_history(cb, s, acked_by(writers, s))  # nothing lost, nothing twice, contiguous
    ids = [rec["event_id"] for rec in file_lines(cb, hot[0])][:PAD_TO]
    for out in outs:
        got = json.loads(out.read_text())
        assert got["seqs"] == list(range(1, PAD_TO + 1))
        assert got["ids"] == ids
    # The promoted replica really missed committed, acknowledged events; check_history
    # found every acknowledged event at its sequence, so they were rolled forward from the
    # file, not written over. (``rolled_forward`` counts the recoveries of the writers and
    # of this process; since readers roll forward too, a subscriber may have done some.)
    missed = sum(max(before - after, 0) for before, after in stale.values())
    assert missed > 0, stale
    j.close()
    c.wait_healthy()


def stale_state(b: Backend, j: Journal, session: str, keep: int) -> None:
    """Make Redis's state of ``session`` what a promoted replica that missed the last
    commits holds: heads and committed length of the first ``keep`` lines."""
    lines = (b.root / "events" / f"{session}.jsonl").read_bytes().splitlines(keepends=True)
    client = redis.Redis.from_url(b.url or "")
    key = j.core.keys(session).state
    client.hset(key, mapping={"len": sum(map(len, lines[:keep])), "h:main": keep})
    client.delete(j.core.keys(session).lease)
    client.close()


@pytest.mark.timeout(30)
def test_a_stale_head_never_turns_a_committed_retry_into_a_conflict(
    real_backend: Backend,
) -> None:
    """After a failover to a replica that missed commits 4..5, retrying event 5 (the
    outcome-unknown rule) must resolve as stored. (It once raised SequenceConflict, and an
    aiOS writer that then retried the same event id at head + 1 stored it twice.)"""
    if REASON:
        pytest.skip(REASON)
    j = real_backend.journal(lease_hold_ms=0)
    stored = [j.append(ev(n, "s1")) for n in range(1, 6)]
    stale_state(real_backend, j, "s1", 3)
    assert j.append(stored[4]) == stored[4]
    j.close()


@pytest.mark.timeout(30)
def test_a_stale_head_does_not_hide_acknowledged_events(real_backend: Backend) -> None:
    """After a failover to a replica that missed commits 4..5 and with no writer coming
    back to the session, head and read still show 5 events (readers roll the tail
    forward when nobody holds the lease)."""
    if REASON:
        pytest.skip(REASON)
    j = real_backend.journal(lease_hold_ms=0)
    for n in range(1, 6):
        j.append(ev(n, "s1"))
    stale_state(real_backend, j, "s1", 3)
    assert j.head("s1") == 5 and len(j.read("s1")) == 5
    j.close()


@pytest.mark.timeout(90)
def test_a_whole_shard_restarts_empty(cb: ClusterBackend, tmp_path: Path) -> None:
    """Primary and replica of one shard are SIGKILLed together and come back empty (same
    node ids from nodes.conf, no data). Meanwhile the cluster is down for everyone
    (cluster-require-full-coverage). Writers retry; heads are rebuilt from the files."""
    c = cb.cluster
    assert c is not None
    j = cb.journal()
    victim = c.primary_ports()[1]
    replica = c.replicas_of(victim)[0]
    hit = sessions_on(c, j, victim, 1, "lost")
    spared = sessions_on(c, j, c.primary_ports()[2], 1, "kept")
    common = ["--root", str(cb.root), "--url", cb.url or "", "--session", hit[0]]
    out = tmp_path / "sub.json"
    sub = cb.helper("subscribe", *common, "--until", "200", "--out", str(out))
    wait_for(lambda: shard_subscribers(c, j.core.keys(hit[0]).channel) >= 1, 20, "SSUBSCRIBE")
    writers = start_writers(cb, hit + spared, 2, 100, "r")
    try:
        wait_for(lambda: j.head(hit[0]) >= 50, 30, "50 events")
        c.kill(victim)
        c.kill(replica)
        time.sleep(1.5)  # long enough for the others to mark the shard failed
        c.restart(victim)
        c.restart(replica)
        c.wait_healthy(30)
        wait_writers(writers, 60)
        sub.finish(30)
    finally:
        kill_writers(writers)
    for s in hit + spared:
        acked = acked_by(writers, s)
        assert len(acked) == 200
        assert check_history(cb, s, acked) == 200
    got = json.loads(out.read_text())
    assert got["seqs"] == list(range(1, 201))
    assert got["ids"] == [rec["event_id"] for rec in file_lines(cb, hit[0])][:200]
    assert got["stats"]["connects"] >= 2


def migrate_slot(c: LocalCluster, slot: int, source: int, target: int) -> None:
    """Move one slot with its keys, the way redis-cli --cluster reshard does."""
    src, dst = c.node(source).node_id, c.node(target).node_id
    c.client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src)
    c.client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst)
    while keys := c.client(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        c.client(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000,
                                         "KEYS", *keys)
    for port in c.primary_ports():
        c.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst)


@pytest.mark.timeout(60)
def test_subscriptions_follow_a_slot_migration(cb: ClusterBackend) -> None:
    """The session's slot moves to another primary while a writer appends and three
    subscriptions follow: a blocking and an asyncio one that listen before (the old owner
    sends them ``sunsubscribe``), and one whose client learnt the slot map before the move
    but subscribes after it (its SSUBSCRIBE gets MOVED). All see every event once, in
    order, and go on live on the new owner."""
    c = cb.cluster
    assert c is not None
    total = 300
    j = cb.journal()
    stale_map = cb.journal()  # opened now: its slot map predates the migration
    j.append(ev(1, "mig"))
    results: dict[str, list[int]] = {}
    stats: dict[str, Any] = {}

    def follow_sync(name: str, journal: Journal) -> None:
        sub = journal.subscribe("mig", idle_s=0.5, health_timeout_s=2.0)
        results[name] = []
        for record in sub:
            results[name].append(record.sequence)
            if record.sequence >= total:
                break
        stats[name] = sub.stats  # type: ignore[attr-defined]

    async def follow_async() -> None:
        async with cb.async_journal() as aj:
            sub = aj.subscribe("mig", idle_s=0.5, health_timeout_s=2.0)
            results["async"] = []
            async for record in sub:
                results["async"].append(record.sequence)
                if record.sequence >= total:
                    break
            stats["async"] = sub.stats  # type: ignore[attr-defined]

    threads = [threading.Thread(target=follow_sync, args=("sync", j)),
               threading.Thread(target=lambda: asyncio.run(follow_async()))]
    for t in threads:
        t.start()
    channel = j.core.keys("mig").channel
    wait_for(lambda: shard_subscribers(c, channel) >= 2, 20, "SSUBSCRIBE x2")
    writer = cb.journal()
    for n in range(2, 101):
        writer.append(ev(n, "mig"))
    key = j.core.keys("mig").state
    source = c.primary_of(key)
    target = next(p for p in c.primary_ports() if p != source)
    migrate_slot(c, c.keyslot(key), source, target)
    assert c.primary_of(key) == target
    late = threading.Thread(target=follow_sync, args=("late", stale_map))
    late.start()
    for n in range(101, total + 1):
        writer.append(ev(n, "mig"))
        time.sleep(0.002)
    for t in [*threads, late]:
        t.join(30)
    assert not any(t.is_alive() for t in [*threads, late])
    for name in ("sync", "async", "late"):
        assert results[name] == list(range(1, total + 1)), name
    for name in ("sync", "async"):
        assert stats[name].connects >= 2, stats[name]  # listened again, on the new owner
        assert stats[name].live_events > total // 2, stats[name]
    assert stats["late"].disconnects >= 1, stats["late"]  # the MOVED, then the new owner
    for journal in (j, stale_map, writer):
        journal.close()


@pytest.mark.timeout(120)
def test_the_firehose_gets_every_event_once_across_sessions_slots_and_a_failover(
    cb: ClusterBackend, tmp_path: Path
) -> None:
    """The firehose on a cluster (no patterns: it discovers the sessions from the files and
    SSUBSCRIBEs each one on its primary). Writer processes on sessions of every shard, one
    session created after the firehose started, and a primary SIGKILLed mid-run. Two
    firehose processes (blocking and asyncio) get every event committed after they started
    exactly once, in order per (session, branch), and nothing of another prefix."""
    c = cb.cluster
    assert c is not None
    j = cb.journal()
    ports = c.primary_ports()
    victim = ports[0]
    replica = c.replicas_of(victim)[0]
    old = [s for port in ports for s in sessions_on(c, j, port, 2, f"fh-{port}-")]
    for s in old:
        j.append_batch([ev(1, s), ev(2, s)])  # before the firehose: not "now"
    j.append(ev(1, "other"))
    new = sessions_on(c, j, victim, 1, "fh-new-")[0]  # on the shard that fails over
    count = 60
    total = count * (len(old) + 1)
    outs = [tmp_path / "fh-sync.json", tmp_path / "fh-async.json"]
    common = ["--root", str(cb.root), "--url", cb.url or "", "--session", "fh-",
              "--total", str(total)]
    hoses = [cb.helper("firehose", *common, "--out", str(out), *extra)
             for out, extra in zip(outs, ([], ["--async"]), strict=True)]
    for hose in hoses:
        hose.expect("started", 30)
    for s in old:  # one connection per primary, one channel per session
        assert shard_subscribers(c, j.core.keys(s).channel) == 2, s
    writers = [cb.helper("write", "--root", str(cb.root), "--url", cb.url or "",
                         "--session", s, "--count", str(count), "--pace", "0.02",
                         "--tag", s) for s in [*old, new]]

    def head(s: str) -> int:
        try:
            return j.head(s)
        except JournalError:
            return 0

    wait_for(lambda: head(old[0]) >= 22, 30, "a third of the events")
    failover_s = fail_over(c, victim, replica)
    for w in writers:
        w.finish(60)
    for hose in hoses:
        hose.finish(30)
    expected = {f"{s}/main": ([r.event_id for r in j.read(s, "main", 3, 1000)])
                for s in old}
    expected[f"{new}/main"] = [r.event_id for r in j.read(new, "main", 1, 1000)]
    assert all(len(ids) == count for ids in expected.values()), expected
    for out in outs:
        got = json.loads(out.read_text())
        assert {k: [i for _, i in v] for k, v in got["got"].items()} == expected, out.name
        assert got["stats"]["disconnects"] >= 1, got["stats"]  # the victim's connection
    print(f"\nfirehose failover: takeover {failover_s:.2f} s, "
          f"stats {[json.loads(o.read_text())['stats'] for o in outs]}")
    j.close()
    c.wait_healthy()


# ----- Sentinel ------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A sentinel of this test's own: the test kills its primary."""
    if REASON:
        pytest.skip(REASON)
    with running_sentinel(tmp_path / "sentinel") as setup:
        yield setup


@pytest.mark.timeout(60)
def test_sentinel_failover_loses_nothing(sentinel: SentinelSetup, tmp_path: Path) -> None:
    """The master is SIGKILLed; the sentinel promotes the replica; the journal (through a
    redis+sentinel:// URL) follows it. Nothing acknowledged is lost, nothing is stored
    twice, and a subscriber sees the committed sequence exactly once."""
    root = tmp_path / "data"
    got: list[EventRecord] = []

    def follow() -> None:
        with Journal(root, sentinel.url, socket_timeout_s=2.0) as reader:
            for record in reader.subscribe("s1", idle_s=0.2, health_timeout_s=2.0):
                got.append(record)
                if record.kind["content"].startswith("end"):
                    break

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    j = Journal(root, sentinel.url, socket_timeout_s=2.0, lease_ms=1000)
    acked: list[str] = []
    killed = False
    while len(acked) < 120:  # the workers.py loop: head + 1, retry the same record
        if len(acked) == 60 and not killed:
            sentinel.master.kill()
            killed = True
        try:
            record = ev(j.head("s1") + 1, "s1")
        except JournalError:
            time.sleep(0.05)
            continue
        while True:
            try:
                acked.append(j.append(record).event_id)
                break
            except SequenceConflict:
                break
            except JournalError:
                time.sleep(0.05)
    assert sentinel.master_port() == sentinel.replica.port
    while True:  # the last event: the subscriber stops there
        try:
            j.append(ev(j.head("s1") + 1, "s1", tag="end"))
            break
        except SequenceConflict:
            continue
    lines = [r.event_id for r in j.read("s1", "main", 1, 1000)]
    thread.join(30)
    assert not thread.is_alive()
    assert [r.sequence for r in got] == list(range(1, len(lines) + 1))
    assert [r.event_id for r in got] == lines
    assert len(set(lines)) == len(lines)
    assert not set(acked) - set(lines)
    j.close()


# ----- URL forms and settings (no server needed) ---------------------------------------------


def test_url_forms() -> None:
    t = parse_target("redis+cluster://u:pw@h1:7000,h2:7001,[::1]:7002/0?socket_timeout=3")
    assert (t.mode, t.seeds) == ("cluster", (("h1", 7000), ("h2", 7001), ("::1", 7002)))
    assert t.url == "redis://u:pw@h1:7000?socket_timeout=3"
    assert parse_target("rediss+cluster://h").url == "rediss://h:6379"
    assert parse_target("redis://h:1", cluster=True).mode == "cluster"
    assert parse_target("redis://h:1/3").mode == "single"
    s = parse_target("redis+sentinel://:pw@s1,s2:5000/mymaster/2?sentinel_password=x")
    assert (s.mode, s.service, s.seeds) == ("sentinel", "mymaster", (("s1", 26379), ("s2", 5000)))
    assert s.url == "redis://:pw@s1:26379/2" and s.sentinel_auth == {"sentinel_password": "x"}
    for bad in ("redis+cluster://h/3", "unix:///x.sock", "redis+sentinel://h", "memcached://h",
                "redis+cluster://h:99999"):
        with pytest.raises(InvalidInput):
            parse_target(bad, cluster=bad.startswith("unix"))
    with pytest.raises(InvalidInput):
        parse_target("redis+sentinel://h/m", cluster=True)


def test_cluster_mode_forces_sharded_pubsub() -> None:
    assert JournalSettings(redis_url="redis+cluster://h:1").sharded_pubsub
    assert JournalSettings(cluster=True, redis_url="redis://h:1").sharded_pubsub
    assert not JournalSettings(redis_url="redis://h:1").sharded_pubsub
    with pytest.raises(ValueError, match="sharded_pubsub"):
        JournalSettings(cluster=True, sharded_pubsub=False)
    with pytest.raises(InvalidInput, match="sharded_pubsub"):
        Journal("x", redis_client=redis.cluster.RedisCluster.__new__(redis.cluster.RedisCluster))\
            .open()


def test_cluster_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_CLUSTER", "1")
    monkeypatch.setenv("JOURNAL_REDIS_URL", "redis://h:1")
    settings = JournalSettings()
    assert settings.cluster and settings.sharded_pubsub and settings.cluster_mode()


def test_passwords_in_cluster_and_sentinel_urls_never_show() -> None:
    assert redact_url("redis+cluster://u:s3cret@h1:1,h2:2") == "redis+cluster://u:***@h1:1,h2:2"
    shown = redact_url("redis+sentinel://:s3cret@s1/m?sentinel_password=s3cret&x=1")
    assert "s3cret" not in shown and shown.endswith("sentinel_password=***&x=1")
    j = Journal("x", "redis+cluster://:s3cret@127.0.0.1:1")
    assert "s3cret" not in repr(j)
    with pytest.raises(JournalError) as info:  # nothing listens there
        j.open()
    assert "s3cret" not in str(info.value)


async def test_an_unreachable_cluster_is_redis_unavailable() -> None:
    aj = AsyncJournal("x", "redis+cluster://127.0.0.1:1")
    with pytest.raises(RedisUnavailable):
        await aj.open()  # not a raw RedisClusterException
    await aj.close()
    with pytest.raises(RedisUnavailable):
        Journal("x", "redis+cluster://127.0.0.1:1,127.0.0.1:2").open()

