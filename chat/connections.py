"""A cap on open sockets per identity, across all rooms and server processes.

One browser (one ``author_id``) may hold at most
``CHAT_MAX_SOCKETS_PER_IDENTITY`` sockets (default 20); the consumer closes a
socket over the cap with 4429. With ``REDIS_URL`` each identity's sockets are
a sorted set in Redis (member: the socket's id, ``ChatConsumer.conn``, score: its expiry
time); the presence heartbeat refreshes the entry, so the sockets of a killed
process stop counting after ``CHAT_PRESENCE_TTL``. Without ``REDIS_URL`` the
count is a dict in this process.
"""

from typing import Protocol

from django.conf import settings
from redis.asyncio import Redis

from chat import redis_client


class ConnectionCounter(Protocol):
    async def open(self, *, author_id: str, conn: str) -> bool:
        """Count a socket of ``author_id``; False (and not counted) if that is over the cap."""

    async def refresh(self, *, author_id: str, conn: str) -> None:
        """Keep an open socket counted (called on every presence heartbeat)."""

    async def close(self, *, author_id: str, conn: str) -> None:
        """Stop counting a socket."""


class LocalConnections:
    """Open sockets of this process."""

    def __init__(self) -> None:
        self._open: dict[str, set[str]] = {}

    async def open(self, *, author_id: str, conn: str) -> bool:
        conns = self._open.setdefault(author_id, set())
        if conn not in conns and len(conns) >= settings.CHAT_MAX_SOCKETS_PER_IDENTITY:
            return False
        conns.add(conn)
        return True

    async def refresh(self, *, author_id: str, conn: str) -> None:
        pass  # entries die with the process that holds them

    async def close(self, *, author_id: str, conn: str) -> None:
        conns = self._open.get(author_id, set())
        conns.discard(conn)
        if not conns:
            self._open.pop(author_id, None)


# KEYS[1] = the identity's sockets (zset); ARGV = time to live in ms, cap,
# socket id (`ChatConsumer.conn`). Prunes expired sockets, then adds this one if under the cap
# (one already counted is just refreshed). Returns 1 if counted, else 0.
_OPEN = """
local ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""
# Same keys and arguments (no cap): a live socket is counted again even if
# its entry expired meanwhile (a slow heartbeat), as presence does.
_REFRESH = """
local ttl = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
"""


class RedisConnections:
    """Open sockets of every server process, counted in Redis."""

    def __init__(self, client: Redis) -> None:
        self._open = client.register_script(_OPEN)
        self._refresh = client.register_script(_REFRESH)
        self._client = client

    @staticmethod
    def _key(author_id: str) -> str:
        return redis_client.key("sockets", author_id)

    @staticmethod
    def _ttl_ms() -> int:
        return int(settings.CHAT_PRESENCE_TTL * 1000)

    async def open(self, *, author_id: str, conn: str) -> bool:
        cap = settings.CHAT_MAX_SOCKETS_PER_IDENTITY
        return bool(await self._open([self._key(author_id)], [self._ttl_ms(), cap, conn]))

    async def refresh(self, *, author_id: str, conn: str) -> None:
        await self._refresh([self._key(author_id)], [self._ttl_ms(), conn])

    async def close(self, *, author_id: str, conn: str) -> None:
        await self._client.zrem(self._key(author_id), conn)


_local = LocalConnections()


def get_connections() -> ConnectionCounter:
    """Return the socket counter for this configuration."""
    return redis_client.bound(RedisConnections) if settings.REDIS_URL else _local
