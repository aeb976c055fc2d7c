"""Helpers of the HTTP tests: a real `journal serve` process against a private
redis-server, writer processes, and a small raw-socket SSE client (cheap enough to open
hundreds of streams from one event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from journal.testing import RedisServer

WRITER = Path(__file__).with_name("http_writer.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reap(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@dataclass
class Gateway:
    """`journal serve` on a free port, with its own redis-server; always reaped."""

    tmp: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    writers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.tmp / "data"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self.redis = RedisServer(dir=self.tmp / "redis").start()
        self.port = free_port()
        env = {**os.environ, **self.env}
        env.pop("JOURNAL_REDIS_URL", None)
        with open(self.tmp / "serve.log", "wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "journal", "serve", "--root", str(self.root),
                 "--redis-url", self.redis.url, "--port", str(self.port), *self.args],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"journal serve exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"journal serve did not answer: {self.log()}")

    def log(self) -> str:
        path = self.tmp / "serve.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10, **kwargs)

    def writer(self, session: str, count: int, name: str, pause: float = 0.0,
               pad: int = 0) -> tuple[subprocess.Popen[bytes], Path]:
        assert self.redis is not None
        acks = self.tmp / f"{name}.acks"
        with open(self.tmp / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WRITER), "--root", str(self.root), "--url", self.redis.url,
                 "--session", session, "--count", str(count), "--acks", str(acks),
                 "--name", name, "--pause", str(pause), "--pad", str(pad)],
                stderr=err,
            )
        self.writers.append(proc)
        return proc, acks

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def pubsub_clients(self) -> int:
        import redis

        assert self.redis is not None
        with redis.Redis.from_url(self.redis.url) as r:
            return sum(1 for c in r.client_list() if c.get("flags", "").find("P") >= 0
                       or int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0)

    def close(self) -> None:
        for w in self.writers:
            reap(w)
        if self.proc is not None:
            reap(self.proc)
        if self.redis is not None:
            self.redis.close()


def file_state(root: Path) -> dict[str, int]:
    """Every file under the root with its size: "nothing was written" compares two."""
    return {str(p.relative_to(root)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and "redis" not in p.parts}


def parse_frames(text: str) -> list[dict[str, str]]:
    """SSE frames as dicts (id, event, data, retry, comment); comments kept as ':'."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame[":"] = line[1:].strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                frame[key] = value[1:] if value.startswith(" ") else value
        out.append(frame)
    return out


class SseClient:
    """One SSE stream over a raw socket (HTTP/1.0, so the body is not chunked)."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.port, self.path, self.headers = port, path, headers or {}
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.events: list[tuple[int, float]] = []  # (sequence, wall time received)
        self.frames: list[dict[str, str]] = []
        self._buf = b""
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.writer.write(f"GET {self.path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                self.response_headers[k.strip().lower()] = v.strip()

    async def read_until(self, predicate: Any, timeout: float) -> None:
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.path}: {len(self.events)} events after {timeout}s")
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            if not chunk:
                raise EOFError(f"{self.path}: stream ended after {len(self.events)} events")
            now = time.time()
            self._buf = (self._buf + chunk).replace(b"\r\n", b"\n")
            while b"\n\n" in self._buf:
                block, self._buf = self._buf.split(b"\n\n", 1)
                for frame in parse_frames(block.decode() + "\n\n"):
                    self.frames.append(frame)
                    if frame.get("event") == "kernel.event":
                        self.events.append((json.loads(frame["data"])["sequence"], now))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None
