"""A driver for tests that runs the pure protocols against *scripted* Redis replies.

The protocols of ``journal._core`` are generators of operations, so a test can put any
reply, error or delay into any window of the append protocol, deterministically, the way
h11 drives its state machine in memory. :class:`FakeDriver` answers each Redis operation
(:class:`~journal._core.ops.Lua`, :class:`~journal._core.ops.Call`, ``Send``, ``Collect``)
with the next entry of its script, runs file work (``Blocking``) for real on the test's own
directory, and turns ``Sleep`` into time on a :class:`FakeClock`. Build the protocols' core
with :func:`fake_core` so lease clocks, tokens and backoff jitter come from the test.

A script entry is ``(name, reply)``: the name of the operation it answers (the Lua script's
file stem, the command of a ``Call``, ``"send:<script>"`` or ``"collect"``), and the reply
as Redis would give it. A reply that is an exception is thrown into the protocol (use
:class:`~journal.errors.RedisUnavailable`, as the real drivers do); a callable is called
with the operation and its return value is the reply (to act inside the window).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from journal._core.ops import Blocking, Call, Collect, Lua, Op, Send, Sleep, Steps
from journal._core.state import Core, Env
from journal.settings import JournalSettings

T = TypeVar("T")


@dataclass
class FakeClock:
    """Monotonic seconds that move only when the test (or a ``Sleep``) moves them."""

    t: float = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def fake_core(root: Path, clock: FakeClock, **settings: Any) -> Core:
    """A protocol core on ``root`` whose clock is ``clock``, whose lease tokens are
    ``tok-1``, ``tok-2``, ... and whose backoff jitter always picks the longest delay."""
    counter = iter(range(1, 1 << 30))
    env = Env(now=clock.now, token=lambda: f"tok-{next(counter)}", jitter=lambda lo, hi: hi)
    settings.setdefault("redis_url", "redis://scripted.invalid:6379/0")
    return Core(JournalSettings(root=root, **settings), env)


def op_name(op: Op) -> str:
    """How the script and ``seen`` name an operation."""
    if isinstance(op, Lua):
        return op.script
    if isinstance(op, Call):
        return str(op.args[0])
    if isinstance(op, Send):
        return f"send:{op.lua.script}"
    if isinstance(op, Collect):
        return "collect"
    if isinstance(op, Sleep):
        return f"sleep:{op.seconds:g}"
    fn = op.fn.func if isinstance(op.fn, partial) else op.fn
    return f"file:{getattr(fn, '__name__', repr(fn))}"


class FakeDriver:
    """Runs protocol generators on a script of Redis replies; records every operation."""

    def __init__(
        self, clock: FakeClock, script: Iterable[tuple[str, Any]] = (),
        before_file: dict[str, Callable[[], None]] | None = None,
    ) -> None:
        self.clock = clock
        self.script: deque[tuple[str, Any]] = deque(script)
        # Called before a file operation of that name (e.g. "_write") runs: the window
        # just before the protocol touches the file. Each hook runs once.
        self.before_file = dict(before_file or {})
        self.seen: list[str] = []

    def expect(self, *entries: tuple[str, Any]) -> FakeDriver:
        self.script.extend(entries)
        return self

    def execute(self, op: Op) -> Any:
        name = op_name(op)
        self.seen.append(name)
        if isinstance(op, Sleep):
            self.clock.advance(op.seconds)
            return None
        if isinstance(op, Blocking):
            hook = self.before_file.pop(name.removeprefix("file:"), None)
            if hook is not None:
                hook()
            return op.fn()
        if not self.script:
            raise AssertionError(f"the protocol asked for {name!r}; the script is used up "
                                 f"(seen: {self.seen})")
        want, reply = self.script.popleft()
        if want != name:
            raise AssertionError(f"the protocol asked for {name!r}, the script answers "
                                 f"{want!r} (seen: {self.seen})")
        if callable(reply) and not isinstance(reply, BaseException):
            reply = reply(op)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def run(self, steps: Steps[T]) -> T:
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = steps.throw(error) if error is not None else steps.send(result)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                result, error = None, None
                try:
                    result = self.execute(op)
                except AssertionError:
                    raise
                except Exception as exc:
                    error = exc
        finally:
            steps.close()
