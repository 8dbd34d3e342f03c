"""The one place that broadcasts: channel-layer groups and the events sent to them.

Room events go to one channel per server process (``chat.fanout``), which
passes them on to its sockets in the room; author events (a rename) the same way,
to the tabs of that browser it holds.

Services call :func:`send_event_on_commit`; the event leaves only once the
write that caused it has committed. Event payloads carry the frame already
encoded as JSON text, so a broadcast is encoded once, not once per recipient.

Crossing the sync/async line happens in :func:`call_service`: the consumer
runs a service in the database thread and publishes what it queued there from
the event loop. Sync callers (the admin, management commands) publish through
``async_to_sync`` right at commit.
"""

import contextvars
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")
Event = dict[str, Any]

# Events queued by a service running on behalf of the event loop.
_outbox: contextvars.ContextVar[list[tuple[str, Event]] | None] = contextvars.ContextVar(
    "chat_event_outbox", default=None
)


def room_group(room: str) -> str:
    """Return the channel-layer group of everyone connected to ``room``."""
    return f"chat.room.{room}"


# Every server process's hub is in this group: a browser's events (a rename)
# go to all processes, and each hands them to the tabs of that browser it
# holds. Renames are rare, so this costs less than a group per browser, which
# cost each new browser a subscribe on connect and an unsubscribe on close.
IDENTITY_GROUP = "chat.identities"


def room_frame(room: str, frame: str) -> Event:
    """The event that sends ``frame`` (encoded JSON) to every socket in ``room``."""
    return {"type": "room.frame", "room": room, "frame": frame}


def room_message(room: str, *, message_id: int, prev_id: int | None, frame: str) -> Event:
    """The event that sends a stored message's ``chat`` frame to every socket in ``room``.

    ``prev_id`` is the id of the room's message before it (None: the first),
    so a hub that sees a message whose predecessor it has not delivered knows
    it missed one, and fetches it from the database (``chat.fanout``).
    """
    return {"type": "room.message", "room": room, "id": message_id, "prev_id": prev_id, "frame": frame}


async def publish(group: str, event: Event) -> None:
    """Send ``event`` to ``group`` now."""
    await get_channel_layer().group_send(group, event)


def send_event_on_commit(group: str, event: Event) -> None:
    """Send ``event`` to ``group`` once the current transaction commits."""
    transaction.on_commit(partial(_dispatch, group, event), robust=True)


def _dispatch(group: str, event: Event) -> None:
    outbox = _outbox.get()
    if outbox is not None:
        outbox.append((group, event))
    else:
        async_to_sync(publish)(group, event)


class BroadcastFailed(Exception):
    """The write committed but its events could not be published (all of them: ``unsent``)."""

    def __init__(self, result: Any, unsent: list[tuple[str, Event]]) -> None:
        super().__init__("the channel layer did not take the event")
        self.result = result
        self.unsent = unsent


async def call_service(service: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a sync ``service`` in the database thread, then publish its events.

    Raises ``BroadcastFailed`` (carrying the service's result and its events)
    when the write committed but the channel layer refused an event.
    """
    outbox: list[tuple[str, Event]] = []
    token = _outbox.set(outbox)
    try:
        result = await database_sync_to_async(service)(**kwargs)
    finally:
        _outbox.reset(token)
    try:
        for group, event in outbox:
            await publish(group, event)
    except Exception as exc:
        logger.warning("broadcast failed after commit: %s", exc.__class__.__name__)
        raise BroadcastFailed(result, outbox) from exc
    return result
