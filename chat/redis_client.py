"""The Redis connection shared by presence and rate limits (when ``REDIS_URL`` is set).

The sockets' code runs on an event loop and uses a ``redis.asyncio`` client
per loop (``get_redis``, ``bound``). A page view runs in a thread of its
own (chatsite/http.py) and uses the process's one sync client
(``bound_sync``).
"""

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis as sync_redis
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


# Cut a sync call off after this long: a page view waits for it, and falls
# back to this process's own state when Redis does not answer.
SYNC_TIMEOUT = 2.0
_sync_lock = threading.Lock()
# The sync client, and the objects built on it, by REDIS_URL.
_sync_clients: dict[str, sync_redis.Redis] = {}
_sync_bound: dict[tuple[str, Callable[..., Any]], Any] = {}


def _sync_client(url: str) -> sync_redis.Redis:
    """This process's sync client for ``url``, shared by its threads (the pool is thread-safe); under ``_sync_lock``."""
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = sync_redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SYNC_TIMEOUT,
            socket_connect_timeout=SYNC_TIMEOUT,
            health_check_interval=30,
        )
    return client


def bound_sync(factory: Callable[[sync_redis.Redis], T]) -> T:
    """Return ``factory(client)`` for the process's sync client, made once and shared (``bound``'s sync twin)."""
    url = settings.REDIS_URL
    with _sync_lock:
        made = _sync_bound.get((url, factory))
        if made is None:
            made = _sync_bound[(url, factory)] = factory(_sync_client(url))
    return cast(T, made)


def key(*parts: str) -> str:
    """Return a key under the chat's Redis prefix."""
    return ":".join((settings.CHAT_REDIS_PREFIX, *parts))
