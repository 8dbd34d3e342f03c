"""Rate limits: token buckets per (action, author), shared by all its tabs, and per socket.

Each action's limit (a burst, then a refill rate) is declared once, in
``LIMITS``, by the names of its settings:

- ``chat`` and ``rename`` (a bucket each): ``CHAT_RATE_BURST`` (10), then
  ``CHAT_RATE_PER_SECOND`` (1/s);
- ``read``, ``history`` and ``resume`` together: ``CHAT_READ_RATE_BURST``
  (10), then ``CHAT_READ_RATE_PER_SECOND`` (2/s);
- ``frame``, any frame of one socket: ``CHAT_FRAME_RATE_BURST`` (30), then
  ``CHAT_FRAME_RATE_PER_SECOND`` (10/s). A socket lives in one process, so
  its ``TokenBucket`` is the consumer's own: no Redis round trip per frame;
- ``new_identity``, the new identities one client network may make (a page
  view without a session, ``chat.newcomers``): ``CHAT_NEW_IDENTITY_RATE_BURST``
  (20), then ``CHAT_NEW_IDENTITY_RATE_PER_SECOND`` (one a minute).

With ``REDIS_URL`` the buckets of authors and networks live in Redis, so the
limits hold across every server process; the clock is Redis's own. The
consumers take tokens on the event loop (``hit``); a page view takes one in
its thread (``take``).
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat import redis_client

logger = logging.getLogger(__name__)

# Each action's burst and refill rate, by the names of the settings holding them.
LIMITS: dict[str, tuple[str, str]] = {
    "chat": ("CHAT_RATE_BURST", "CHAT_RATE_PER_SECOND"),
    "rename": ("CHAT_RATE_BURST", "CHAT_RATE_PER_SECOND"),
    "read": ("CHAT_READ_RATE_BURST", "CHAT_READ_RATE_PER_SECOND"),
    "frame": ("CHAT_FRAME_RATE_BURST", "CHAT_FRAME_RATE_PER_SECOND"),
    "new_identity": ("CHAT_NEW_IDENTITY_RATE_BURST", "CHAT_NEW_IDENTITY_RATE_PER_SECOND"),
}
# How often the in-process limiter forgets the buckets that are full again.
SWEEP_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    burst: int
    per_second: float


def limit(action: str) -> Limit:
    """Return the limit of ``action`` (a key of ``LIMITS``), as configured now."""
    burst, per_second = LIMITS[action]
    return Limit(getattr(settings, burst), getattr(settings, per_second))


class RateLimiter(Protocol):
    async def hit(self, *, action: str, author_id: str) -> float | None:
        """Take one token; return None if allowed, else seconds until one is free."""


def _retry_after(missing_tokens: float, rate: float) -> float:
    # Round up to a tenth of a second so a client waiting that long succeeds.
    return max(0.1, math.ceil(missing_tokens / rate * 10) / 10)


class TokenBucket:
    """One bucket: the tokens left when last counted, and when (``time.monotonic``). Full when made."""

    # One per socket and per active author: keep it two floats.
    __slots__ = ("stamp", "tokens")

    def __init__(self, rule: Limit, now: float) -> None:
        self.tokens = float(rule.burst)
        self.stamp = now

    def take(self, rule: Limit, now: float) -> float | None:
        """Take one token; return None if allowed, else seconds until one is free."""
        self.tokens = min(float(rule.burst), self.tokens + max(0.0, now - self.stamp) * rule.per_second)
        self.stamp = now
        if self.tokens < 1:
            return _retry_after(1 - self.tokens, rule.per_second)
        self.tokens -= 1
        return None

    def is_full(self, rule: Limit, now: float) -> bool:
        return self.tokens + max(0.0, now - self.stamp) * rule.per_second >= rule.burst


class LocalRateLimiter:
    """Token buckets in this process.

    A bucket that has filled up again acts like one never made, so the
    buckets of authors gone quiet are dropped, once every ``SWEEP_INTERVAL``.
    Page views take tokens from their own threads, hence the lock.
    """

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        self._lock = threading.Lock()

    async def hit(self, *, action: str, author_id: str) -> float | None:
        return self.take(action=action, owner=author_id)

    def take(self, *, action: str, owner: str) -> float | None:
        """``hit``, without the event loop; ``owner`` is whose bucket it is (an author, a network)."""
        rule = limit(action)
        with self._lock:
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep(now)
            bucket = self._buckets.get((action, owner))
            if bucket is None:
                bucket = self._buckets[(action, owner)] = TokenBucket(rule, now)
            return bucket.take(rule, now)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        rules = {action: limit(action) for action in LIMITS}
        self._buckets = {key: b for key, b in self._buckets.items() if not b.is_full(rules[key[0]], now)}


# KEYS[1] = bucket; ARGV = burst, rate per second. Returns -1 when allowed,
# else the number of tokens missing (as a string: Lua numbers lose decimals).
_BUCKET_SCRIPT = """
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
        self._script = client.register_script(_BUCKET_SCRIPT)

    async def hit(self, *, action: str, author_id: str) -> float | None:
        rule = limit(action)
        try:
            missing = await self._script(*_script_input(action, author_id, rule))
        except (RedisError, OSError) as exc:
            return _fall_back(exc, action=action, owner=author_id)
        return _answer(missing, rule)


def _script_input(action: str, owner: str, rule: Limit) -> tuple[list[str], list[float]]:
    """The bucket script's keys and arguments for ``owner``'s bucket of ``action``."""
    return [redis_client.key("rate", action, owner)], [rule.burst, rule.per_second]


def _answer(missing: str, rule: Limit) -> float | None:
    """None if the script allowed the token, else seconds until one is free."""
    tokens = float(missing)
    return None if tokens < 0 else _retry_after(tokens, rule.per_second)


def _fall_back(exc: Exception, *, action: str, owner: str) -> float | None:
    """Redis is away: take the token from this process's own buckets."""
    logger.warning("rate limit falls back to this process: Redis unavailable (%s)", exc.__class__.__name__)
    return _fallback.take(action=action, owner=owner)


class SyncRedisRateLimiter:
    """``RedisRateLimiter`` for code outside the event loop (a page view's thread): the same script and keys."""

    def __init__(self, client: SyncRedis) -> None:
        self._script = client.register_script(_BUCKET_SCRIPT)

    def take(self, *, action: str, owner: str) -> float | None:
        rule = limit(action)
        try:
            missing = self._script(*_script_input(action, owner, rule))
        except (RedisError, OSError) as exc:
            return _fall_back(exc, action=action, owner=owner)
        return _answer(missing, rule)


_local = LocalRateLimiter()
# Used by RedisRateLimiter while Redis is away.
_fallback = LocalRateLimiter()


def get_rate_limiter() -> RateLimiter:
    """Return the rate limiter for this configuration."""
    return redis_client.bound(RedisRateLimiter) if settings.REDIS_URL else _local


def take(*, action: str, owner: str) -> float | None:
    """Take one token of ``owner``'s bucket outside the event loop; None if allowed, else seconds until one is free.

    With ``REDIS_URL``, one script call on this process's sync client
    (``redis_client.bound_sync``); else this process's buckets.
    """
    if settings.REDIS_URL:
        return redis_client.bound_sync(SyncRedisRateLimiter).take(action=action, owner=owner)
    return _local.take(action=action, owner=owner)
