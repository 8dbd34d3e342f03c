"""The token buckets: each action's own limit, in memory and in Redis, and forgetting quiet authors."""

import os
import time

import pytest
import redis
from django.conf import settings as django_settings

from chat import ratelimit
from chat.ratelimit import LocalRateLimiter, RedisRateLimiter, SyncRedisRateLimiter, TokenBucket
from chat.redis_client import get_redis
from tests.servers import free_port, manage

ADA, GRACE = "a" * 20, "g" * 20


def test_the_defaults(settings):
    assert ratelimit.limit("chat") == ratelimit.limit("rename") == ratelimit.Limit(10, 1.0)
    assert ratelimit.limit("read") == ratelimit.Limit(10, 2.0)
    assert ratelimit.limit("frame") == ratelimit.Limit(30, 10.0)
    assert ratelimit.limit("new_identity") == ratelimit.Limit(20, 1 / 60)
    settings.CHAT_READ_RATE_BURST, settings.CHAT_READ_RATE_PER_SECOND = 3, 0.5
    assert ratelimit.limit("read") == ratelimit.Limit(3, 0.5)


def test_a_token_bucket_allows_its_burst_then_its_rate():
    rule = ratelimit.Limit(burst=3, per_second=2.0)
    bucket = TokenBucket(rule, now=100.0)
    assert [bucket.take(rule, 100.0) for _ in range(4)] == [None, None, None, 0.5]
    assert bucket.take(rule, 100.4) == 0.1  # 0.8 tokens: 0.1 s to the next
    assert bucket.take(rule, 100.5) is None
    assert not bucket.is_full(rule, 101.9)  # 0 tokens left at 100.5: full 1.5 s later
    assert bucket.is_full(rule, 102.0)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request):
    return LocalRateLimiter() if request.param == "local" else RedisRateLimiter(get_redis())


async def test_each_action_has_its_own_limit_and_bucket(limiter, settings):
    settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND = 2, 0.01
    settings.CHAT_READ_RATE_BURST, settings.CHAT_READ_RATE_PER_SECOND = 4, 0.01
    reads = [await limiter.hit(action="read", author_id=ADA) for _ in range(5)]
    assert reads[:4] == [None] * 4 and reads[4] > 0
    chats = [await limiter.hit(action="chat", author_id=ADA) for _ in range(3)]
    assert chats[:2] == [None] * 2 and chats[2] > 0
    assert await limiter.hit(action="read", author_id=GRACE) is None


def test_the_local_limiter_forgets_authors_gone_quiet(monkeypatch):
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limiter = LocalRateLimiter()
    for n in range(1000):
        assert limiter.take(action="chat", owner=f"author-{n}") is None
    limiter.take(action="read", owner="reader")
    assert len(limiter._buckets) == 1001

    clock[0] += 30  # full again (10 tokens at 1/s), but not yet swept
    limiter.take(action="chat", owner="busy")
    assert len(limiter._buckets) == 1002
    clock[0] += ratelimit.SWEEP_INTERVAL
    for _ in range(5):
        limiter.take(action="chat", owner="busy")
    assert set(limiter._buckets) == {("chat", "busy")}
    # Forgetting a full bucket changes nothing: it starts full again.
    assert limiter._buckets["chat", "busy"].tokens == 5


NETWORK = "203.0.113.7"


def new_identities(limiter, count: int) -> list[float | None]:
    return [limiter.take(action="new_identity", owner=NETWORK) for _ in range(count)]


@pytest.mark.parametrize("backend", ["local", pytest.param("redis", marks=pytest.mark.redis)])
def test_take_serves_a_page_views_thread(backend, settings):
    if backend == "local":
        settings.REDIS_URL = ""
    settings.CHAT_NEW_IDENTITY_RATE_BURST, settings.CHAT_NEW_IDENTITY_RATE_PER_SECOND = 2, 0.5
    taken = [ratelimit.take(action="new_identity", owner=NETWORK) for _ in range(3)]
    assert taken[:2] == [None, None] and 0 < taken[2] <= 2.0
    assert ratelimit.take(action="new_identity", owner="198.51.100.9") is None


@pytest.mark.redis
def test_the_sync_limiter_shares_its_buckets_across_clients_processes_and_the_async_limiter(settings):
    settings.CHAT_NEW_IDENTITY_RATE_BURST, settings.CHAT_NEW_IDENTITY_RATE_PER_SECOND = 5, 0.001
    # Two limiters, each on a client (and connections) of its own, as two server processes have.
    one = SyncRedisRateLimiter(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True))
    other = SyncRedisRateLimiter(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True))
    assert new_identities(one, 2) + new_identities(other, 1) == [None] * 3
    # Another process, on the same Redis and key prefix, takes the next two.
    env = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "CHAT_REDIS_PREFIX": settings.CHAT_REDIS_PREFIX,
        "CHAT_NEW_IDENTITY_RATE_BURST": "5",
        "CHAT_NEW_IDENTITY_RATE_PER_SECOND": "0.001",
    }
    code = f"from chat import ratelimit; print(ratelimit.take(action='new_identity', owner='{NETWORK}'))"
    assert [manage(env, "shell", "-c", code).split()[-1] for _ in range(2)] == ["None", "None"]
    assert new_identities(one, 1)[0] > 0 and new_identities(other, 1)[0] > 0  # the five are spent


@pytest.mark.redis
async def test_the_sync_and_the_async_limiter_run_one_script_on_one_bucket(settings):
    settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND = 2, 0.01
    sync = SyncRedisRateLimiter(redis.Redis.from_url(django_settings.REDIS_URL, decode_responses=True))
    assert sync.take(action="chat", owner=ADA) is None
    assert await RedisRateLimiter(get_redis()).hit(action="chat", author_id=ADA) is None
    assert sync.take(action="chat", owner=ADA) > 0


def test_the_sync_limiter_falls_back_to_this_process_while_redis_is_away(settings, caplog):
    settings.CHAT_NEW_IDENTITY_RATE_BURST, settings.CHAT_NEW_IDENTITY_RATE_PER_SECOND = 2, 0.01
    away = redis.Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    limiter = SyncRedisRateLimiter(away)
    owner = f"away-{time.monotonic_ns()}"  # the fallback's buckets live as long as the process
    taken = [limiter.take(action="new_identity", owner=owner) for _ in range(3)]
    assert taken[:2] == [None, None] and taken[2] > 0
    assert "rate limit falls back to this process: Redis unavailable (ConnectionError)" in caplog.text
