"""One open tab as the hub holds it: its socket's identity and what it has been sent.

The consumer makes a ``Tab`` once the socket's identity is known and hands it
to its process's hub (``RoomHub.open``); from then on the hub delivers to it.
What the hub sends before the ``welcome`` waits in ``early``; after it, chat
frames up to the welcome's ``last_id`` are skipped (the client fetches
those with ``resume``), so each message reaches the tab once.
"""

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from autobahn.exception import Disconnected
from autobahn.websocket.protocol import PreparedMessage

from chat.identity import Identity

# The server's own send for this socket (the consumer's ``base_send``).
Send = Callable[[dict[str, Any]], Awaitable[None]]
# The key of a ``websocket.send`` message that also carries the frame
# prepared once for every socket it goes to (autobahn's ``PreparedMessage``);
# chatsite/server.py writes those bytes as they are. Plain daphne ignores it
# and sends the text.
PREPARED = "chat.prepared"


def prepare(frame: str) -> PreparedMessage:
    """Build a server frame's bytes once, for every socket it goes to."""
    return PreparedMessage(frame.encode(), isBinary=False, applyMask=False, doNotCompress=True)


class Tab:
    """A tab's socket in one room, with its identity and delivery state."""

    __slots__ = ("_send", "closing", "early", "identity", "live_after", "room", "socket_id")

    def __init__(self, room: str, identity: Identity, send: Send) -> None:
        self.room = room
        self.identity = identity
        # This socket's name in presence and in its identity's socket count.
        self.socket_id = uuid.uuid4().hex
        # Room frames that came before the welcome (None once it is sent), with the id of chat frames.
        self.early: list[tuple[str, int | None, PreparedMessage | None]] | None = []
        # The welcome's last_id: live copies of messages up to it are not sent.
        self.live_after = 0
        # Set when the tab's cleanup begins: no renewal may put it back in presence after.
        self.closing = False
        self._send = send

    async def send(self, frame: str, prepared: PreparedMessage | None = None) -> None:
        """Send a frame now; a socket that closed meanwhile is not an error.

        Frames queued before daphne reports the disconnect still try to go
        out; daphne then raises ``Disconnected``, which must not end the
        delivery to the room's other tabs.
        """
        message: dict[str, Any] = {"type": "websocket.send", "text": frame}
        if prepared is not None:
            message[PREPARED] = prepared
        with contextlib.suppress(Disconnected):
            await self._send(message)

    async def close(self, code: int) -> None:
        """Close the socket with ``code`` (its consumer's ``disconnect`` then cleans up)."""
        with contextlib.suppress(Disconnected):
            await self._send({"type": "websocket.close", "code": code})

    async def deliver(self, frame: str, message_id: int | None = None, prepared: PreparedMessage | None = None) -> None:
        """Send a room frame, after the welcome; ``message_id`` of a chat frame."""
        if self.early is not None:
            self.early.append((frame, message_id, prepared))
        elif message_id is None or message_id > self.live_after:
            await self.send(frame, prepared)

    async def welcomed(self, last_id: int | None) -> None:
        """The welcome (and the presence snapshot) went out: send what came before it."""
        early, self.early = self.early or [], None
        self.live_after = last_id or 0
        for frame, message_id, prepared in early:
            await self.deliver(frame, message_id, prepared)
