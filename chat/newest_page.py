"""The newest messages of each room, from a cache: the first render and a `history` without `before`.

Every room page and most `history` frames ask for the same thing: the
room's newest messages. They come from Django's cache (Redis with
``REDIS_URL``, shared by every process; the process's memory otherwise),
tagged with the room's version: a random token that the services replace,
once the change has committed, whenever the room's messages change (stored
or deleted). A page is stored under the version read *before* its query,
so a page read before a change never passes for the room after it; at
worst a reader queries once more.
"""

import contextlib
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from django.core.cache import BaseCache, caches
from django.core.signals import setting_changed
from django.dispatch import receiver

from chat import protocol
from chat.models import Message

logger = logging.getLogger(__name__)

# Enough for the largest `history` page, and one more to tell whether older ones exist.
CACHED = protocol.HISTORY_MAX_LIMIT + 1
# A page left behind when marking its room changed failed (Redis away) lives this long at most.
TIMEOUT = 60


class CachedMessage(NamedTuple):
    """A stored message as pages and frames show it (``protocol.StoredMessage``); cheap to cache."""

    pk: int
    room_id: str
    author_id: str
    username: str
    verified: bool
    text: str
    created_at: datetime
    client_id: str | None


_backend: BaseCache | None = None


def _cache() -> BaseCache:
    """This process's one cache client.

    ``django.core.cache.cache`` keeps a client per context
    (django/utils/connection.py ``BaseConnectionHandler``: an asgiref
    ``Local`` that is not thread-critical): every page view and every socket's
    `history` would build a Redis client and connection pool of its own.
    Measured: 20 KB more server memory per connecting browser. The Redis
    client is thread-safe; one per process is enough.
    """
    global _backend
    if _backend is None:
        _backend = caches.create_connection("default")
    return _backend


@receiver(setting_changed)
def _new_cache_settings(*, setting: str, **kwargs: object) -> None:
    global _backend
    if setting == "CACHES":
        _backend = None


def _keys(room: str) -> tuple[str, str]:
    return f"chat:room:{room}:version", f"chat:room:{room}:newest"


def newest(*, room: str, limit: int) -> tuple[list[CachedMessage], bool]:
    """Return the newest ``limit`` messages of ``room``, oldest first, and whether older ones exist."""
    version_key, page_key = _keys(room)
    try:
        found = _cache().get_many([version_key, page_key])
    except Exception as exc:  # Redis away: the database answers alone
        logger.warning("newest page: cache unavailable (%s)", exc.__class__.__name__)
        page = _newest_stored(room)
        return page[:limit][::-1], len(page) > limit
    version, cached = found.get(version_key), found.get(page_key)
    if cached is not None and cached[0] == version:
        page = cached[1]
    else:
        page = _newest_stored(room)
        with contextlib.suppress(Exception):
            _cache().set(page_key, (version, page), TIMEOUT)
    return page[:limit][::-1], len(page) > limit


def changed(rooms: Iterable[str]) -> None:
    """Mark the rooms' messages changed (after commit): their cached pages are not used again."""
    try:
        _cache().set_many({_keys(room)[0]: uuid.uuid4().hex for room in rooms}, None)
    except Exception as exc:  # a cached page lives TIMEOUT at most
        logger.warning("newest page: cannot mark rooms changed (%s)", exc.__class__.__name__)


def _newest_stored(room: str) -> list[CachedMessage]:
    rows = (
        Message.objects.filter(room_id=room)
        .shown()
        .order_by("-id")
        .values_list("id", "room_id", "author_id", "username", "verified", "text", "created_at", "client_id")
    )
    return [CachedMessage(*row) for row in rows[:CACHED]]
