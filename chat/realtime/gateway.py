"""The one place that publishes events, and only once their write has committed.

Services call ``send_on_commit``: the event leaves when the transaction that
caused it commits (Zulip's ``send_event_on_commit``). Crossing the sync/async
line happens in ``run_service``: the socket side runs a service in the
database thread and publishes what it queued there from the event loop.
Sync callers (the admin, management commands) publish through
``async_to_sync`` right at commit.

When the channel layer (Redis) refuses an event after its write committed,
the caller's ``deliver_locally`` (its process's hub) gets it, so the tabs of
this process see it at once; the other processes' hubs catch up from the
database when the layer delivers again (``stream``).
"""

import contextvars
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from chat.realtime.events import Event, group_of, to_message

logger = logging.getLogger(__name__)

T = TypeVar("T")
DeliverLocally = Callable[[Event], Awaitable[None]]

# Events queued by a service running on behalf of the event loop.
_outbox: contextvars.ContextVar[list[Event] | None] = contextvars.ContextVar("chat_event_outbox", default=None)


def send_on_commit(event: Event) -> None:
    """Publish ``event`` once the current transaction commits."""
    transaction.on_commit(partial(_committed, event), robust=True)


def _committed(event: Event) -> None:
    outbox = _outbox.get()
    if outbox is not None:
        outbox.append(event)
    else:
        async_to_sync(_publish)(event)


async def _publish(event: Event) -> None:
    await get_channel_layer().group_send(group_of(event), to_message(event))


async def publish(events: list[Event], *, deliver_locally: DeliverLocally) -> None:
    """Publish ``events`` now; those the layer refuses go to ``deliver_locally``."""
    for index, event in enumerate(events):
        try:
            await _publish(event)
        except Exception as exc:  # Redis down: this process's tabs still get them
            logger.warning("broadcast failed after commit: %s", exc.__class__.__name__)
            for unsent in events[index:]:
                await deliver_locally(unsent)
            return


async def run_service(service: Callable[..., T], /, *, deliver_locally: DeliverLocally, **kwargs: Any) -> T:
    """Run a sync ``service`` in the database thread, then publish the events it queued."""
    outbox: list[Event] = []
    token = _outbox.set(outbox)
    try:
        result = await database_sync_to_async(service)(**kwargs)
    finally:
        _outbox.reset(token)
    await publish(outbox, deliver_locally=deliver_locally)
    return result
