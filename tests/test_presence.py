"""The presence stores: what changes a room, what its snapshot shows, and expiry in Redis."""

import asyncio

import pytest

from chat.presence import LocalPresence, RedisPresence, Tab, aggregate, with_tab
from chat.redis_client import get_redis

ADA = Tab("a" * 20, "Ada", False)
GRACE = Tab("g" * 20, "Grace", True)


def people(snapshot) -> list[tuple[str, int]]:
    return [(user.username, user.tabs) for user in snapshot.users]


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request):
    return LocalPresence() if request.param == "local" else RedisPresence(get_redis())


async def test_join_leave_and_rename_report_changes_and_snapshots_follow(store):
    first = await store.join(room="r", conn="c1", tab=ADA)
    second = await store.join(room="r", conn="c2", tab=ADA)
    assert second > first
    joined = await store.snapshot(room="r")
    assert joined.version > second and people(joined) == [("Ada", 2)]
    assert joined.conns == {"c1", "c2"}
    await store.join(room="r", conn="c3", tab=GRACE)

    assert await store.rename(room="r", author_id=ADA.author_id, username="Ada L.") is True
    assert await store.rename(room="r", author_id="nobody-here", username="X") is False
    assert await store.leave(room="r", conn="c2") is True
    assert await store.leave(room="r", conn="c2") is False  # already gone

    now = await store.snapshot(room="r")
    assert now.version > joined.version
    assert people(now) == [("Ada L.", 1), ("Grace", 1)]
    assert [u.verified for u in now.users] == [False, True]


@pytest.mark.redis
async def test_expired_tabs_are_pruned_and_a_late_heartbeat_brings_one_back(settings):
    settings.CHAT_PRESENCE_TTL = 0.3
    store = RedisPresence(get_redis())
    await store.join(room="r", conn="dead", tab=GRACE)
    await store.join(room="r", conn="alive", tab=ADA)
    assert await store.heartbeat(room="r", conn="alive", tab=ADA) is False  # nothing changed
    await asyncio.sleep(0.4)
    # Both entries have expired: the heartbeat prunes them and puts its own back.
    assert await store.heartbeat(room="r", conn="alive", tab=ADA) is True
    assert people(await store.snapshot(room="r")) == [("Ada", 1)]
    assert await store.leave(room="r", conn="dead") is False


def test_with_tab_counts_one_more_tab_in_order():
    users = aggregate([Tab("b" * 20, "bob", False), Tab("z" * 20, "Zoe", False)])
    assert [(u.username, u.tabs) for u in with_tab(users, Tab("a" * 20, "Ada", False))] == [
        ("Ada", 1), ("bob", 1), ("Zoe", 1)
    ]
    assert [(u.username, u.tabs) for u in with_tab(users, Tab("z" * 20, "Zoe", True))] == [("bob", 1), ("Zoe", 2)]
    assert with_tab(users, Tab("z" * 20, "Zoe", True))[1].verified is True
    # What aggregate would give for the same tabs.
    tabs = [Tab("b" * 20, "bob", False), Tab("z" * 20, "Zoe", False), Tab("c" * 20, "Cy", True)]
    assert with_tab(aggregate(tabs[:2]), tabs[2]) == aggregate(tabs)
