"""One room's chat messages for this process's tabs: in id order, each once, none skipped.

The channel layer is not a log: a message published while a process's
subscription is down (a Redis restart) is gone for that process, and
publishes of one room from two processes can overtake each other. So the
stream trusts the layer for speed, not for completeness. Each message event
names the room's previous message (``prev_id``); a message whose predecessor
has not been delivered here waits ``REORDER_WAIT`` for it, then the stream
reads what it missed from the database and delivers in order. After a layer
outage (the hub's probe says so) the stream reads whatever it missed.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async

from chat import protocol, selectors
from chat.realtime.events import MessagesDeleted, MessageStored

logger = logging.getLogger(__name__)

# How long a message whose predecessor has not arrived waits for it before
# the stream reads the gap from the database. Publishes of one room can
# overtake each other between processes; this is the usual late arrival.
REORDER_WAIT = 0.25
# How long a stream whose database read failed waits before reading again.
RETRY_WAIT = 1.0

# Send a frame to every tab of the room here (with its message id, for a chat frame).
Broadcast = Callable[[str, int | None], Awaitable[None]]


class MessageStream:
    """Where one room's messages stand in this process, and what waits for a late predecessor."""

    def __init__(self, room: str, broadcast: Broadcast) -> None:
        self.room = room
        self._broadcast = broadcast
        # Id of the newest message delivered (0: none in the room; None: not started).
        self.last_id: int | None = None
        # Messages that came before their predecessor: id -> (prev_id, frame).
        self._held: dict[int, tuple[int | None, str]] = {}
        self._lock = asyncio.Lock()
        self._repair: asyncio.Task[None] | None = None

    def start_from(self, stored_last_id: int | None) -> int | None:
        """Return the newest message id a tab that has just joined is not sent live.

        A stream under way answers with the newest message it has delivered:
        every later one reaches the new tab live, and the ones up to it are
        the tab's to ``resume``. A new stream starts at ``stored_last_id``
        (read before the hub joined the room's group) and reads once what was
        stored meanwhile, so a message committed in between is delivered too.
        """
        if self.last_id is None:
            self.last_id = stored_last_id or 0
            self.catch_up()
        return self.last_id or None

    async def on_message(self, event: MessageStored) -> None:
        async with self._lock:
            if self.last_id is not None and event.message_id <= self.last_id:
                return  # delivered already (a catch-up got there first)
            if self.last_id is not None and event.prev_id is not None and event.prev_id > self.last_id:
                # Its predecessor has not been delivered: wait for it a moment.
                self._held[event.message_id] = (event.prev_id, event.frame)
                self._schedule_repair(delay=REORDER_WAIT, always=False)
                return
            await self._deliver(event.message_id, event.frame)
            await self._release_held()

    async def on_deleted(self, event: MessagesDeleted) -> None:
        """Send the room's ``deleted`` frame; a held message it names is never delivered.

        In the stream's order: a message being delivered (a catch-up, say)
        reaches the tabs before the frame that takes it away, and a read
        from the database after the deletion does not find it.
        """
        async with self._lock:
            for message_id in event.ids:
                self._held.pop(message_id, None)
            await self._broadcast(event.frame, None)

    def catch_up(self) -> None:
        """Read from the database whatever this stream missed (after a layer outage)."""
        if self._repair is not None and not self._repair.done():
            self._repair.cancel()
        self._repair = asyncio.create_task(self._read_missed(0, always=True))

    def stop(self) -> None:
        if self._repair is not None:
            self._repair.cancel()

    async def _deliver(self, message_id: int, frame: str) -> None:
        self.last_id = message_id
        await self._broadcast(frame, message_id)

    async def _release_held(self) -> None:
        """Deliver held messages whose predecessor is now delivered."""
        for message_id in sorted(self._held):
            prev_id, frame = self._held[message_id]
            assert self.last_id is not None
            if message_id <= self.last_id:
                del self._held[message_id]
            elif prev_id is None or prev_id <= self.last_id:
                del self._held[message_id]
                await self._deliver(message_id, frame)
            else:
                break

    def _schedule_repair(self, *, delay: float, always: bool) -> None:
        if self._repair is None or self._repair.done():
            self._repair = asyncio.create_task(self._read_missed(delay, always=always))

    async def _read_missed(self, delay: float, *, always: bool) -> None:
        """Read from the database what this stream is missing, and deliver it in order.

        Unless ``always`` (after an outage, or when the stream starts), only
        while a message is still held: usually the late one came meanwhile.
        """
        await asyncio.sleep(delay)
        async with self._lock:
            if self.last_id is None or not (always or self._held):
                return
            try:
                while True:
                    missed, has_more = await database_sync_to_async(selectors.messages_after)(
                        room=self.room, after=self.last_id, limit=protocol.RESUME_MAX
                    )
                    for message in missed:
                        await self._deliver(message.pk, protocol.chat_frame(message))
                    if not has_more:
                        break
            except Exception as exc:  # the database is down too: try again
                logger.warning("room hub cannot fetch missed messages room=%s: %s", self.room, exc.__class__.__name__)
                self._repair = None
                self._schedule_repair(delay=RETRY_WAIT, always=True)
                return
            if missed:
                logger.info("room hub caught up room=%s: %d missed message(s)", self.room, len(missed))
            # Whatever is still held was deleted meanwhile or is newer: deliver in order.
            for message_id in sorted(self._held):
                _prev_id, frame = self._held.pop(message_id)
                if message_id > self.last_id:
                    await self._deliver(message_id, frame)
