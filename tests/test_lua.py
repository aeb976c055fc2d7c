"""Every branch of the Lua scripts, on fakeredis[lua] (and once on a real server via NOSCRIPT)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

from journal._core.keys import session_keys
from journal._core.scripts import SOURCES as LUA_SOURCES

K = session_keys("journal", "s1")


@pytest.fixture
def r() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def scripts(client: redis.Redis) -> dict[str, Callable[..., Any]]:
    return {name: client.register_script(src) for name, src in LUA_SOURCES.items()}


def begin(client: redis.Redis, token: str, branch: str, first: int, lease: int = 1000) -> list[Any]:
    return scripts(client)["begin"](  # type: ignore[no-any-return]
        keys=[K.state, K.lease, K.want], args=[token, lease, branch, first]
    )


def test_every_key_carries_the_session_hash_tag() -> None:
    for key in K.all:
        assert "{s1}" in key


def test_begin_without_state_asks_for_rebuild(r: redis.Redis) -> None:
    assert begin(r, "t1", "main", 1) == [b"rebuild"]
    assert r.get(K.lease) is None


def test_begin_ok_takes_the_lease_and_returns_len_and_head(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 120, "h:main": 4})
    assert begin(r, "t1", "main", 5, lease=5000) == [b"ok", 120, 4]
    assert r.get(K.lease) == b"t1"
    assert 0 < r.pttl(K.lease) <= 5000


def test_begin_on_a_new_branch_starts_at_one(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 10, "h:main": 4})
    assert begin(r, "t1", "alt", 1) == [b"ok", 10, 0]


def test_begin_conflict_returns_head_and_takes_no_lease(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 10, "h:main": 4})
    assert begin(r, "t1", "main", 9) == [b"conflict", 4]
    assert begin(r, "t1", "main", 4) == [b"conflict", 4]
    assert r.get(K.lease) is None


def test_begin_busy_while_another_holds_the_lease(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 0})
    r.set(K.lease, "other", px=3000)
    status, pttl = begin(r, "t1", "main", 1)
    assert status == b"busy" and 0 < pttl <= 3000
    # the holder itself may begin again (a held lease)
    assert begin(r, "other", "main", 1)[0] == b"ok"


def test_a_waiting_writer_registers_and_gets_the_next_turn(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 0})
    r.set(K.lease, "holder", px=3000)
    assert begin(r, "w1", "main", 1)[0] == b"busy"
    assert begin(r, "w2", "main", 1)[0] == b"busy"
    assert r.get(K.want) == b"w1"  # first come, first served
    r.delete(K.lease)  # the holder let go
    assert begin(r, "holder", "main", 1)[0] == b"busy"  # it waits for w1 now
    assert begin(r, "w2", "main", 1)[0] == b"busy"
    assert begin(r, "w1", "main", 1)[0] == b"ok"
    assert r.get(K.want) is None and r.get(K.lease) == b"w1"


def test_a_waiter_that_conflicts_gives_up_its_turn(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 0, "h:main": 3})
    r.set(K.want, "w1", px=3000)
    assert begin(r, "w1", "main", 9) == [b"conflict", 3]
    assert r.get(K.want) is None


def test_acquire_rebuild_is_create_only(r: redis.Redis) -> None:
    s = scripts(r)["acquire_rebuild"]
    assert s(keys=[K.state, K.lease], args=["t1", 1000]) == [b"ok"]
    assert r.get(K.lease) == b"t1"
    status, _ = s(keys=[K.state, K.lease], args=["t2", 1000])
    assert status == b"busy"
    r.hset(K.state, "len", 0)
    assert s(keys=[K.state, K.lease], args=["t3", 1000]) == [b"exists"]


def test_commit_only_with_our_lease(r: redis.Redis) -> None:
    commit = scripts(r)["commit"]
    r.hset(K.state, mapping={"len": 10, "h:main": 1})
    r.set(K.lease, "other", px=3000)
    assert commit(keys=K.all, args=["t1", "0", 99, "update", "", "", "main", 2]) == 0
    assert r.hget(K.state, "h:main") == b"1"
    r.delete(K.lease)
    assert commit(keys=K.all, args=["t1", "0", 99, "update", "", "", "main", 2]) == 0


def test_commit_updates_releases_and_publishes(r: redis.Redis) -> None:
    commit = scripts(r)["commit"]
    r.hset(K.state, mapping={"len": 10, "h:main": 1, "h:alt": 3})
    r.set(K.lease, "t1", px=3000)
    p = r.pubsub()
    p.subscribe(K.channel)
    assert p.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
    assert commit(keys=K.all, args=["t1", "0", 99, "update", "PUBLISH", "hello", "main", 2]) == 1
    assert r.hgetall(K.state) == {b"len": b"99", b"h:main": b"2", b"h:alt": b"3"}
    assert r.get(K.lease) is None
    msg = p.get_message(timeout=1)
    assert msg is not None and msg["data"] == b"hello"
    p.close()


def test_commit_lets_a_held_lease_go_when_someone_waits(r: redis.Redis) -> None:
    commit = scripts(r)["commit"]
    r.hset(K.state, mapping={"len": 10})
    r.set(K.lease, "t1", px=3000)
    assert commit(keys=K.all, args=["t1", "100", 20, "update", "", "", "main", 1]) == 1
    assert r.get(K.lease) == b"t1" and r.pttl(K.lease) <= 100
    r.set(K.want, "w1", px=3000)
    assert commit(keys=K.all, args=["t1", "100", 30, "update", "", "", "main", 2]) == 2
    assert r.get(K.lease) is None and r.hget(K.state, "h:main") == b"2"


def test_commit_with_no_hold_leaves_the_leases_expiry_as_it_is(r: redis.Redis) -> None:
    """"" as the hold: the writer still trusts the hold an earlier commit set, so the
    lease's expiry is not moved, neither later nor earlier; a waiter still gets it."""
    commit = scripts(r)["commit"]
    r.hset(K.state, mapping={"len": 10})
    r.set(K.lease, "t1", px=3000)
    assert commit(keys=K.all, args=["t1", "", 20, "update", "", "", "main", 1]) == 1
    assert r.get(K.lease) == b"t1" and 2000 < r.pttl(K.lease) <= 3000
    r.pexpire(K.lease, 200)
    assert commit(keys=K.all, args=["t1", "", 30, "update", "", "", "main", 2]) == 1
    assert 0 < r.pttl(K.lease) <= 200
    assert r.hgetall(K.state) == {b"len": b"30", b"h:main": b"2"}
    r.set(K.want, "w1", px=3000)
    assert commit(keys=K.all, args=["t1", "", 40, "update", "", "", "main", 3]) == 2
    assert r.get(K.lease) is None


def test_commit_can_keep_the_lease_and_replace_state(r: redis.Redis) -> None:
    commit = scripts(r)["commit"]
    r.hset(K.state, mapping={"len": 10, "h:main": 1, "h:gone": 3})
    r.set(K.lease, "t1", px=100)
    assert commit(keys=K.all, args=["t1", "5000", 50, "replace", "", "", "main", 7, "b", 2]) == 1
    assert r.hgetall(K.state) == {b"len": b"50", b"h:main": b"7", b"h:b": b"2"}
    assert r.get(K.lease) == b"t1" and r.pttl(K.lease) > 1000


def test_commit_replaces_a_state_with_thousands_of_branches(r: redis.Redis) -> None:
    """A rebuild commits every head at once: more fields than one unpack() can take."""
    commit = scripts(r)["commit"]
    r.set(K.lease, "t1", px=3000)
    heads: list[str | int] = []
    for i in range(5000):
        heads += [f"b{i}", i + 1]
    assert commit(keys=K.all, args=["t1", "0", 777, "replace", "", "", *heads]) == 1
    state = r.hgetall(K.state)
    assert len(state) == 5001 and state[b"len"] == b"777" and state[b"h:b4999"] == b"5000"


def test_release_only_our_own(r: redis.Redis) -> None:
    release = scripts(r)["release"]
    r.set(K.lease, "other")
    assert release(keys=[K.lease], args=["t1"]) == 0
    assert r.get(K.lease) == b"other"
    assert release(keys=[K.lease], args=["other"]) == 1
    assert r.get(K.lease) is None


def test_scripts_survive_a_script_flush(r: redis.Redis) -> None:
    """NOSCRIPT safety: redis-py Script objects reload after the cache is gone."""
    s = scripts(r)
    r.hset(K.state, "len", 0)
    assert s["begin"](keys=[K.state, K.lease, K.want], args=["t", 1000, "main", 1])[0] == b"ok"
    r.script_flush()
    assert s["release"](keys=[K.lease], args=["t"]) == 1


def test_scripts_on_a_real_server_after_restart(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        s = scripts(client)
        assert begin(client, "t", "main", 1) == [b"rebuild"]
        redis_server.restart()  # empty memory and an empty script cache
        client.connection_pool.disconnect()
        assert s["release"](keys=[K.lease], args=["t"]) == 0
    finally:
        client.close()


def reclaim(client: redis.Redis, token: str, lease: int = 1000) -> list[Any]:
    return scripts(client)["reclaim"](  # type: ignore[no-any-return]
        keys=[K.state, K.lease], args=[token, lease]
    )


def test_reclaim_without_state_asks_for_rebuild(r: redis.Redis) -> None:
    assert reclaim(r, "t1") == [b"rebuild"]
    assert r.get(K.lease) is None


def test_reclaim_renews_our_own_lease_and_returns_len(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 120, "h:main": 4})
    r.set(K.lease, "t1", px=50)
    assert reclaim(r, "t1", lease=5000) == [b"ok", 120]
    assert r.get(K.lease) == b"t1" and r.pttl(K.lease) > 1000


def test_reclaim_takes_a_free_lease(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 7})
    assert reclaim(r, "t1") == [b"ok", 7]
    assert r.get(K.lease) == b"t1"


def test_reclaim_of_a_busy_lease_neither_takes_it_nor_waits_in_line(r: redis.Redis) -> None:
    r.hset(K.state, mapping={"len": 7})
    r.set(K.lease, "other", px=5000)
    assert reclaim(r, "t1") == [b"busy"]
    assert r.get(K.lease) == b"other"
    assert r.get(K.want) is None  # closing never makes the holder hand its lease over
