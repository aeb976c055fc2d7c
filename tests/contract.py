"""The machinery of the contract suites (the recorder-test-case pattern of eventsourcing).

A contract is a class of test methods written once against ``self.make_journal()`` (and
``self.backend`` for what only a test may do: lose Redis, touch the files). A test module
runs it everywhere by subclassing it once per backend and API:

    class TestJournalOnCluster(OnCluster, SyncAPI, JournalContract): ...

so a new test method runs on every backend and both APIs with no list of names. The
backends come from the ``<kind>_backend`` fixtures of conftest.py; ``AsyncAPI`` hands out an
:class:`~journal.AsyncJournal` behind the blocking API (``tests.backends.BlockingAsync``),
so the very same method exercises the asyncio journal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from journal import AsyncJournal, Journal
from tests.backends import Backend, BlockingAsync


class Contract:
    """Base of every contract suite. Subclasses pick a backend (``On*``) and an API."""

    backend_fixture: ClassVar[str]
    api: ClassVar[str] = "sync"
    backend: Backend

    @pytest.fixture(autouse=True)
    def _contract_backend(self, request: pytest.FixtureRequest) -> Iterator[None]:
        self.backend = request.getfixturevalue(self.backend_fixture)
        self._opened: list[Journal | BlockingAsync] = []
        try:
            yield
        finally:
            for j in self._opened:  # whatever a failing test left open
                with contextlib.suppress(Exception):
                    j.close()

    def make_journal(self, **options: Any) -> Journal:
        """An open journal on this backend, in this suite's API (``BlockingAsync`` for the
        async API: the same methods, without ``await``)."""
        j: Journal | BlockingAsync
        if self.api == "async":
            j = BlockingAsync(self.backend.async_journal(**options))
        else:
            j = self.backend.journal(**options)
        self._opened.append(j)
        return j  # type: ignore[return-value]  # BlockingAsync has Journal's methods

    def make_async_journal(self, **options: Any) -> AsyncJournal:
        """An asyncio journal on this backend (not open: ``async with`` it)."""
        return self.backend.async_journal(**options)


class SyncAPI:
    api: ClassVar[str] = "sync"


class AsyncAPI:
    api: ClassVar[str] = "async"


class OnFakeredis:
    backend_fixture: ClassVar[str] = "fakeredis_backend"


class OnRedisServer:
    backend_fixture: ClassVar[str] = "server_backend"


class OnContainer:
    backend_fixture: ClassVar[str] = "container_backend"


class OnCluster:
    backend_fixture: ClassVar[str] = "cluster_backend"


class OnSentinel:
    backend_fixture: ClassVar[str] = "sentinel_backend"
