"""The Redis connection shared by presence and rate limits (when ``REDIS_URL`` is set)."""

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from django.conf import settings

# A redis.asyncio client belongs to the event loop that created it.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.Redis]" = weakref.WeakKeyDictionary()


def get_redis() -> redis.Redis:
    """Return this event loop's client for ``settings.REDIS_URL``."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            decode_responses=True,
            socket_timeout=None,  # presence calls are short; never cut a reply off
            health_check_interval=30,
        )
        _clients[loop] = client
    return client


T = TypeVar("T")
# Objects built on a loop's client (with their registered scripts), by event loop.
_bound: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Callable[..., Any], Any]]" = (
    weakref.WeakKeyDictionary()
)


def bound(factory: Callable[[redis.Redis], T]) -> T:
    """Return ``factory(client)`` for this event loop's client, made once and shared.

    The stores register their Lua scripts once per process, not once per
    socket (a socket's share of server memory, docs/performance.md).
    """
    made = _bound.setdefault(asyncio.get_running_loop(), {})
    if factory not in made:
        made[factory] = factory(get_redis())
    return made[factory]


def key(*parts: str) -> str:
    """Return a key under the chat's Redis prefix."""
    return ":".join((settings.CHAT_REDIS_PREFIX, *parts))
