"""The operator's rebuild: forget a session's Redis state and rebuild it from the file,
checking every line (``journal rebuild``, ``Journal.rebuild``).

The automatic rebuild of ``journal._core.rebuild`` (Redis lost the state) may trust the index
for the committed prefix; an operator who asks for a rebuild wants the file checked, so
this one scans and decodes every line and reports a damaged one as ``CorruptLine``.
Written as a generator of protocol operations like the other protocols: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from journal._core.ops import Blocking, Call, Lua, Sleep, Steps, text
from journal._core.read import session_state
from journal._core.rebuild import rebuild as rebuild_state
from journal._core.state import Core
from journal.errors import LeaseTimeout

__all__ = ["RebuildResult", "rebuild"]


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What :meth:`journal.Journal.rebuild` did to one session."""

    session_id: str
    heads: dict[str, int]  # every branch head, rebuilt from the file
    before: dict[str, int] | None  # the heads Redis held before; None: it held no state
    file_bytes: int | None  # the size of the events file; None: there is no file
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)  # branch: (was, now)


def rebuild(core: Core, session_id: str, wait_s: float) -> Steps[RebuildResult]:
    """Clear the session's state (only while no writer holds its lease: waits up to
    ``wait_s``), then rebuild it with a full scan of the file."""
    keys, store = core.keys(session_id), core.store(session_id)
    waited = 0.0
    while True:
        reply = yield Lua("clear_state", [keys.state, keys.lease], [])
        if text(reply[0]) == "ok":
            break
        if waited >= wait_s:
            raise LeaseTimeout(
                f"{session_id}: a writer held the session's lease for {wait_s:g}s; "
                "try again (or wait longer)"
            )
        pause = min(0.05, max(int(reply[1]), 1) / 1000)
        waited += pause
        yield Sleep(pause)
    flat = [text(v) for v in reply[1]]
    old = dict(zip(flat[::2], flat[1::2], strict=True))
    before = {k[2:]: int(v) for k, v in old.items() if k.startswith("h:")} if old else None
    if not (yield Blocking(store.path.exists)):
        return RebuildResult(session_id, {}, before, None)
    waiter = core.backoff()
    # Another reader may find the state missing at the same moment and rebuild it first
    # (the create-only lease lets exactly one do it); we then wait for its result.
    while (yield Call(("EXISTS", keys.state))) == 0:
        yield from rebuild_state(core, session_id, waiter, full=True)
    _, heads = yield from session_state(core, session_id)
    size = yield Blocking(store.size)
    was = before or {}
    changed = {} if before is None else {
        b: (was.get(b, 0), heads.get(b, 0))
        for b in set(was) | set(heads) if was.get(b, 0) != heads.get(b, 0)
    }
    return RebuildResult(session_id, dict(heads), before, size, changed)
