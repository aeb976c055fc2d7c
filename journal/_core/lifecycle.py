"""Delete, truncate and archive: the life of a session, as protocols of operations.

Like the append protocol these are generators that yield :class:`~journal._core.ops.Lua`,
``Call``, ``Blocking`` and ``Sleep`` and are run by the same drivers. Each one works under the
session's writer lease (taken with ``lifecycle_acquire.lua``, fair like ``begin.lua``, for a
time sized by the file, at most ``rebuild_lease_ms``), and each has one commit point, so a
crash at any step leaves the session whole in its old form or whole in its new form, and
running the operation again finishes it. docs/design.md ("The life of a session") gives
the steps and why each order is safe.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from journal import _fault_hook as fault
from journal._core.ops import Blocking, Lua, Sleep, Steps, text
from journal._core.rebuild import fenced, rebuild, roll_forward, settle_pending
from journal._core.state import REWRITE_BYTES_PER_MS, Backoff, Core, Fenced, LeaseClock, LeaseLost
from journal._storage import archive as archives
from journal._storage import compaction, gate, tombstone
from journal._storage.session_file import SessionStore
from journal.errors import InvalidInput, LeaseTimeout, RedisUnavailable

_ROUNDS = 100


def tomb_key(core: Core, session_id: str) -> str:
    return f"{core.settings.key_prefix}:{{{session_id}}}:tomb"


class _Lease:
    def __init__(self, token: str, clock: LeaseClock, fields: dict[str, str]) -> None:
        self.token, self.clock, self.fields = token, clock, fields

    @property
    def heads(self) -> dict[str, int]:
        return {k[2:]: int(v) for k, v in self.fields.items() if k.startswith("h:")}


def _acquire(core: Core, session_id: str, waiter: Backoff, longest: bool) -> Steps[_Lease]:
    keys = core.keys(session_id)
    # Sized by the file (see Core.work_lease_ms): an operation killed on the way stops
    # the session's writers for about as long as its work would have taken. ``longest``
    # after the work once outran that lease.
    if longest:
        lease_ms = core.settings.rebuild_lease_ms
    else:
        size = yield Blocking(core.store(session_id).size)
        lease_ms = core.work_lease_ms(size, REWRITE_BYTES_PER_MS)
    token = core.env.token()
    # A lease this process still holds after an append would only make us wait for it.
    yield from settle_pending(core, session_id)
    held = core.held.pop(session_id, None)
    if held is not None and not held.pending:
        yield from _release(core, session_id, held.token)
    while True:
        clock = core.lease_clock(lease_ms)
        reply = yield Lua("lifecycle_acquire", [keys.state, keys.lease, keys.want],
                          [token, lease_ms, core.settings.lease_ms])
        if text(reply[0]) == "busy":
            yield Sleep(waiter.next(int(reply[1])))
            continue
        flat = [text(v) for v in reply[1]]
        return _Lease(token, clock, dict(zip(flat[::2], flat[1::2], strict=True)))


def _outran(longest: bool) -> bool:
    """The work outran its lease (the guard refused a step; the lease was given back):
    the next round takes the longest lease, and one that outran that too gives up."""
    if longest:
        raise LeaseTimeout("the operation outran even rebuild_lease_ms: raise it for a disk "
                           "this slow")
    return True


def _release(core: Core, session_id: str, token: str) -> Steps[None]:
    with contextlib.suppress(RedisUnavailable):
        yield Lua("release", [core.keys(session_id).lease], [token])


def _guarded(clock: LeaseClock, fn: Callable[[], object]) -> object:
    clock.guard()
    return fn()


def _file_step(core: Core, session_id: str, lease: _Lease, fn: Callable[[], Any]) -> Steps[Any]:
    """A file step under our lease. If it fails (a full disk, say), the lease goes back at
    once: left to expire, it would stop every writer of the session for the rest of it.
    (Each step leaves the session whole, so whoever comes next may go on from it.)"""
    try:
        return (yield Blocking(fn))
    except Exception:
        yield from _release(core, session_id, lease.token)
        raise


def _fenced_step(core: Core, session_id: str, lease: _Lease,
                 step: Callable[[Callable[[], None]], Any]) -> Steps[Any]:
    """A file step that destroys bytes, fenced (see rebuild.fenced); given back as
    :func:`_file_step` does if it fails."""
    try:
        return (yield from fenced(core, core.keys(session_id), lease.token, lease.clock, step))
    except Exception:
        yield from _release(core, session_id, lease.token)
        raise


def _save(core: Core, session_id: str, lease: _Lease, root: Path,
          marks: tombstone.Marks) -> Steps[Any]:
    """Write the session's marks, only while the lease is surely ours."""
    write = partial(tombstone.save, root, session_id, marks)
    return _file_step(core, session_id, lease, partial(_guarded, lease.clock, write))


# ----- delete ----------------------------------------------------------------------------


def delete(core: Core, session_id: str) -> Steps[None]:
    """Hard delete. Commit point: the tombstone in the marks file (fsynced). Then Redis drops
    the state and keeps a tombstone key, and the files go."""
    store, root = core.store(session_id), core.root
    keys = core.keys(session_id)
    waiter = core.backoff()
    longest = False
    for _round in range(_ROUNDS):
        lease = yield from _acquire(core, session_id, waiter, longest)
        fault.hit("delete:after_lease")
        marks = yield Blocking(partial(tombstone.load, root, session_id))
        if marks.deleted_at is None:
            there = marks.archived is not None or (yield Blocking(store.path.exists))
            if not there and "len" not in lease.fields:
                yield from _release(core, session_id, lease.token)
                raise InvalidInput(f"no session {session_id} under {root}")
            dead = msgspec.structs.replace(marks, deleted_at=time.time())
            try:
                yield from _save(core, session_id, lease, root, dead)
            except LeaseLost:
                longest = _outran(longest)
                continue
            fault.hit("delete:after_tombstone")
        ok = yield Lua("lifecycle_clear", [keys.state, keys.lease, tomb_key(core, session_id),
                                           keys.want],
                       [lease.token, "delete", f"{time.time():.3f}"])
        if ok != 1:
            longest = True
            continue  # our lease expired: the tombstone stands; take the lease again
        fault.hit("delete:after_redis")
        yield from _file_step(core, session_id, lease, partial(gate.remove_files, store))
        return
    raise LeaseTimeout(f"delete of {session_id} kept losing its lease")


# ----- truncate ---------------------------------------------------------------------------


def _settled(core: Core, session_id: str, store: SessionStore, waiter: Backoff, point: str,
             longest: bool) -> Steps[tuple[_Lease, int, tombstone.Marks] | None]:
    """Our lease over a session whose Redis state exists and whose file holds exactly the
    committed length (the tail rolled forward first), with that length and the session's
    marks; ``point`` is the fault point once the lease is ours. None: try again."""
    lease = yield from _acquire(core, session_id, waiter, longest)
    if "len" not in lease.fields:
        yield from _release(core, session_id, lease.token)
        if not (yield Blocking(partial(gate.exists, store))):
            raise InvalidInput(f"no session {session_id} under {core.root}")
        yield from rebuild(core, session_id, waiter)
        return None
    committed = int(lease.fields["len"])
    try:
        marks = yield Blocking(partial(gate.marks, store))
    except Exception:
        yield from _release(core, session_id, lease.token)
        raise
    size = yield Blocking(store.size)
    if size > committed:
        yield from _release(core, session_id, lease.token)
        yield from roll_forward(core, session_id)
        return None
    if size < committed and marks.archived is None:
        yield from _release(core, session_id, lease.token)
        raise gate.mismatch(store, size, committed)
    fault.hit(point)
    marks = yield from _file_step(core, session_id, lease, partial(gate.marks, store))
    return lease, committed, marks


def truncate_before(core: Core, session_id: str, branch_id: str, sequence: int) -> Steps[int]:
    """Hide the events of a branch below ``sequence`` and compact the file at once.

    Steps: write the compacted file and index beside the old ones; drop the Redis state
    (everyone now waits on our lease); write the marks (floors + the compaction's lengths);
    rename the new file over the old one (the commit point); commit the new length. Returns
    the branch's new lowest sequence."""
    store, root = core.store(session_id), core.root
    keys = core.keys(session_id)
    waiter = core.backoff()
    longest = False
    for _round in range(_ROUNDS):
        settled = yield from _settled(core, session_id, store, waiter, "truncate:after_lease",
                                      longest)
        if settled is None:
            continue
        lease, committed, marks = settled
        heads = lease.heads
        head = heads.get(branch_id, 0)
        floor: int = marks.floors.get(branch_id, 1)
        problem = None
        if sequence > head + 1:
            problem = (f"cannot truncate {session_id}/{branch_id} before {sequence}: "
                       f"its head is {head}")
        elif marks.archived is not None and not (yield Blocking(store.path.exists)):
            problem = (f"session {session_id} is archived: truncate it before archiving, "
                       "or append to reopen it")
        if problem is not None or sequence <= floor:
            yield from _release(core, session_id, lease.token)
            if problem is not None:
                raise InvalidInput(problem)
            return floor
        floors = {**marks.floors, branch_id: sequence}
        new_len = yield from _file_step(core, session_id, lease, partial(
            compaction.prepare, store, floors, committed, heads))
        fault.hit("truncate:after_prepare")
        ok = yield Lua("lifecycle_clear", [keys.state, keys.lease, tomb_key(core, session_id),
                                           keys.want], [lease.token, "clear", ""])
        if ok != 1:  # the compaction outran our lease
            yield Blocking(partial(compaction.discard, store))
            longest = True
            continue
        fault.hit("truncate:after_clear")
        new = msgspec.structs.replace(
            marks, floors=floors, compaction=tombstone.Compaction(committed, new_len)
        )
        try:
            yield from _save(core, session_id, lease, root, new)
            fault.hit("truncate:after_marks")
            installed = yield from _fenced_step(core, session_id, lease, partial(
                compaction.finish, store, new))
        except Fenced:
            continue  # Redis lost our lease: a writer may be at work; start over
        except LeaseLost:
            longest = _outran(longest)
            continue
        if not installed:
            # Someone else's rebuild, under a lease that died with Redis, discarded our
            # prepared file: committing new_len over the old file would cut lines.
            yield from _release(core, session_id, lease.token)
            continue
        fault.hit("truncate:after_rename")
        pairs: list[str | int | bytes] = []
        for branch, top in heads.items():
            pairs += [branch, top]
        yield Lua("commit", keys.all,
                  [lease.token, "0", new_len, "replace", "", "", *pairs])
        return sequence
    raise LeaseTimeout(f"truncate of {session_id} kept losing its lease")


# ----- archive ----------------------------------------------------------------------------


def _write_archive(store: SessionStore, committed: int) -> str:
    with open(store.path, "rb") as f:
        data = f.read(committed)
    path = archives.archive_path(store.path.parent.parent, store.session_id)
    return archives.write(path, data)


def archive(core: Core, session_id: str) -> Steps[bool]:
    """Compress the session into ``archive/<sid>.jsonl.zst``. Commit point: the marks say
    archived (after the archive is durable); then the file and its index go. Reads are
    served from the archive; the next append reopens it. False: it was archived already."""
    store, root = core.store(session_id), core.root
    waiter = core.backoff()
    longest = False
    for _round in range(_ROUNDS):
        settled = yield from _settled(core, session_id, store, waiter, "archive:after_lease",
                                      longest)
        if settled is None:
            continue
        lease, committed, marks = settled
        if not (yield Blocking(store.path.exists)):
            yield from _release(core, session_id, lease.token)
            return False  # archived already (the marks say so: _settled checked the size)
        sha = yield from _file_step(core, session_id, lease, partial(
            _write_archive, store, committed))
        fault.hit("archive:after_write")
        new = msgspec.structs.replace(
            marks, compaction=None,
            archived=tombstone.Archived(committed, sha, lease.heads, time.time()),
        )
        try:
            yield from _save(core, session_id, lease, root, new)
            fault.hit("archive:after_marks")
            # The file may have grown since we compressed it, if Redis lost our lease on
            # the way: it goes only while Redis still says the lease is ours.
            yield from _fenced_step(core, session_id, lease, partial(gate.archive_files, store))
        except Fenced:
            continue  # the marks we saved are overwritten by the next round's
        except LeaseLost:
            longest = _outran(longest)
            continue
        fault.hit("archive:after_unlink")
        yield from _release(core, session_id, lease.token)
        return True
    raise LeaseTimeout(f"archive of {session_id} kept losing its lease")
