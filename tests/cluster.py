"""A real local Redis Cluster for tests: 3 primaries + 3 replicas on loopback.

Each node is a :class:`journal.testing.RedisServer` (the Debian ``redis-server`` 7, or
whatever :func:`find_redis_server` finds) with ``--cluster-enabled yes``, its own directory
(for ``nodes.conf``), no persistence, and a node timeout of 1 s so a failover takes a few
seconds. The cluster is formed by hand with CLUSTER SET-CONFIG-EPOCH / ADDSLOTSRANGE / MEET
/ REPLICATE (no ``redis-cli`` needed): node ``i`` (``i < primaries``) serves an equal share
of the 16384 slots and node ``primaries + i`` replicates it.

Every process is killed and reaped by :meth:`LocalCluster.close`, which the fixtures call in
a ``finally``; a node handle dropped without it is still reaped by ``RedisServer``'s
finalizer.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from journal.server._process import _free_port, find_redis_server, redis_server_version
from journal.testing import RedisServer

SLOTS = 16384


def skip_reason() -> str | None:
    """Why a local cluster cannot run here, or None when it can."""
    try:
        binary = find_redis_server()
        version = redis_server_version(binary)
    except Exception as exc:  # no binary, or it does not run
        return f"no usable redis-server: {exc}"
    if version < (7, 0, 0):
        return (f"{binary} is Redis {'.'.join(map(str, version))}: sharded pub/sub and "
                "the cluster tests need Redis >= 7")
    return None


@dataclass
class Node:
    index: int
    port: int
    bus_port: int
    server: RedisServer
    node_id: str = ""

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


class LocalCluster:
    def __init__(self, base: Path, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.base = base
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = []
        self._clients: dict[int, redis.Redis] = {}

    # ----- addresses ---------------------------------------------------------------------

    @property
    def seeds(self) -> str:
        return ",".join(n.name for n in self.nodes)

    @property
    def url(self) -> str:
        """The journal's URL form for this cluster (every node is a seed)."""
        return f"redis+cluster://{self.seeds}"

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client on one node, for admin commands."""
        client = self._clients.get(port)
        if client is None:
            client = self._clients[port] = redis.Redis(
                host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2,
                decode_responses=True,
            )
        return client

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.server.running]

    def any_client(self) -> redis.Redis:
        """A client on a live node that answers."""
        for n in self.live():
            try:
                client = self.client(n.port)
                client.ping()
                return client
            except redis.RedisError:
                continue
        raise AssertionError("no node of the cluster answers")

    # ----- life cycle ----------------------------------------------------------------------

    def _server(self, index: int, port: int, bus: int) -> RedisServer:
        return RedisServer(
            port=port, dir=self.base / f"node-{index}",
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--cluster-port", str(bus), "--repl-diskless-sync-delay", "0",
                        "--repl-ping-replica-period", "1"],
        )

    def start(self, timeout: float = 30.0) -> LocalCluster:
        count = self.primaries * (1 + self.replicas)
        for index in range(count):
            for attempt in range(3):
                port, bus = _free_port(), _free_port()
                server = self._server(index, port, bus)
                try:
                    server.start()
                    break
                except Exception:
                    server.close()
                    if attempt == 2:
                        raise
            self.nodes.append(Node(index, port, bus, server))
        for n in self.nodes:
            n.node_id = self.client(n.port).execute_command("CLUSTER", "MYID")
        share = SLOTS // self.primaries
        for i in range(self.primaries):
            c = self.client(self.nodes[i].port)
            c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            last = SLOTS - 1 if i == self.primaries - 1 else (i + 1) * share - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        first = self.nodes[0]
        for n in self.nodes[1:]:
            self.client(n.port).execute_command("CLUSTER", "MEET", "127.0.0.1", first.port,
                                                first.bus_port)
        wait_for(lambda: all(self._info(n.port)["cluster_known_nodes"] == str(count)
                             for n in self.nodes), timeout, "every node to know every node")
        for r in range(self.replicas):
            for i in range(self.primaries):
                replica = self.nodes[self.primaries * (r + 1) + i]
                self.client(replica.port).execute_command(
                    "CLUSTER", "REPLICATE", self.nodes[i].node_id)
        self.wait_healthy(timeout)
        return self

    def _info(self, port: int) -> dict[str, str]:
        text = self.client(port).execute_command("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def healthy(self) -> bool:
        """Every live node: cluster_state ok, all slots served; every live replica synced;
        and every live node agrees on who serves each slot."""
        maps = []
        for n in self.live():
            info = self._info(n.port)
            if info["cluster_state"] != "ok" or info["cluster_slots_ok"] != str(SLOTS):
                return False
            repl = self.client(n.port).info("replication")
            if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                return False
            maps.append(self.slot_map(n.port))
        if not maps or any(m != maps[0] for m in maps):
            return False
        # every live node that serves no slot must be a replica that its primary lists
        listed = {r for _, _, _, rs in maps[0] for r in rs} | {p for _, _, p, _ in maps[0]}
        return {n.port for n in self.live()} <= listed

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for(self.healthy, timeout, "cluster_state:ok on every node, replicas in sync")

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.server.kill()  # SIGKILL and reap: nothing to save
            with contextlib.suppress(Exception):
                n.server.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- topology ------------------------------------------------------------------------

    def slot_map(self, port: int | None = None) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, primary port, replica ports) from CLUSTER SLOTS."""
        client = self.client(port) if port is not None else self.any_client()
        out = []
        for entry in client.execute_command("CLUSTER", "SLOTS"):
            start, end, primary, *replicas = entry
            out.append((int(start), int(end), int(primary[1]), [int(r[1]) for r in replicas]))
        return sorted(out)

    def keyslot(self, key: str) -> int:
        return int(self.any_client().execute_command("CLUSTER", "KEYSLOT", key))

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot (CLUSTER KEYSLOT + CLUSTER SLOTS)."""
        slot = self.keyslot(key)
        for start, end, primary, _ in self.slot_map():
            if start <= slot <= end:
                return primary
        raise AssertionError(f"slot {slot} is not served")

    def primary_ports(self) -> list[int]:
        return sorted({p for _, _, p, _ in self.slot_map()})

    def replicas_of(self, primary: int) -> list[int]:
        return sorted({r for _, _, p, rs in self.slot_map() if p == primary for r in rs})

    # ----- faults --------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node and reap it."""
        self.node(port).server.kill()
        client = self._clients.pop(port, None)
        if client is not None:
            client.close()

    def signal(self, port: int, sig: signal.Signals) -> None:
        pid = self.node(port).server.pid
        assert pid is not None
        import os

        os.kill(pid, sig)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port, empty (no persistence) but with its
        ``nodes.conf``: it rejoins under its old node id (a demoted primary as a replica)."""
        n = self.node(port)
        n.server.start()

    def wait_promoted(self, old_primary: int, timeout: float = 20.0) -> int:
        """Wait until a replica of ``old_primary`` serves its slots; return its port."""
        slots = [(s, e) for s, e, p, _ in self.slot_map() if p == old_primary]
        assert slots, f"{old_primary} serves no slot"
        result: list[int] = []

        def promoted() -> bool:
            for n in self.live():
                owners = {(s, e): p for s, e, p, _ in self.slot_map(n.port)}
                if any(owners.get(se) in (None, old_primary) for se in slots):
                    return False
                if self._info(n.port)["cluster_state"] != "ok":
                    return False
            result[:] = [owners[slots[0]]]
            return True

        wait_for(promoted, timeout, f"a replica of {old_primary} to take over", step=0.1)
        return result[0]


# ----- Sentinel ------------------------------------------------------------------------------


@dataclass
class SentinelSetup:
    master: RedisServer
    replica: RedisServer
    sentinel: subprocess.Popen[bytes]
    sentinel_port: int
    name: str = "journal"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.name}"

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_port, decode_responses=True, socket_timeout=2)
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
            return int(port)
        finally:
            client.close()


@contextlib.contextmanager
def running_sentinel(base: Path) -> Iterator[SentinelSetup]:
    """A primary, its replica and one sentinel watching them (quorum 1, 1 s down-after);
    every process is killed and reaped on exit."""
    master = RedisServer(dir=base / "master").start()
    replica: RedisServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        assert master.port is not None
        replica = RedisServer(dir=base / "replica", extra_args=[
            "--replicaof", "127.0.0.1", str(master.port)]).start()
        port = _free_port()
        conf = base / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {base}\n"
            f"sentinel monitor journal 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds journal 1000\n"
            "sentinel failover-timeout journal 5000\n")
        log = (base / "sentinel.log").open("wb")
        proc = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        setup = SentinelSetup(master, replica, proc, port)
        wait_for(lambda: setup.master_port() == master.port, 15, "the sentinel to see the master")
        m = redis.Redis(port=master.port, decode_responses=True)
        wait_for(lambda: m.info("replication")["connected_slaves"] == 1, 15, "the replica")
        m.close()
        yield setup
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        if replica is not None:
            replica.close()
        master.close()


