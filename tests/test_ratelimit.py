"""The token buckets: each action's own limit, in memory and in Redis, and forgetting quiet authors."""

import time

import pytest

from chat import ratelimit
from chat.ratelimit import LocalRateLimiter, RedisRateLimiter, TokenBucket
from chat.redis_client import get_redis

ADA, GRACE = "a" * 20, "g" * 20


def test_the_defaults(settings):
    assert ratelimit.limit("chat") == ratelimit.limit("rename") == ratelimit.Limit(10, 1.0)
    assert ratelimit.limit("read") == ratelimit.Limit(10, 2.0)
    assert ratelimit.limit("frame") == ratelimit.Limit(30, 10.0)
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
        assert limiter.take(action="chat", author_id=f"author-{n}") is None
    limiter.take(action="read", author_id="reader")
    assert len(limiter._buckets) == 1001

    clock[0] += 30  # full again (10 tokens at 1/s), but not yet swept
    limiter.take(action="chat", author_id="busy")
    assert len(limiter._buckets) == 1002
    clock[0] += ratelimit.SWEEP_INTERVAL
    for _ in range(5):
        limiter.take(action="chat", author_id="busy")
    assert set(limiter._buckets) == {("chat", "busy")}
    # Forgetting a full bucket changes nothing: it starts full again.
    assert limiter._buckets["chat", "busy"].tokens == 5
