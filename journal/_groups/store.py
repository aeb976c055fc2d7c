"""The durable side of a group, under ``<root>/groups/<group>/``: checkpoints and parked events.

Redis only caches checkpoints; these files are what a Redis restarted empty is seeded from.

``ckpt/<session>.json`` holds ``{"fence": F, "branches": {branch: sequence}}``. It is replaced
atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive
``flock`` of ``ckpt/<session>.lock``, and only by a writer whose fence is at least the one in
the file. A claim records its fence here before its first delivery, so every fence Redis
hands out later (seeded from the file after a restart) is higher than any fence a zombie
could still hold, and a zombie's late write is refused by the file as it is by the Lua check.

``parked/<session>.jsonl`` is append-only (one fsynced line per change): a parked event with
its error (or a halt of its session, with ``on_poison="halt"``), a request to replay it, the
replay's outcome, and the resumption of a halted session.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journal._model.ids import validate_id
from journal._storage.durable import write_durably
from journal.errors import StorageError


@dataclass(slots=True)
class Checkpoint:
    fence: int = 0
    branches: dict[str, int] = field(default_factory=dict)
    token: str = ""  # the claim that wrote it: two claims never share a fence and a token


class GroupStore:
    def __init__(self, root: Path, group: str, max_id_length: int = 128) -> None:
        self.group = validate_id(group, "group", max_id_length)
        self.max_id_length = max_id_length
        self.dir = Path(root) / "groups" / group

    # ----- checkpoints --------------------------------------------------------------------

    def _ckpt(self, session_id: str) -> Path:
        validate_id(session_id, "session_id", self.max_id_length)
        return self.dir / "ckpt" / f"{session_id}.json"

    def exists(self) -> bool:
        return (self.dir / "ckpt").is_dir()

    def read(self, session_id: str) -> Checkpoint | None:
        """The durable checkpoint of a session, or None when the group never held it."""
        path = self._ckpt(session_id)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read checkpoint {path}: {exc}") from None
        branches = {str(b): int(s) for b, s in raw["branches"].items()}
        return Checkpoint(int(raw["fence"]), branches, str(raw.get("token", "")))

    def sessions(self) -> list[str]:
        folder = self.dir / "ckpt"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    @contextlib.contextmanager
    def _locked(self, session_id: str) -> Iterator[Path]:
        path = self._ckpt(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)  # closing drops the lock

    def write(self, session_id: str, ckpt: Checkpoint, *, create_only: bool = False) -> bool:
        """Replace the session's checkpoint unless the file holds a newer claim (then False:
        ours is stale). The same fence counts as newer unless it is our own token: after a
        Redis restart, a claim that was never written down may see its fence handed out
        again. ``create_only`` writes only when there is no file yet."""
        with self._locked(session_id) as path:
            current = self.read(session_id)
            if current is not None and (create_only or not _may_replace(current, ckpt)):
                return False
            data = json.dumps({"fence": ckpt.fence, "token": ckpt.token,
                               "branches": ckpt.branches}).encode()
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                write_durably(path, data, tmp)
            except OSError as exc:
                raise StorageError(f"cannot write checkpoint {path}: {exc}") from None
        return True

    # ----- parked events ------------------------------------------------------------------

    def _parked(self, session_id: str) -> Path:
        validate_id(session_id, "session_id", self.max_id_length)
        return self.dir / "parked" / f"{session_id}.jsonl"

    def log(self, session_id: str, entry: dict[str, Any]) -> None:
        """Append one fsynced line to the session's parked log."""
        path = self._parked(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": time.time(), **entry}, separators=(",", ":")).encode() + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write parked log {path}: {exc}") from None

    def parked(self, session_id: str | None = None) -> list[ParkedEvent]:
        """Parked events (one per position, the latest state), of one or every session."""
        folder = self.dir / "parked"
        names = [session_id] if session_id else (
            sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else [])
        out: list[ParkedEvent] = []
        for sid in names:
            path = self._parked(sid)
            if not path.exists():
                continue
            found: dict[tuple[str, int], ParkedEvent] = {}
            for raw in path.read_bytes().splitlines():
                try:
                    e = json.loads(raw)
                except ValueError:
                    continue  # a torn last line of a crashed writer
                key = (str(e["branch"]), int(e["sequence"]))
                if e["op"] == "park":
                    parked = found.setdefault(key, ParkedEvent(
                        sid, key[0], key[1], int(e["attempts"]), str(e["error"]),
                        str(e.get("event_id", ""))))
                    if e.get("halt"):
                        parked.state = "halted"
                elif key in found:
                    found[key].state = {"replay": "replaying", "done": "replayed",
                                        "resume": "resumed"}.get(e["op"], found[key].state)
            out += found.values()
        return out


@dataclass(slots=True)
class ParkedEvent:
    session_id: str
    branch_id: str
    sequence: int
    attempts: int
    error: str
    event_id: str
    state: str = "parked"  # parked | replaying | replayed | halted | resumed


def _may_replace(current: Checkpoint, new: Checkpoint) -> bool:
    return current.fence < new.fence or (current.fence == new.fence and current.token == new.token)
