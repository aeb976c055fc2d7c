"""The read side: a branch's head, a range of its events, and every head of a session.
Each rebuilds the session's Redis state from the file when Redis lost it, and rolls
forward lines a dead writer left past the committed length."""

from __future__ import annotations

from functools import partial

from journal._core.ops import Blocking, Call, Steps, text
from journal._core.rebuild import catch_up, rebuild, settle_pending
from journal._core.state import Core, heads_of
from journal._model.records import EventRecord
from journal._storage import gate


def branch_state(core: Core, session_id: str, branch_id: str) -> Steps[tuple[int, int] | None]:
    """(committed length, head of the branch), rebuilding the state when Redis lost it;
    None when the session does not exist at all."""
    keys = core.keys(session_id)
    waiter = core.backoff()
    yield from settle_pending(core, session_id)
    rolled = False
    while True:
        reply = yield Call(("HMGET", keys.state, "len", f"h:{branch_id}"))
        if reply[0] is not None:
            committed = int(reply[0])
            if not rolled:
                rolled = True
                if (yield from catch_up(core, session_id, committed)):
                    continue
            return committed, int(reply[1] or 0)
        if not (yield Blocking(partial(gate.exists, core.store(session_id)))):
            return None
        yield from rebuild(core, session_id, waiter)


def session_state(core: Core, session_id: str) -> Steps[tuple[int, dict[str, int]]]:
    """(committed length, every branch head) of a session; rebuilt when missing."""
    keys = core.keys(session_id)
    waiter = core.backoff()
    yield from settle_pending(core, session_id)
    rolled = False
    while True:
        raw = yield Call(("HGETALL", keys.state))
        fields = {text(k): text(v) for k, v in (raw or {}).items()}
        if "len" in fields and not rolled:
            rolled = True
            if (yield from catch_up(core, session_id, int(fields["len"]))):
                continue
        if "len" in fields:
            return int(fields["len"]), heads_of(fields)
        if not (yield Blocking(partial(gate.exists, core.store(session_id)))):
            return 0, {}
        yield from rebuild(core, session_id, waiter)


def head(core: Core, session_id: str, branch_id: str) -> Steps[int]:
    state = yield from branch_state(core, session_id, branch_id)
    return 0 if state is None else state[1]


def read(
    core: Core, session_id: str, branch_id: str, from_sequence: int, limit: int
) -> Steps[list[EventRecord]]:
    state = yield from branch_state(core, session_id, branch_id)
    if state is None or limit <= 0:
        return []
    committed, top = state
    first = max(from_sequence, 1)
    last = min(top, first + limit - 1)
    store = core.store(session_id)
    records: list[EventRecord] = yield Blocking(
        partial(gate.read, store, branch_id, first, last, committed)
    )
    return records
