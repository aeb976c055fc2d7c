"""The journal's contract (tests/journal_contract.py) on every backend, in both APIs, and
the checks that need no backend.

One class per backend and API: a method added to ``JournalContract`` runs on all of them.
The container classes skip without a Docker engine; the cluster and Sentinel classes share
one cluster and one Sentinel setup for the whole session (conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from journal import (
    AppendOutcomeUnknown,
    CorruptLine,
    InvalidId,
    InvalidInput,
    InvalidRecord,
    JournalError,
    SequenceConflict,
)
from tests.backends import Backend
from tests.contract import (
    AsyncAPI,
    OnCluster,
    OnContainer,
    OnFakeredis,
    OnRedisServer,
    OnSentinel,
    SyncAPI,
)
from tests.journal_contract import JournalContract, ev

pytestmark = pytest.mark.timeout(60)


class TestJournalOnFakeredis(OnFakeredis, SyncAPI, JournalContract):
    pass


class TestAsyncJournalOnFakeredis(OnFakeredis, AsyncAPI, JournalContract):
    pass


class TestJournalOnRedisServer(OnRedisServer, SyncAPI, JournalContract):
    pass


class TestAsyncJournalOnRedisServer(OnRedisServer, AsyncAPI, JournalContract):
    pass


class TestJournalOnContainer(OnContainer, SyncAPI, JournalContract):
    pass


class TestAsyncJournalOnContainer(OnContainer, AsyncAPI, JournalContract):
    pass


class TestJournalOnCluster(OnCluster, SyncAPI, JournalContract):
    pass


class TestAsyncJournalOnCluster(OnCluster, AsyncAPI, JournalContract):
    pass


class TestJournalOnSentinel(OnSentinel, SyncAPI, JournalContract):
    pass


class TestAsyncJournalOnSentinel(OnSentinel, AsyncAPI, JournalContract):
    pass


# ----- no backend needed -----------------------------------------------------------------


def test_every_error_is_a_journal_error() -> None:
    for cls in (SequenceConflict, AppendOutcomeUnknown, CorruptLine, InvalidId, InvalidRecord):
        assert issubclass(cls, JournalError)


def test_settings_come_from_the_environment(
    real_backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert real_backend.url is not None
    monkeypatch.setenv("JOURNAL_ROOT", str(tmp_path / "envroot"))
    monkeypatch.setenv("JOURNAL_REDIS_URL", real_backend.url)
    monkeypatch.setenv("JOURNAL_DURABILITY", "none")
    from journal import Journal

    with Journal() as j:
        assert j.settings.durability == "none"
        j.append(ev(1))
    assert (tmp_path / "envroot" / "events" / "s1.jsonl").exists()


def test_bad_settings_are_a_clear_error() -> None:
    from journal import Journal

    with pytest.raises(InvalidInput, match="durability"):
        Journal("x", "redis://127.0.0.1:1", durability="sometimes")


def test_passwords_never_show(tmp_path: Path) -> None:
    from journal import Journal, RedisUnavailable

    j = Journal(tmp_path, "redis://user:s3cret@127.0.0.1:1/0", socket_timeout_s=0.5)
    assert "s3cret" not in repr(j) and "s3cret" not in repr(j.settings)
    with pytest.raises(RedisUnavailable) as info:
        j.open()
    assert "s3cret" not in str(info.value)
    assert not (tmp_path / "events").exists()


