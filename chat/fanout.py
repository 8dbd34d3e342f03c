"""Room fan-out inside one server process.

A broadcast to a room crosses the channel layer once per *process*, not once
per open socket: each process has one :class:`RoomHub`, which joins a room's
channel-layer group with a single channel of its own while it has sockets in
that room, reads every room event from that channel, and writes the frame
(encoded once, by the sender) straight to each local socket. No per-socket
channel-layer message, no per-socket JSON encoding and no per-socket trip
through the consumer's dispatch (which in Channels 4.3 hops to the database
thread before every handler).

Presence events carry no list: they mark the room's presence as changed, and
the hub sends the room's current snapshot to its sockets once the changes have
settled for a moment. So a thousand people joining cause a few presence
broadcasts, not a thousand, each of a thousand names.
"""

import asyncio
import logging
import weakref
from typing import Any, Protocol

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from chat import events, protocol
from chat.presence import get_presence

logger = logging.getLogger(__name__)


class Member(Protocol):
    """One socket in a room (a ``ChatConsumer``)."""

    async def deliver(self, frame: str) -> None:
        """Send a room broadcast (JSON text) to this socket."""

    async def deliver_presence(self, version: int, frame: str) -> None:
        """Send the room's presence frame (of that version), unless this socket has it already."""


class RoomHub:
    """The sockets of one process, by room, and their one channel-layer subscription."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.rooms: dict[str, set[Member]] = {}
        self._channel: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._membership = asyncio.Lock()
        self._presence_due: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self, room: str, member: Member) -> None:
        """Start delivering ``room``'s broadcasts to ``member``."""
        async with self._membership:
            if room not in self.rooms:
                if self._channel is None:
                    self._channel = await self.layer.new_channel()
                await self.layer.group_add(events.room_group(room), self._channel)
                self.rooms[room] = set()
            self.rooms[room].add(member)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read())

    async def leave(self, room: str, member: Member) -> None:
        """Stop delivering to ``member``; the last one out leaves the group."""
        async with self._membership:
            members = self.rooms.get(room)
            if members is None or member not in members:
                return
            members.discard(member)
            if members:
                return
            del self.rooms[room]
            assert self._channel is not None
            await self.layer.group_discard(events.room_group(room), self._channel)
            if not self.rooms and self._reader is not None:
                # A cancelled receive ends the channel (the pub/sub layer
                # unsubscribes it): the next join makes a new one.
                self._reader.cancel()
                self._reader = None
                self._channel = None

    async def _read(self) -> None:
        assert self._channel is not None
        while True:
            try:
                event = await self.layer.receive(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep trying, sockets stay open
                logger.warning("room hub cannot read the channel layer: %s", exc.__class__.__name__)
                await asyncio.sleep(1)
                continue
            await self.dispatch(event)

    async def dispatch(self, event: dict[str, Any]) -> None:
        room = event.get("room")
        if room not in self.rooms:
            return
        if event["type"] == "presence.changed":
            self.presence_changed(room)
        else:
            await self.broadcast(room, event["frame"])

    async def broadcast(self, room: str, frame: str) -> None:
        for member in list(self.rooms.get(room, ())):
            try:
                await member.deliver(frame)
            except Exception:  # one broken socket must not silence the room
                logger.exception("delivery failed room=%s", room)

    def presence_changed(self, room: str) -> None:
        """Send the room's presence soon; changes until then share one frame."""
        if room in self._presence_due:
            return
        self._presence_due.add(room)
        task = asyncio.create_task(self._send_presence(room))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settle_delay(self, room: str) -> float:
        # A bigger room waits longer (up to 2 s): its presence frame costs more to send.
        return min(settings.CHAT_PRESENCE_SETTLE * (1 + len(self.rooms.get(room, ())) / 100), 2.0)

    async def _send_presence(self, room: str) -> None:
        try:
            await asyncio.sleep(self._settle_delay(room))
        finally:
            # From here on a change schedules the next frame.
            self._presence_due.discard(room)
        if room not in self.rooms:
            return
        try:
            snapshot = await get_presence().snapshot(room=room)
        except Exception as exc:
            logger.warning("presence snapshot failed room=%s: %s", room, exc.__class__.__name__)
            return
        frame = protocol.presence_frame(room=room, users=snapshot.users)
        for member in list(self.rooms.get(room, ())):
            try:
                await member.deliver_presence(snapshot.version, frame)
            except Exception:
                logger.exception("presence delivery failed room=%s", room)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoomHub]" = weakref.WeakKeyDictionary()


def get_hub() -> RoomHub:
    """Return this event loop's hub for the current channel layer."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:  # a new layer: settings changed (tests)
        hub = _hubs[loop] = RoomHub(layer)
    return hub
