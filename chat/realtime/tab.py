"""One open tab as the hub holds it: its socket's identity and what it has been sent.

The consumer makes a ``Tab`` once the socket's identity is known and hands it
to its process's hub (``RoomHub.open``); from then on the hub delivers to it.
What the hub sends before the ``welcome`` waits in ``early``; after it, chat
frames up to the welcome's ``last_id`` are skipped (the client fetches
those with ``resume``), so each message reaches the tab once.
"""

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from autobahn.exception import Disconnected

from chat.identity import Identity

# The server's own send for this socket (the consumer's ``base_send``).
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Tab:
    """A tab's socket in one room, with its identity and delivery state."""

    __slots__ = ("_send", "closing", "early", "identity", "live_after", "renewal", "room", "socket_id")

    def __init__(self, room: str, identity: Identity, send: Send) -> None:
        self.room = room
        self.identity = identity
        # This socket's name in presence and in its identity's socket count.
        self.socket_id = uuid.uuid4().hex
        # Room frames that came before the welcome (None once it is sent), with the id of chat frames.
        self.early: list[tuple[str, int | None]] | None = []
        # The welcome's last_id: live copies of messages up to it are not sent.
        self.live_after = 0
        # Set when the tab's cleanup begins: no renewal may put it back in presence after.
        self.closing = False
        # Held by a presence renewal and by the cleanup, so a renewal under way
        # when the socket closes ends before the cleanup removes the entries.
        self.renewal = asyncio.Lock()
        self._send = send

    async def send(self, frame: str) -> None:
        """Send a frame now; a socket that closed meanwhile is not an error.

        Frames queued before daphne reports the disconnect still try to go
        out; daphne then raises ``Disconnected``, which must not end the
        delivery to the room's other tabs.
        """
        with contextlib.suppress(Disconnected):
            await self._send({"type": "websocket.send", "text": frame})

    async def deliver(self, frame: str, message_id: int | None = None) -> None:
        """Send a room frame, after the welcome; ``message_id`` of a chat frame."""
        if self.early is not None:
            self.early.append((frame, message_id))
        elif message_id is None or message_id > self.live_after:
            await self.send(frame)

    async def welcomed(self, last_id: int | None) -> None:
        """The welcome (and the presence snapshot) went out: send what came before it."""
        early, self.early = self.early or [], None
        self.live_after = last_id or 0
        for frame, message_id in early:
            await self.deliver(frame, message_id)
