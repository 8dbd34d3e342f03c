"""Per-identity rate limits: a token bucket per (action, author), shared by all tabs.

Defaults: a burst of ``CHAT_RATE_BURST`` (10), refilled at
``CHAT_RATE_PER_SECOND`` (1/s). With ``REDIS_URL`` the bucket lives in Redis,
so the limit holds across every server process; the clock is Redis's own.
"""

import logging
import math
import time
from typing import Protocol

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat import redis_client

logger = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def hit(self, *, action: str, author_id: str) -> float | None:
        """Take one token; return None if allowed, else seconds until one is free."""


def _retry_after(missing_tokens: float, rate: float) -> float:
    # Round up to a tenth of a second so a client waiting that long succeeds.
    return max(0.1, math.ceil(missing_tokens / rate * 10) / 10)


class LocalRateLimiter:
    """Token buckets in this process."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def hit(self, *, action: str, author_id: str) -> float | None:
        burst, rate = settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND
        now = time.monotonic()
        tokens, stamp = self._buckets.get((action, author_id), (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        if tokens < 1:
            self._buckets[(action, author_id)] = (tokens, now)
            return _retry_after(1 - tokens, rate)
        self._buckets[(action, author_id)] = (tokens - 1, now)
        return None


# KEYS[1] = bucket; ARGV = burst, rate per second. Returns -1 when allowed,
# else the number of tokens missing (as a string: Lua numbers lose decimals).
_TOKEN_BUCKET = """
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = tokens >= 1
if allowed then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if allowed then return '-1' end
return tostring(1 - tokens)
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every server process.

    While Redis cannot be reached, each process limits on its own (the same
    rule, in memory), so the chat keeps working through a Redis restart
    rather than refusing every message.
    """

    def __init__(self, client: Redis) -> None:
        self._script = client.register_script(_TOKEN_BUCKET)

    async def hit(self, *, action: str, author_id: str) -> float | None:
        rate = settings.CHAT_RATE_PER_SECOND
        try:
            missing = float(
                await self._script(
                    [redis_client.key("rate", action, author_id)], [settings.CHAT_RATE_BURST, rate]
                )
            )
        except (RedisError, OSError) as exc:
            logger.warning("rate limit falls back to this process: Redis unavailable (%s)", exc.__class__.__name__)
            return await _fallback.hit(action=action, author_id=author_id)
        return None if missing < 0 else _retry_after(missing, rate)


_local = LocalRateLimiter()
# Used by RedisRateLimiter while Redis is away.
_fallback = LocalRateLimiter()


def get_rate_limiter() -> RateLimiter:
    """Return the rate limiter for this configuration."""
    return redis_client.bound(RedisRateLimiter) if settings.REDIS_URL else _local
