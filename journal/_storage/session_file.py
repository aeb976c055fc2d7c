"""The session file (the truth) and its rebuildable index.

Layout under the root::

    events/<sid>.jsonl           every committed event, one JSON line each (docs/format.md)
    index/<sid>/<branch>.idx2    fixed-width entries (offset u64, length u32, crc32c u32)
                                 per sequence
    index/<sid>/committed        a lower bound of the committed length, for safe rebuilds

All functions here are synchronous and are only ever called by one writer at a time for a
session (the holder of the Redis lease); readers only read bytes below the committed length.
The async journal runs them in a worker thread.

A writer keeps its descriptors open (the session file, the hint, the index files): see
:class:`SessionStore` for when they are trusted and when they are checked against the paths.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import errno
import logging
import os
import struct
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import msgspec

from journal import _fault_hook as fault
from journal import _observe
from journal._model.records import DECODE_ERRORS, EventRecord, decode_line
from journal.errors import CorruptLine, JournalError, StorageError

# Per sequence: the byte offset of the line, its length with the newline, and the CRC32C of
# those bytes (a flipped letter inside a string value still decodes: only this catches it).
INDEX_ENTRY = struct.Struct("<QII")
# The index files' name. The previous layout (``<branch>.idx``: offset and length, 12 bytes,
# no checksum) is never read: it is a cache, rewritten under the new name by the next append
# to its branch or by a rebuild, which also removes the old file.
INDEX_SUFFIX = ".idx2"
OLD_INDEX_SUFFIX = ".idx"
# index/<sid>/committed: a lower bound of the committed length, and the end of the write in
# flight (0 when none), written just before that write. A recovery that finds the file
# shorter than the write's intended end cuts all of it: a batch is all or nothing.
HINT = struct.Struct("<QQ")
CHUNK = 1 << 20
# How long a lagging view of the file (a shared mount's attribute cache) may take to show
# what was committed, before the journal calls the mount incoherent. GlusterFS caches
# attributes for 1 s by default.
VIEW_CATCH_UP_S = 2.0

# A writer that keeps appending on the fast path still checks its cached descriptors against
# the paths this often (a file replaced, an index deleted by hand), at 1-3 stat calls a time.
REVALIDATE_S = 1.0
# On the held-lease fast path the caches (index entries and the committed hint) of single
# lines are written together, every DEFER_LINES lines or DEFER_S, and when the lease is given
# back: one append then costs no cache write at all (on a network filesystem each is a round
# trip). The caches so lag the file by at most that much; readers scan past the index.
DEFER_LINES = 64
DEFER_S = 0.25


def checksum(line: bytes) -> int:
    """CRC32C of a whole line, newline included."""
    value: int = google_crc32c.value(line)
    return value


def checksum_of(raw: bytes) -> int:
    """CRC32C of ``raw`` followed by its newline (``raw`` as :func:`iter_lines` yields it)."""
    value: int = google_crc32c.extend(google_crc32c.value(raw), b"\n")
    return value


def line_rows(data: bytes, start: int) -> list[tuple[int, int, int]]:
    """The index rows ``(offset, length, checksum)`` of the lines of ``data`` written at
    ``start`` (``data`` ends with a newline)."""
    rows, offset = [], start
    for line in data.split(b"\n")[:-1]:
        rows.append((offset, len(line) + 1, checksum_of(line)))
        offset += len(line) + 1
    return rows


def _pread_exact(path: str, length: int, offset: int) -> bytes | None:
    """``length`` bytes of a file at ``offset``, or None when it does not hold them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    return data if len(data) == length else None


def _identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a path, or (0, 0) when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, 0
    return st.st_dev, st.st_ino


def _real_size(fd: int, view: int) -> int:
    """Where the file's data ends according to the filesystem (``lseek(SEEK_HOLE)``), or
    ``view`` where it cannot say. Never below ``view``."""
    try:
        return max(view, os.lseek(fd, 0, os.SEEK_HOLE))
    except OSError:  # ENXIO (empty file), EINVAL (no SEEK_HOLE here)
        return view


class _Position(msgspec.Struct):
    """The few fields a scan needs; msgspec skips the rest of the line quickly."""

    session_id: str
    branch_id: str
    sequence: int
    event_id: str


_position_decoder = msgspec.json.Decoder(_Position)


@dataclass(slots=True)
class Line:
    offset: int
    length: int  # with the newline
    branch_id: str
    sequence: int
    event_id: str
    checksum: int = 0  # CRC32C of the line with its newline


@dataclass(slots=True)
class TailResult:
    """What a tail recovery or a rebuild found."""

    length: int  # the new committed length
    heads: dict[str, int]  # head of every branch seen (rebuild) or advanced (tail)
    kept: list[Line] = field(default_factory=list)  # lines rolled forward
    truncated_from: int | None = None  # where junk was cut, if anywhere


def iter_lines(fd: int, start: int, end: int | None = None) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(offset, line, complete)`` for the lines in ``[start, end)``.

    ``line`` excludes the newline; the last item may be incomplete (no newline: torn).
    """
    if end is None:
        end = os.fstat(fd).st_size
    pos = start
    carry = b""
    carry_offset = start
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        data = carry + chunk if carry else chunk
        parts = data.split(b"\n")
        offset = carry_offset
        for part in parts[:-1]:
            yield offset, part, True
            offset += len(part) + 1
        carry = parts[-1]
        carry_offset = offset
    if carry:
        yield carry_offset, carry, False


_log = logging.getLogger("journal.storage")


def _log_tail(session_id: str, found: TailResult, event: str) -> None:
    """Recoveries are rare and worth a line: what was rolled forward, what was cut."""
    if found.kept or found.truncated_from is not None:
        _log.warning("%s: recovered an uncommitted tail: %d line(s) rolled forward%s",
                     session_id, len(found.kept),
                     "" if found.truncated_from is None
                     else f", cut from byte {found.truncated_from}", extra={
                         "event": event, "session_id": session_id,
                         "rolled_forward": len(found.kept),
                         "truncated_from": found.truncated_from, "length": found.length})


class _Descriptors:
    """The descriptors a writer keeps open, and what it knows about the files behind them.

    Everything here is only a cache: dropping it (:meth:`SessionStore.forget`) costs a few
    ``open`` calls on the next append, never correctness.
    """

    __slots__ = ("append_fd", "append_id", "checked_at", "end", "hint_fd", "hint_id", "index")

    def __init__(self) -> None:
        self.append_fd: int | None = None
        self.append_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open file
        self.end: int | None = None  # end of our last write that landed at the committed length
        self.hint_fd: int | None = None
        self.hint_id: tuple[int, int] = (0, 0)
        # branch -> [fd, (st_dev, st_ino), entries it holds, or -1 when not known]
        self.index: dict[str, list[Any]] = {}
        self.checked_at = 0.0

    def close(self) -> None:
        fds = [self.append_fd, self.hint_fd, *(entry[0] for entry in self.index.values())]
        self.append_fd = self.hint_fd = None
        self.index = {}
        self.end = None
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


_LIVE: weakref.WeakSet[SessionStore] = weakref.WeakSet()
# Stores that hold open descriptors, least recently appended first. A process that writes
# to many sessions keeps the files of the last MAX_OPEN_STORES open, not all of them: each
# store holds 2 + up to MAX_OPEN_INDEXES descriptors (at most 192 in all; the default limit
# is 1024 per process). Beyond that, appends reopen files as they did before caching.
MAX_OPEN_STORES = 32
MAX_OPEN_INDEXES = 4
_open_stores: OrderedDict[int, weakref.ref[SessionStore]] = OrderedDict()
# Reentrant: a store dropped by the garbage collector while this thread holds the lock
# untracks itself from its finalizer, in this very thread.
_open_lock = threading.RLock()


def _close_dropped(fds: _Descriptors, key: int) -> None:
    _untrack(key)
    fds.close()


def _touch(store: SessionStore) -> None:
    """Mark ``store`` as just used; close the descriptors of the least recently used ones
    beyond MAX_OPEN_STORES (skipping any that another thread is using right now)."""
    victims: list[SessionStore] = []
    with _open_lock:
        key = id(store)
        if key in _open_stores:
            _open_stores.move_to_end(key)
            return
        _open_stores[key] = weakref.ref(store)
        excess = len(_open_stores) - MAX_OPEN_STORES
        for old_key in list(_open_stores)[: max(excess, 0)]:
            victim = _open_stores.pop(old_key)()
            if victim is not None:
                victims.append(victim)
    for victim in victims:
        if victim._lock.acquire(blocking=False):
            try:
                victim._fds.close()
            finally:
                victim._lock.release()
        else:
            with _open_lock:  # busy appending: keep it, it is the most recent anyway
                _open_stores[id(victim)] = weakref.ref(victim)


def _untrack(key: int) -> None:
    with _open_lock:
        _open_stores.pop(key, None)


def _after_fork_in_child() -> None:
    # The child shares the parent's open file descriptions but none of its leases: it must
    # not trust what the parent knew. Closing our copies leaves the parent's untouched.
    global _open_lock
    _open_lock = threading.RLock()
    _open_stores.clear()
    for store in list(_LIVE):
        store._lock = threading.RLock()
        store._lazy = store._deferring = False
        store._take_deferred()
        store._fds.close()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SessionStore:
    """File operations for one session; the path strings are computed once (pathlib is slow on
    the hot path).

    **Cached descriptors.** The writer of a session keeps the session file (``O_APPEND``), the
    committed hint and the index files of its branches open, so a steady append costs no
    ``open``, ``close`` or ``stat``: the ``write``, an ``lseek`` (where did it land) and the
    ``fdatasync``; its index entry and the hint are deferred (see :meth:`landed`). The
    descriptors belong to the store and are used under its lock, so any number of threads may
    share a store (the async journal runs file work in worker threads); readers open their
    own. What the writer knows about the files (their size, the index lengths) is trusted only
    while it held the lease without a break since its last append (the held-lease fast path,
    ``trusted=True`` in :meth:`size_for_append`); otherwise, and at least every
    ``REVALIDATE_S``, the descriptors are checked against the paths and a file replaced or
    removed behind our back is reopened. A forked child starts with nothing cached.
    """

    def __init__(self, root: Path, session_id: str,
                 view_catch_up_s: float = VIEW_CATCH_UP_S) -> None:
        self.session_id = session_id
        self.view_catch_up_s = view_catch_up_s
        self.path = root / "events" / f"{session_id}.jsonl"
        self.index_dir = root / "index" / session_id
        self._path = str(self.path)
        self._hint = str(self.index_dir / "committed")
        self._index_ready = False
        # Truncation points (branch -> lowest stored sequence), set from the lifecycle marks
        # by journal._storage.gate: the scans below start each branch there.
        self.floors: dict[str, int] = {}
        self._lock = threading.RLock()
        self._fds = _Descriptors()
        # This append came through the trusted fast path: if it is one line, it needs no
        # write intent, and its caches may be deferred (see landed).
        self._lazy = False
        # The deferred caches: branch -> [head before the rows, rows], the committed length
        # they reach, when the first was deferred, and how many lines wait.
        self._deferred: dict[str, list[Any]] = {}
        self._deferred_end = 0
        self._deferred_since = 0.0
        self._deferred_lines = 0
        self._deferring = False  # the write in flight defers its caches
        _LIVE.add(self)
        # Close the descriptors when the store is dropped (Core keeps a bounded cache).
        self._finalizer = weakref.finalize(self, _close_dropped, self._fds, id(self))

    def close(self) -> None:
        """Close every cached descriptor (they are reopened when needed)."""
        with self._lock:
            self._fds.close()
        _untrack(id(self))

    def forget(self) -> None:
        """Trust nothing cached about the files any more (another writer may have written).
        Deferred caches are dropped too: the next index write catches up by a scan."""
        with self._lock:
            self._take_deferred()
            self._fds.end = None
            for entry in self._fds.index.values():
                entry[2] = -1

    def _open_in_index(self, path: str, flags: int) -> int:
        """Open a file under index/<sid>/, creating the folder the first time (or again, if
        someone removed it: the index is a cache and may be deleted by hand)."""
        flags |= os.O_CREAT | os.O_CLOEXEC
        if self._index_ready:
            try:
                return os.open(path, flags, 0o644)
            except FileNotFoundError:
                pass
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._index_ready = True
        return os.open(path, flags, 0o644)

    # ----- plain queries -------------------------------------------------------------------

    def size(self) -> int:
        try:
            return os.stat(self._path).st_size
        except FileNotFoundError:
            return 0

    def size_reaching(self, at_least: int, bound_s: float) -> int:
        """The file's size, waiting up to ``bound_s`` for it to reach ``at_least``.

        On a network filesystem a host's cached attributes can lag what another host wrote
        and synced (GlusterFS's FUSE attribute cache, NFS's ac* timeouts); a fresh stat after
        the cache expires sees it. Nothing may act on the lagging view meanwhile."""
        deadline = time.monotonic() + bound_s
        delay = 0.01
        while True:
            size = self.size()
            if size >= at_least or time.monotonic() >= deadline:
                return size
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def line_number(self, offset: int) -> int:
        """1-based line number of the line starting at ``offset`` (only used for errors)."""
        count = 1
        with open(self.path, "rb") as f:
            remaining = offset
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                count += chunk.count(b"\n")
                remaining -= len(chunk)
        return count

    def lagging(self, size: int, committed: int) -> str:
        """The one-line error for a file shorter than the committed length Redis holds."""
        return (
            f"{self.path} is shorter than the committed length Redis holds ({size} < "
            f"{committed} bytes, after waiting {self.view_catch_up_s:g} s for this host's view to "
            "catch up). Likely causes: another journal root uses this "
            "Redis without its own key_prefix (give each root one: JOURNAL_KEY_PREFIX); the "
            "file was deleted, truncated or replaced outside the journal; or this host's view "
            "of a shared mount lags (check its caching: see README, 'Several hosts'). Nothing "
            f"was written. If this file is the truth, `journal rebuild {self.session_id}` resets "
            "Redis from it"
        )

    def lagging_hint(self, size: int, hint: int) -> str:
        """The one-line error for a rebuild that sees the file shorter than its own hint."""
        return (
            f"{self.path} is shorter than its committed hint says ({size} < {hint} bytes, "
            f"after waiting {self.view_catch_up_s:g} s for this host's view to catch up), so "
            "Redis's state cannot be rebuilt from it here. Likely causes: this host's view of "
            "a shared mount lags (check its caching: see README, 'Several hosts'); or the file "
            "was truncated or replaced outside the journal. Nothing was cut. If this file is "
            f"the truth, `journal rebuild {self.session_id}` resets Redis from it"
        )

    def lagging_view(self, view: int, truth: int) -> str:
        """The one-line error for a recovery whose view of the file lags the filesystem."""
        return (
            f"{self.path}: this host's view of the file ({view} bytes) lags what the "
            f"filesystem holds ({truth} bytes) after waiting {self.view_catch_up_s:g} s for it "
            "to catch up, so its tail is not recovered here: check this mount's caching (see "
            "README, 'Several hosts'). Nothing was cut"
        )

    def _settled_view(self, fd: int, at_least: int) -> int:
        """The size a recovery may act on: the view through ``fd``, once it shows at least
        ``at_least`` (the committed length) and everything the filesystem itself holds.

        A cut must never rest on a lagging view: a host whose attribute cache lags sees a
        complete line another host wrote as torn, or a finished write as unfinished, and
        ``ftruncate`` would cut it on the server. ``lseek(SEEK_HOLE)`` asks the filesystem
        where the data ends (FUSE forwards it: GlusterFS answers from the brick, past the
        kernel's cached size); a journal file has no holes, so that is its real size. A view
        below either is waited for, bounded, then refused with a one-line error."""
        view = os.fstat(fd).st_size
        want = max(at_least, _real_size(fd, view))
        if view >= want:
            return view
        self.size_reaching(want, self.view_catch_up_s)
        view = os.fstat(fd).st_size
        if view >= want:
            return view
        if view < at_least:
            raise StorageError(self.lagging(view, at_least))
        raise StorageError(self.lagging_view(view, want))

    def corrupt(self, offset: int, problem: str) -> CorruptLine:
        return CorruptLine(str(self.path), self.line_number(offset), problem)

    # ----- appending (under the lease) -----------------------------------------------------

    def size_for_append(self, trusted: bool, committed: int) -> int:
        """The file's size before an append under the lease (``committed``: the committed
        length Redis gave with it).

        ``trusted``: this writer held the lease without a break since its last append (the
        held-lease fast path), so nobody else may have written and the end of its own last
        write is the size, without a syscall. A stale writer's bytes that landed since are
        caught all the same: :meth:`append` reports where our bytes landed, and the protocol
        recovers when that is not the committed length. Otherwise, and at least every
        ``REVALIDATE_S``, the cached descriptors are checked against the paths (one ``stat``
        each): a file replaced or removed behind our back is reopened, and what we knew about
        the files is forgotten.

        Deferred caches are written first when they are still right: on the fast path, and
        after a ``begin`` when nobody wrote since they were deferred (the same file, whose
        size and Redis's committed length are both where our last write ended; a new
        branch in a session we keep writing takes that path). Otherwise they are dropped.
        """
        with self._lock:
            fds = self._fds
            if trusted and fds.end is not None:
                if time.monotonic() - fds.checked_at < REVALIDATE_S:
                    self._lazy = True
                    return fds.end
                self.flush()  # still under the lease that wrote them: they are right
            try:
                st: os.stat_result | None = os.stat(self._path)
            except FileNotFoundError:
                st = None
            if (self._deferred and st is not None and committed == self._deferred_end
                    and st.st_size == committed and (st.st_dev, st.st_ino) == fds.append_id):
                self.flush()
            self._lazy = False
            self.forget()
            fds.checked_at = time.monotonic()
            if fds.hint_fd is not None and _identity(self._hint) != fds.hint_id:
                os.close(fds.hint_fd)
                fds.hint_fd = None
            for branch_id, entry in list(fds.index.items()):
                if _identity(f"{self.index_dir}/{branch_id}{INDEX_SUFFIX}") != entry[1]:
                    del fds.index[branch_id]
                    os.close(entry[0])
            if fds.append_fd is not None and (
                st is None or (st.st_dev, st.st_ino) != fds.append_id
            ):
                os.close(fds.append_fd)
                fds.append_fd = None
            return 0 if st is None else st.st_size

    def _append_fd(self) -> int:
        fds = self._fds
        if fds.append_fd is not None:
            return fds.append_fd
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # A new file's name must survive a crash too: sync the directory entry.
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        st = os.fstat(fd)
        fds.append_fd, fds.append_id = fd, (st.st_dev, st.st_ino)
        return fd

    def append(self, data: bytes, sync: bool, committed: int) -> tuple[int, int]:
        """One write on an O_APPEND descriptor, then fdatasync when ``sync``.

        Returns ``(start, end)``: where the bytes landed. With O_APPEND the descriptor's
        offset is the end of our own write, even when other processes append concurrently.

        The write intent ``(committed, committed + len(data))`` goes to the hint file first:
        if this write does not finish, recovery cuts all of it, so a batch is all or
        nothing. A single line on the held-lease fast path needs none (a torn line is cut by
        itself, a complete one continues its branch), and its caches are deferred.
        """
        with self._lock:
            _touch(self)
            fds = self._fds
            lazy, self._lazy = self._lazy and data.find(b"\n") == len(data) - 1, False
            if lazy:
                self._deferring = True
            else:
                self._deferring = False
                if self._deferred:
                    self._flush_deferred(hint=False)  # the intent below carries the hint
                if fds.hint_fd is not None and data.count(b"\n") > 1 and (
                        _identity(self._hint) != fds.hint_id):
                    # A batch's intent must reach the hint file itself, not one deleted by
                    # hand since we opened it: it is what makes a torn batch all or nothing.
                    os.close(fds.hint_fd)
                    fds.hint_fd = None
                self._pwrite_hint(committed, committed + len(data))
            fds.end = None
            fd = self._append_fd()
            try:
                if fault.wants("mid_write"):
                    half = len(data) // 2
                    os.write(fd, data[:half])
                    fault.hit("mid_write")
                    data = data[half:]
                written = os.write(fd, data)
                end = os.lseek(fd, 0, os.SEEK_CUR)
                if written != len(data):
                    # A short write is a torn line beyond the committed length: recovery cuts it.
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a short write "
                                  f"to {self.path}: {written} of {len(data)} bytes)")
                fault.hit("after_write")
                if sync:
                    fault.hit("fsync")
                    started = time.perf_counter()
                    os.fdatasync(fd)
                    _observe.emit("fsync", seconds=time.perf_counter() - started)
                    fault.hit("after_fsync")
            except BaseException:
                # Whatever happened to this descriptor, the next append starts from the path.
                fds.append_fd = None
                os.close(fd)
                raise
            start = end - len(data)
            if start == committed:
                fds.end = end  # our bytes sit at the committed length: the next size
            return start, end

    def landed(self, branch_id: str, head_before: int, data: bytes, start: int,
               end: int) -> None:
        """The caches of a synced write that landed at the committed length ``start`` (its
        lines are committed from now on by the roll-forward rule): their index entries, and
        ``end`` as the hint, so a rebuild never truncates below it. Both are best effort.

        A single line on the held-lease fast path defers both, and they are written together
        every ``DEFER_LINES`` lines or ``DEFER_S``, before any other write of ours, and when
        the lease is given back (:meth:`flush`). Until then they lag: the hint is only a
        lower bound, and readers and the next writer scan past the index's end (a few
        lines). Index entries first, then the hint, so the hint never outruns the index."""
        rows = line_rows(data, start)
        with self._lock:
            if not self._deferring:
                self.index_append(branch_id, head_before, rows, start)
                self._pwrite_hint(end, 0)
                return
            waiting = self._deferred.get(branch_id)
            if waiting is None:
                self._deferred[branch_id] = [head_before, rows]
            else:
                waiting[1] += rows
            if not self._deferred_lines:
                self._deferred_since = time.monotonic()
            self._deferred_end = end
            self._deferred_lines += len(rows)
            if (self._deferred_lines >= DEFER_LINES
                    or time.monotonic() - self._deferred_since >= DEFER_S):
                self._flush_deferred(hint=True)

    def deferred(self) -> bool:
        """Whether caches wait to be written (see :meth:`landed`)."""
        return bool(self._deferred)

    def flush(self, guard: Callable[[], None] | None = None) -> None:
        """Write the deferred caches now (the caller holds the lease; ``guard`` raises if
        it may be gone, and they are then left to the next writer's catch-up)."""
        with self._lock:
            if not self._deferred:
                return
            try:
                if guard is not None:
                    guard()
            except JournalError:  # LeaseLost: the next writer catches the index up
                self._take_deferred()
                return
            with contextlib.suppress(OSError, JournalError):  # caches, as in landed
                self._flush_deferred(hint=True)

    def _take_deferred(self) -> dict[str, list[Any]]:
        """The deferred caches, no longer held here (written by the caller, or dropped)."""
        deferred, self._deferred, self._deferred_lines = self._deferred, {}, 0
        return deferred

    def _flush_deferred(self, hint: bool) -> None:
        committed = self._deferred_end
        deferred = self._take_deferred()
        for branch_id, (head_before, rows) in deferred.items():
            self.index_append(branch_id, head_before, rows, rows[0][0])
        if hint:
            self._pwrite_hint(committed, 0)

    def truncate(self, length: int, guard: Callable[[], None]) -> None:
        """Cut junk beyond the committed length. ``guard`` raises if our lease may be gone:
        a writer that lost its lease must never truncate, someone may have committed since."""
        guard()
        self.forget()
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < length:  # a lagging view or a file cut behind our back: never extend
                raise StorageError(self.lagging(size, length))
            os.ftruncate(fd, length)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    # ----- recovery -----------------------------------------------------------------------

    def _classify(self, raw: bytes, heads: dict[str, int]) -> Line | str:
        """A line that continues its branch, or the reason it does not."""
        try:
            record = decode_line(raw)
        except DECODE_ERRORS as exc:
            return f"invalid record: {exc}"
        if record.session_id != self.session_id:
            return f"session_id {record.session_id!r} in the file of {self.session_id!r}"
        expected = heads.get(record.branch_id, 0) + 1
        if record.sequence != expected:
            return f"branch {record.branch_id} sequence {record.sequence}, expected {expected}"
        return Line(0, len(raw) + 1, record.branch_id, record.sequence, record.event_id,
                    checksum_of(raw))

    def scan_tail(self, committed: int, heads: dict[str, int]) -> TailResult:
        """Tail recovery, the reading half: the complete lines beyond ``committed`` that
        continue their branch, in file order, are kept; the first torn, invalid or
        non-continuing line is where the file must be cut (``truncated_from``). Nothing is
        changed: :meth:`settle_tail` carries it out."""
        self.forget()  # the file changes here: the size and index lengths we knew are gone
        heads = dict(heads)
        result = TailResult(length=committed, heads={})
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return result
        try:
            view = self._settled_view(fd, committed)
            cut = self._cut_point(committed, view)
            for offset, raw, complete in iter_lines(fd, committed, view):
                if cut is not None and offset >= cut:
                    result.truncated_from = offset  # a write in flight that did not finish
                    break
                if complete and not raw.strip():
                    result.length = offset + len(raw) + 1
                    continue
                found = self._classify(raw, heads) if complete else "torn line"
                if isinstance(found, str):
                    result.truncated_from = offset
                    break
                found.offset = offset
                heads[found.branch_id] = found.sequence
                result.heads[found.branch_id] = found.sequence
                result.kept.append(found)
                result.length = offset + found.length
        finally:
            os.close(fd)
        return result

    def settle_tail(self, result: TailResult, heads: dict[str, int],
                    guard: Callable[[], None]) -> None:
        """Carry out a :meth:`scan_tail`: the cut (while ``guard`` passes), then the index of
        the lines kept. ``heads`` are the ones the scan started from."""
        self.cut_tail(result, guard)
        self._index_tail(result, heads)

    def cut_tail(self, result: TailResult, guard: Callable[[], None]) -> None:
        """The cut a scan asked for (none if it found no junk), while ``guard`` passes; then
        the log line of what the recovery did."""
        if result.truncated_from is not None:
            self.truncate(result.length, guard)
        _log_tail(self.session_id, result, "tail_recovery")

    def _index_tail(self, result: TailResult, heads: dict[str, int]) -> None:
        # The kept lines lie below the cut, so they may be indexed before it is made.
        with contextlib.suppress(OSError, JournalError):  # the index is a cache
            self._index_lines(result.kept, {**heads, **result.heads}, result.length)

    def read_intent(self) -> tuple[int, int]:
        """(committed lower bound, end of the write in flight or 0)."""
        try:
            raw = (self.index_dir / "committed").read_bytes()
        except OSError:
            return 0, 0
        if len(raw) == HINT.size:
            committed, pending = HINT.unpack(raw)
            return int(committed), int(pending)
        return 0, 0

    def read_hint(self) -> int:
        return self.read_intent()[0]

    def write_hint(self, committed: int) -> None:
        """Persist a lower bound of the committed length (no write in flight). Not synced: a
        stale hint is only a smaller bound. The intent of a write is written by
        :meth:`append`, the hint after it by :meth:`landed`."""
        with self._lock:
            self._pwrite_hint(committed, 0)

    def _pwrite_hint(self, committed: int, pending: int) -> None:
        fds = self._fds
        if fds.hint_fd is None:
            fd = self._open_in_index(self._hint, os.O_WRONLY)
            st = os.fstat(fd)
            fds.hint_fd, fds.hint_id = fd, (st.st_dev, st.st_ino)
        try:
            os.pwrite(fds.hint_fd, HINT.pack(committed, pending), 0)
        except OSError:
            os.close(fds.hint_fd)
            fds.hint_fd = None
            raise

    def _cut_point(self, committed: int, view: int) -> int | None:
        """Where a torn write in flight starts, if the intent says one is torn (``view``: the
        settled size, see :meth:`_settled_view`)."""
        start, end = self.read_intent()
        if end > start >= committed and view < end:
            return start
        return None

    def rebuild(self, full: bool = False, hint_may_outrun: bool = False) -> TailResult:
        """Recompute every head and the committed length from the file (Redis lost them).
        Junk past the committed lines is not cut here: the result says where it starts
        (``truncated_from``), and the caller cuts it with :meth:`cut_tail` once its lease
        is fenced.

        Fast path: the committed prefix that the hint and the index describe is trusted once
        it is proven consistent (see :meth:`_indexed_prefix`); only the tail past the hint is
        read. Otherwise a full scan: below the hint every line must be valid (a bad one
        there is corruption and is reported, never truncated); beyond it the tail-recovery
        rule applies.

        ``full`` (the operator's ``journal rebuild``) skips the fast path and decodes every
        committed line completely, so a damaged line anywhere is reported.

        A file shorter than the hint may be a lagging view of a shared mount: it is waited
        for (``view_catch_up_s``), then refused in one line, since a scan of a short view
        would give Redis a stale committed length and could cut a committed line that only
        looks torn. The hint is ignored instead, and the file taken as the truth, only when
        that is known or asked for: ``hint_may_outrun`` (the writers do not sync,
        ``durability="none"``, so after a crash the hint may lie beyond the data), ``full``
        (the operator says the file is the truth), or ``view_catch_up_s == 0`` (one local
        disk: a view never lags). Even then the scan refuses a view that the filesystem
        itself says lags (:meth:`_settled_view`).
        """
        self.forget()
        hint = self.read_hint()
        fault.hit("rebuild:after_hint")
        if hint and self.size_reaching(hint, self.view_catch_up_s) < hint:
            if not (hint_may_outrun or full or self.view_catch_up_s == 0):
                raise StorageError(self.lagging_hint(self.size(), hint))
            hint = 0
        if hint and not full:
            heads = self._indexed_prefix(hint)
            if heads is not None:
                with contextlib.suppress(OSError):
                    for branch_id, count in heads.items():
                        self._cut_index(branch_id, count)  # leftovers past the prefix
                found = self.scan_tail(hint, heads)
                self._index_tail(found, heads)
                if found.truncated_from is None:  # else logged by cut_tail, once it cut
                    _log_tail(self.session_id, found, "tail_recovery")
                _log.info("rebuilt the state of %s from its index", self.session_id, extra={
                    "event": "rebuild_indexed", "session_id": self.session_id,
                    "length": found.length})
                heads.update(found.heads)
                found.heads = heads
                with contextlib.suppress(OSError):
                    self.write_hint(found.length)
                return found
        found = self._rebuild_scan(hint, full)
        _log.info("rebuilt the state of %s from its file (full scan)", self.session_id, extra={
            "event": "rebuild_scan", "session_id": self.session_id, "length": found.length,
            "heads": found.heads, "truncated_from": found.truncated_from})
        return found

    def _indexed_prefix(self, hint: int) -> dict[str, int] | None:
        """The heads of the committed prefix ``[0, hint)``, read from the index alone, or
        None when the index cannot prove them.

        Proof: per branch, the entries that end within the prefix are counted (they are in
        file order, so a binary search finds them) and the line of the last one must decode
        to that branch with sequence == count; and the lengths of all those entries must add
        up to exactly ``hint``, so every committed byte belongs to an indexed line and no
        branch is missing. The last line's checksum is checked too. That costs ~16 bytes read
        per event, not a JSON decode per line.
        """
        if sys.byteorder != "little":
            return None  # the entries are little-endian; reading them as words needs that
        heads: dict[str, int] = {}
        covered = 0
        try:
            index_files = list(self.index_dir.glob(f"*{INDEX_SUFFIX}"))
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            for index_file in index_files:
                raw = index_file.read_bytes()
                if len(raw) % INDEX_ENTRY.size:
                    return None
                words = array.array("I")
                words.frombytes(raw)  # per entry: offset low, offset high, length, checksum

                def end(i: int, words: array.array[int] = words) -> int:
                    return (words[4 * i] | words[4 * i + 1] << 32) + words[4 * i + 2]

                count = bisect.bisect_right(range(len(raw) // INDEX_ENTRY.size), hint, key=end)
                if count == 0:
                    continue
                last = count - 1
                offset = words[4 * last] | words[4 * last + 1] << 32
                line = os.pread(fd, words[4 * last + 2], offset)
                if checksum(line) != words[4 * last + 3]:
                    return None  # the full scan then reports what is wrong
                try:
                    pos = _position_decoder.decode(line)
                except DECODE_ERRORS:
                    return None
                branch_id = index_file.name.removesuffix(INDEX_SUFFIX)
                if (pos.session_id, pos.branch_id, pos.sequence) != (
                    self.session_id, branch_id, count
                ) or not line.endswith(b"\n"):
                    return None
                heads[branch_id] = count
                covered += sum(words[2 : 4 * count : 4])
        finally:
            os.close(fd)
        return heads if covered == hint else None

    def _cut_index(self, branch_id: str, count: int) -> None:
        self.forget()
        path = self._index_path(branch_id)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > count * INDEX_ENTRY.size:
                os.truncate(path, count * INDEX_ENTRY.size)

    def known_checksums(self, branch_id: str | None = None) -> dict[str, bytes]:
        """The index entries of one branch (or all) as they are now (a rebuild replaces them)."""
        known: dict[str, bytes] = {}
        pattern = f"{'*' if branch_id is None else branch_id}{INDEX_SUFFIX}"
        with contextlib.suppress(OSError):
            for index_file in self.index_dir.glob(pattern):
                known[index_file.name.removesuffix(INDEX_SUFFIX)] = index_file.read_bytes()
        return known

    def check_known(self, known: dict[str, bytes], branch_id: str, sequence: int,
                     offset: int, length: int, crc: int) -> None:
        """A committed line that an index entry describes (same offset and length) must have
        the checksum recorded when it was written: a rebuild must not launder a changed line
        into a new index. (An index that does not describe the line proves nothing.)"""
        raw = known.get(branch_id)
        at = (sequence - 1) * INDEX_ENTRY.size
        if raw is None or sequence < 1 or at + INDEX_ENTRY.size > len(raw):
            return
        was_offset, was_length, was_crc = INDEX_ENTRY.unpack_from(raw, at)
        if (was_offset, was_length) == (offset, length) and was_crc != crc:
            raise self.corrupt(offset, "checksum mismatch: the line's bytes are not those "
                               f"written (CRC32C in {self._index_path(branch_id)})")

    def _rebuild_scan(self, hint: int, full: bool = False) -> TailResult:
        heads: dict[str, int] = {b: f - 1 for b, f in self.floors.items()}
        known = self.known_checksums()
        entries: dict[str, list[tuple[int, int, int]]] = {
            b: [(0, 0, 0)] * h for b, h in heads.items()
        }
        length = 0
        truncated_from: int | None = None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return TailResult(length=0, heads={})
        try:
            view = self._settled_view(fd, hint)
            cut = self._cut_point(hint, view)
            for offset, raw, complete in iter_lines(fd, 0, view):
                if cut is not None and offset >= cut:
                    truncated_from = offset  # a write in flight that did not finish
                    break
                if complete and not raw.strip():
                    length = offset + len(raw) + 1
                    continue
                if offset < hint:
                    if not complete:
                        raise self.corrupt(offset, "torn line inside the committed region")
                    try:
                        pos = _position_decoder.decode(raw)
                        if full:
                            decode_line(raw)  # the whole record, as a read would decode it
                    except DECODE_ERRORS as exc:
                        raise self.corrupt(offset, f"invalid record: {exc}") from None
                    expected = heads.get(pos.branch_id, 0) + 1
                    if pos.session_id != self.session_id or pos.sequence != expected:
                        raise self.corrupt(
                            offset,
                            f"branch {pos.branch_id} sequence {pos.sequence}, expected {expected}",
                        )
                    line = Line(offset, len(raw) + 1, pos.branch_id, pos.sequence, pos.event_id,
                                checksum_of(raw))
                    self.check_known(known, pos.branch_id, pos.sequence, offset, line.length,
                                      line.checksum)
                else:
                    found = self._classify(raw, heads) if complete else "torn line"
                    if isinstance(found, str):
                        if complete and self._valid_line_follows(fd, offset + len(raw) + 1):
                            # Not a torn tail: a damaged line with good ones after it. Without
                            # Redis we cannot prove where the commit ended, so never cut.
                            raise self.corrupt(offset, found)
                        truncated_from = offset
                        break
                    line = found
                    line.offset = offset
                heads[line.branch_id] = line.sequence
                entries.setdefault(line.branch_id, []).append(
                    (line.offset, line.length, line.checksum))
                length = line.offset + line.length
        finally:
            os.close(fd)
        # The junk past ``length`` stays for the caller's fenced cut (see rebuild); these
        # caches describe the lines below it only.
        with contextlib.suppress(OSError):  # caches: a full disk must not stop a rebuild
            self._write_indexes(entries)
            self.write_hint(length)
        return TailResult(length=length, heads=heads, truncated_from=truncated_from)

    def _valid_line_follows(self, fd: int, start: int) -> bool:
        for _offset, raw, complete in iter_lines(fd, start):
            if not complete:
                return False
            if not raw.strip():
                continue
            try:
                pos = _position_decoder.decode(raw)
            except DECODE_ERRORS:
                continue
            if pos.session_id == self.session_id:
                return True
        return False

    # ----- the index --------------------------------------------------------------------

    def _index_path(self, branch_id: str) -> Path:
        return self.index_dir / f"{branch_id}{INDEX_SUFFIX}"

    def _write_indexes(self, entries: dict[str, list[tuple[int, int, int]]]) -> None:
        with self._lock:  # the files are replaced: our open ones would point at the old ones
            for entry in self._fds.index.values():
                os.close(entry[0])
            self._fds.index = {}
        self.index_dir.mkdir(parents=True, exist_ok=True)
        for old in self.index_dir.glob(f"*{OLD_INDEX_SUFFIX}"):  # the previous layout
            old.unlink(missing_ok=True)
        for old in self.index_dir.glob(f"*{INDEX_SUFFIX}"):
            if old.name.removesuffix(INDEX_SUFFIX) not in entries:
                old.unlink(missing_ok=True)
        for branch_id, rows in entries.items():
            tmp = self.index_dir / f".{branch_id}{INDEX_SUFFIX}.tmp"
            tmp.write_bytes(b"".join(INDEX_ENTRY.pack(*row) for row in rows))
            # rename is atomic: a concurrent reader sees the old or the new index, both valid
            # for every sequence up to the head it read.
            os.replace(tmp, self._index_path(branch_id))

    def index_append(self, branch_id: str, head_before: int, rows: list[tuple[int, int, int]],
                     committed: int) -> None:
        """Record the rows ``(offset, length, checksum)`` of sequences ``head_before + 1 ...``.
        Entries past the head are leftovers of a writer that died; they are cut first. A short
        index is rebuilt.

        The branch's index stays open; while the writer trusts what it knows (see
        :meth:`size_for_append`) the entries go straight to their place: one ``pwrite``."""
        with self._lock:
            entry = self._fds.index.get(branch_id)
            if entry is None:
                path = f"{self.index_dir}/{branch_id}{INDEX_SUFFIX}"
                if len(self._fds.index) >= MAX_OPEN_INDEXES:  # the oldest opened goes
                    oldest = next(iter(self._fds.index))
                    os.close(self._fds.index.pop(oldest)[0])
                fd = self._open_in_index(path, os.O_RDWR)
                st = os.fstat(fd)
                entry = self._fds.index[branch_id] = [fd, (st.st_dev, st.st_ino), -1]
            fd = entry[0]
            try:
                want = head_before * INDEX_ENTRY.size
                if entry[2] != head_before:
                    entry[2] = -1
                    size = os.fstat(fd).st_size
                    if size < want:
                        # The index lags: a writer's deferred entries that never came (it
                        # died or lost its lease), lines written by another tool such as
                        # aiOS, an index lost or in the previous layout. Catch up from its
                        # last entry, or rebuild it; checksums too.
                        have = size // INDEX_ENTRY.size
                        missing = self._rows_after_index(fd, branch_id, have, committed)
                        if missing is None:
                            have = 0
                            missing = [(0, 0, 0)] * (self.floors.get(branch_id, 1) - 1)
                            missing += self._scan_branch_offsets(branch_id, committed)
                        if have + len(missing) != head_before:
                            return  # the file disagrees with Redis: leave it, readers fall back
                        os.pwrite(fd, b"".join(INDEX_ENTRY.pack(*row) for row in missing),
                                  have * INDEX_ENTRY.size)
                        with contextlib.suppress(OSError):
                            os.unlink(f"{self.index_dir}/{branch_id}{OLD_INDEX_SUFFIX}")
                    elif size > want:
                        os.ftruncate(fd, want)
                os.pwrite(fd, b"".join(INDEX_ENTRY.pack(*row) for row in rows), want)
                entry[2] = head_before + len(rows)
            except BaseException:
                del self._fds.index[branch_id]
                os.close(fd)
                raise

    def _last_indexed(self, fd: int, branch_id: str, have: int) -> int | None:
        """Where the line after the index's last entry may start: the end of that entry's
        line, once the line proves to be that branch's sequence ``have`` with the checksum
        recorded. None when it does not (a stale index, a truncated branch's placeholder)."""
        if have < 1:
            return None
        raw = os.pread(fd, INDEX_ENTRY.size, (have - 1) * INDEX_ENTRY.size)
        if len(raw) != INDEX_ENTRY.size:
            return None
        offset, length, crc = INDEX_ENTRY.unpack(raw)
        if not length:
            return None
        line = _pread_exact(self._path, length, offset)
        if line is None or not line.endswith(b"\n") or checksum(line) != crc:
            return None
        try:
            pos = _position_decoder.decode(line)
        except DECODE_ERRORS:
            return None
        if (pos.session_id, pos.branch_id, pos.sequence) != (self.session_id, branch_id, have):
            return None
        end: int = offset + length
        return end

    def _rows_after_index(self, fd: int, branch_id: str, have: int,
                          committed: int) -> list[tuple[int, int, int]] | None:
        """The rows of the branch's lines after the index's last entry, up to ``committed``:
        a scan of only the lines the index lags by. None when the index cannot anchor it."""
        start = self._last_indexed(fd, branch_id, have)
        if start is None:
            return None
        try:
            return [(offset, len(raw) + 1, checksum_of(raw))
                    for offset, raw, _pos in self._scan(committed, branch_id, start, have + 1)]
        except CorruptLine:
            return None  # the index does not describe this file: rebuild it from a full scan

    def _index_lines(self, lines: list[Line], heads_after: dict[str, int], committed: int) -> None:
        per_branch: dict[str, list[tuple[int, int, int]]] = {}
        for line in lines:
            per_branch.setdefault(line.branch_id, []).append(
                (line.offset, line.length, line.checksum))
        for branch_id, rows in per_branch.items():
            before = heads_after[branch_id] - len(rows)
            self.index_append(branch_id, before, rows, committed)

    def _scan_branch_offsets(self, branch_id: str, end: int) -> list[tuple[int, int, int]]:
        rows: list[tuple[int, int, int]] = []
        known = self.known_checksums(branch_id)
        for offset, raw, record in self._scan(end, branch_id):
            rows.append((offset, len(raw) + 1, checksum_of(raw)))
            self.check_known(known, branch_id, record.sequence, *rows[-1])
        return rows

    # ----- reading ---------------------------------------------------------------------

    def _scan(self, end: int, branch_id: str, start: int = 0,
              expected: int | None = None) -> Iterator[tuple[int, bytes, _Position]]:
        """Every committed line of a branch in ``[start, end)``, by a scan (the fallback
        path; from the index's end, the lines it lags by). ``expected``: the sequence of the
        branch's first line there (default: its first stored one)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            # Line numbers are counted only for a scan from the start (errors elsewhere
            # count them then).
            lineno = 0
            floor = self.floors.get(branch_id, 1) if expected is None else expected
            expected = floor

            def bad(offset: int, problem: str) -> CorruptLine:
                return (CorruptLine(str(self.path), lineno, problem) if start == 0
                        else self.corrupt(offset, problem))

            for offset, raw, complete in iter_lines(fd, start, end):
                lineno += 1
                if not raw.strip():
                    continue
                if not complete:
                    raise bad(offset, "torn line inside the committed region")
                try:
                    pos = _position_decoder.decode(raw)
                except DECODE_ERRORS as exc:
                    raise bad(offset, f"invalid record: {exc}") from None
                if pos.session_id != self.session_id:
                    raise bad(offset, f"session_id {pos.session_id!r} in this session's file")
                if pos.branch_id == branch_id and pos.sequence >= floor:
                    # The committed region holds every sequence of a branch once, in order:
                    # anything else means a damaged line (maybe an earlier one).
                    if pos.sequence != expected:
                        raise bad(offset, f"branch {branch_id} sequence {pos.sequence}, "
                                          f"expected {expected}")
                    expected += 1
                    yield offset, raw, pos
        finally:
            os.close(fd)

    def read(self, branch_id: str, first: int, last: int, committed: int) -> list[EventRecord]:
        """Committed events ``first..last`` of a branch (the caller bounds ``last`` by the
        head). O(count) through the index; a full scan only when the index is unusable."""
        if last < first:
            return []
        try:
            fast = self._read_indexed(branch_id, first, last, committed)
        except FileNotFoundError:
            return []
        if fast is not None:
            return fast
        return self._read_scanned(branch_id, first, last, committed)

    def _read_indexed(
        self, branch_id: str, first: int, last: int, committed: int
    ) -> list[EventRecord] | None:
        count = last - first + 1
        try:
            with open(self._index_path(branch_id), "rb") as idx:
                idx.seek((first - 1) * INDEX_ENTRY.size)
                raw = idx.read(count * INDEX_ENTRY.size)
                if len(raw) < INDEX_ENTRY.size:
                    # The index ends before ``first`` (its writer defers entries, or died):
                    # scan on from its last entry, a few lines.
                    have = os.fstat(idx.fileno()).st_size // INDEX_ENTRY.size
                    after = self._last_indexed(idx.fileno(), branch_id, have)
                    if after is None:
                        return None
                    return self._read_past_index(branch_id, after, have + 1, first, last,
                                                 committed)
        except FileNotFoundError:
            return None
        rows = list(INDEX_ENTRY.iter_unpack(raw[: len(raw) - len(raw) % INDEX_ENTRY.size]))
        if rows[-1][0] + rows[-1][1] > committed:
            return None
        bad: int | None = None  # offset of the first line whose checksum does not match
        out: list[EventRecord] = []
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            i = 0
            while i < len(rows):
                # Coalesce lines that sit back to back into one pread.
                start, total, _ = rows[i]
                j = i + 1
                while j < len(rows) and rows[j][0] == start + total and total < CHUNK:
                    total += rows[j][1]
                    j += 1
                blob = os.pread(fd, total, start)
                for offset, length, crc in rows[i:j]:
                    raw = blob[offset - start : offset - start + length]
                    if not raw.endswith(b"\n"):
                        return None
                    try:
                        record = decode_line(raw)
                    except DECODE_ERRORS:
                        return None  # maybe a stale index: the scan reports real corruption
                    if (record.session_id, record.branch_id, record.sequence) != (
                        self.session_id, branch_id, first + len(out)
                    ):
                        return None
                    if bad is None and checksum(raw) != crc:
                        bad = offset  # reported once the whole index is known not stale
                    out.append(record)
                i = j
        finally:
            os.close(fd)
        if bad is not None:
            # The entry points at exactly the line of that sequence, and its bytes are not the
            # ones written: a changed letter, never to be served. (A scan cannot see it.)
            raise self.corrupt(bad, "checksum mismatch: the line's bytes are not those written "
                               f"(CRC32C in {self._index_path(branch_id)})")
        if len(out) < count:  # the index ends inside the range: scan on past its end
            after = rows[-1][0] + rows[-1][1]
            rest = self._read_past_index(branch_id, after, first + len(out), first + len(out),
                                         last, committed)
            if rest is None:
                return None
            out += rest
        return out

    def _read_past_index(self, branch_id: str, start: int, expected: int, first: int,
                         last: int, committed: int) -> list[EventRecord] | None:
        """Events ``first..last`` of the branch from a scan of ``[start, committed)``, where
        the branch's next line has sequence ``expected``. None when the lines there do not
        continue the index (a stale index: the full scan then reports what is wrong)."""
        try:
            return self._collect(self._scan(committed, branch_id, start, expected), branch_id,
                                 first, last)
        except CorruptLine:
            return None

    def _read_scanned(
        self, branch_id: str, first: int, last: int, committed: int
    ) -> list[EventRecord]:
        # The index may still describe some of these lines (a short one, or one left stale):
        # where it does, its checksums hold on this path too.
        return self._collect(self._scan(committed, branch_id), branch_id, first, last,
                             self.known_checksums(branch_id))

    def _collect(self, lines: Iterator[tuple[int, bytes, _Position]], branch_id: str,
                 first: int, last: int, known: dict[str, bytes] | None = None,
                 ) -> list[EventRecord]:
        """The events ``first..last`` among a scan's lines of one branch (decoded whole),
        each checked against the index entries ``known`` when given."""
        out: list[EventRecord] = []
        for offset, raw, pos in lines:
            if pos.sequence < first:
                continue
            if pos.sequence > last:
                break
            if known is not None:
                self.check_known(known, branch_id, pos.sequence, offset, len(raw) + 1,
                                  checksum_of(raw))
            try:
                out.append(decode_line(raw))
            except DECODE_ERRORS as exc:
                raise self.corrupt(offset, f"invalid record: {exc}") from None
        return out
