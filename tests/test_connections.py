"""The per-identity socket cap: counting, the cap, closing, and expiry in Redis."""

import asyncio

import pytest

from chat.connections import LocalConnections, RedisConnections
from chat.redis_client import get_redis

ADA, GRACE = "a" * 20, "g" * 20


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request, settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 3
    return LocalConnections() if request.param == "local" else RedisConnections(get_redis())


async def test_sockets_over_the_cap_are_refused_per_identity(store):
    assert [await store.open(author_id=ADA, conn=f"c{n}") for n in range(4)] == [True, True, True, False]
    # Another identity has its own count.
    assert await store.open(author_id=GRACE, conn="g0") is True
    # A socket already counted is not refused again (a repeated call).
    assert await store.open(author_id=ADA, conn="c1") is True


async def test_a_closed_socket_frees_its_place(store):
    for n in range(3):
        await store.open(author_id=ADA, conn=f"c{n}")
    await store.close(author_id=ADA, conn="c1")
    await store.close(author_id=ADA, conn="never-opened")  # harmless
    assert await store.open(author_id=ADA, conn="c3") is True
    assert await store.open(author_id=ADA, conn="c4") is False


async def test_the_cap_is_read_at_each_connect(store, settings):
    for n in range(3):
        await store.open(author_id=ADA, conn=f"c{n}")
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 4
    assert await store.open(author_id=ADA, conn="c3") is True


def redis_counter(settings, *, cap: int, ttl: float | None = None) -> RedisConnections:
    """A Redis socket counter with this cap (and socket expiry, in seconds)."""
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = cap
    if ttl is not None:
        settings.CHAT_PRESENCE_TTL = ttl
    return RedisConnections(get_redis())


@pytest.mark.redis
async def test_sockets_of_a_dead_process_stop_counting_after_the_ttl(settings):
    store = redis_counter(settings, cap=2, ttl=1.0)
    await store.open(author_id=ADA, conn="dead")
    await asyncio.sleep(0.6)
    await store.open(author_id=ADA, conn="later")  # keeps the key itself alive
    assert await store.open(author_id=ADA, conn="new") is False
    await asyncio.sleep(0.6)
    # "dead" expired (1 s without a heartbeat): its place is free.
    assert await store.open(author_id=ADA, conn="new") is True


@pytest.mark.redis
async def test_heartbeats_keep_a_socket_counted_past_the_ttl(settings):
    store = redis_counter(settings, cap=2, ttl=1.0)
    await store.open(author_id=ADA, conn="dead")
    await store.open(author_id=ADA, conn="alive")
    for _ in range(3):
        await asyncio.sleep(0.4)
        await store.refresh(author_id=ADA, conn="alive")  # the live socket's heartbeat
    # "dead" was never refreshed: its place is free; "alive" still counts.
    assert await store.open(author_id=ADA, conn="new") is True
    assert await store.open(author_id=ADA, conn="one-more") is False


@pytest.mark.redis
async def test_a_late_heartbeat_counts_its_socket_again(settings):
    store = redis_counter(settings, cap=1, ttl=0.2)
    await store.open(author_id=ADA, conn="slow")
    await asyncio.sleep(0.3)
    await store.refresh(author_id=ADA, conn="slow")  # expired, still open: back in the count
    assert await store.open(author_id=ADA, conn="other") is False


@pytest.mark.redis
async def test_two_processes_share_one_count(settings):
    first, second = redis_counter(settings, cap=2), RedisConnections(get_redis())
    results = await asyncio.gather(*(
        (first if n % 2 else second).open(author_id=ADA, conn=f"c{n}") for n in range(10)
    ))
    assert sorted(results) == [False] * 8 + [True] * 2
