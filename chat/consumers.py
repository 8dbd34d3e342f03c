"""The chat websocket: one consumer per open tab.

The consumer authenticates from ``scope``, parses each frame with
``chat.protocol``, calls one service or selector, and sends the result. Once
the socket's identity is known it hands a ``Tab`` to its process's
``RoomHub`` (``chat.realtime.hub``), which sends the welcome and the room's
presence and from then on delivers room frames (encoded once for the whole
room) straight to the socket: the consumer has no channel-layer channel of
its own and no handler per event.
"""

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import replace
from typing import Any

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from chat import metrics, protocol, selectors, services
from chat.ratelimit import TokenBucket, get_rate_limiter, limit
from chat.realtime import gateway
from chat.realtime.hub import get_hub
from chat.realtime.tab import Tab
from chat.sessions import session_key
from chat.writer import get_writer

logger = logging.getLogger(__name__)

# What a broken database, Redis or channel layer raises; the frame is
# answered with "unavailable" and the socket stays open.
UNAVAILABLE = (DatabaseError, RedisError, OSError, asyncio.TimeoutError)
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_POLICY_VIOLATION = 1008
CLOSE_ABNORMAL = 1006


class ChatConsumer(AsyncWebsocketConsumer):
    """A websocket of one browser tab in one room."""

    # No channel-layer channel of its own (see ``__call__``); also what
    # Channels' own ``__call__`` would read, were it ever called again.
    channel_layer_alias = None

    # Set once the socket's identity is known (and it is handed to the hub).
    tab: Tab | None = None
    # Frames refused in a row for the socket's frame budget (0: within it): a
    # flood is logged once, when it starts, and closed past CHAT_FRAME_FLOOD_CLOSE.
    refused_in_a_row = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle the socket's ASGI messages one by one, until it ends.

        The socket has no channel-layer channel of its own: the hub brings
        room and browser events, and a channel per socket would cost each
        socket memory and a Redis subscription. channels/consumer.py
        ``AsyncConsumer.__call__`` would make one, then merge the client's
        messages with the channel's through channels/utils.py
        ``await_many_dispatch``: a task per message received, an
        ``asyncio.wait`` around it, and one pending task per open socket.
        With no channel there is one queue to await, so it is awaited
        directly; at 4,000 reconnects that machinery was 7 % of the event
        loop's time (docs/performance.md).
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if self.tab is not None and not self.tab.closing:
                # The consumer ended without `disconnect` (an error, or daphne
                # cancelled it): clean up in a task of the hub's, so the room
                # does not keep a ghost the hub would renew forever.
                self.hub.spawn(self.hub.close(self.tab))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Call the handler of an ASGI message, without Channels' extra hop to the database thread.

        channels/consumer.py ``AsyncConsumer.dispatch`` awaits
        ``aclose_old_connections()`` (a ``sync_to_async`` trip to the
        database thread) before every handler: each connect and each frame
        paid one. Here every database call goes through
        ``database_sync_to_async``, whose ``thread_handler`` already closes
        old connections before and after it (channels/db.py), so the hop
        only cost time.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.room: str = self.scope["url_route"]["kwargs"]["room"]
        self.rate_limiter = get_rate_limiter()
        self.frame_budget = TokenBucket(limit("frame"), time.monotonic())
        self.hub = get_hub()
        self.writer = get_writer()
        try:
            # One trip to the database thread: the session, its user, the
            # browser's settings, its block and the room's newest message id.
            start = await database_sync_to_async(services.resolve_socket)(
                session_key=session_key(self.scope), room=self.room
            )
        except UNAVAILABLE as exc:
            logger.warning("connect refused room=%s: storage unavailable (%s)", self.room, exc.__class__.__name__)
            metrics.connect_ended("unavailable")
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self.accept()
        if start is None:
            logger.info("connect closed room=%s: no valid session", self.room)
            metrics.connect_ended("no_session")
            await self.close(code=protocol.CLOSE_NO_SESSION)
            return
        identity = start.identity
        if start.blocked:
            logger.info("connect closed room=%s author=%s: blocked", self.room, identity.author_id)
            metrics.connect_ended("blocked")
            await self.close(code=protocol.CLOSE_BLOCKED)
            return
        self.tab = Tab(self.room, identity, self.base_send)
        try:
            opened = await self.hub.open(self.tab, stored_last_id=start.last_id)
        except UNAVAILABLE as exc:
            logger.warning(
                "connect closed room=%s: storage or channel layer unavailable (%s)", self.room, exc.__class__.__name__
            )
            metrics.connect_ended("unavailable")
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        if not opened:
            logger.info(
                "connect closed room=%s author=%s: over %s sockets",
                self.room,
                identity.author_id,
                settings.CHAT_MAX_SOCKETS_PER_IDENTITY,
            )
            self.tab = None  # nothing of it is kept to clean up
            metrics.connect_ended("too_many")
            await self.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS, reason="too many connections")
            return
        logger.info("connected room=%s author=%s verified=%s", self.room, identity.author_id, identity.verified)
        metrics.connect_ended("accepted")

    async def disconnect(self, code: int) -> None:
        if self.tab is None or self.tab.closing:
            return
        logger.info("disconnected room=%s author=%s code=%s", self.room, self.tab.identity.author_id, code)
        await self.hub.close(self.tab)

    # --- Client frames ----------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            logger.info("closing room=%s: binary frame", self.room)
            await self.close(code=protocol.CLOSE_BINARY_FRAME)
            return
        if self.tab is None or text_data is None:
            return
        # Every frame counts against the socket's budget, a refused one too.
        # It is parsed first (16 KiB at most), so a refusal names its client_id.
        try:
            frame = protocol.parse_frame(text_data)
        except protocol.FrameError as error:
            if await self.within_frame_budget(client_id=error.client_id):
                logger.info("frame rejected room=%s code=%s", self.room, error.code)
                await self.send_error(error.code, error.message, client_id=error.client_id)
            return
        if not await self.within_frame_budget(client_id=protocol.client_id_of(frame)):
            return
        match frame:
            case protocol.Chat():
                await self.on_chat(frame)
            case protocol.Rename():
                await self.on_rename(frame)
            case protocol.History():
                await self.on_history(frame)
            case protocol.Resume():
                await self.on_resume(frame)
            case protocol.Ping():
                await self.send(text_data=protocol.pong_frame())

    async def on_chat(self, frame: protocol.Chat) -> None:
        assert self.tab is not None
        if not await self.within_rate(action="chat", client_id=frame.client_id):
            return
        try:
            posted = await self.writer.post(services.Post(self.tab.identity, self.room, frame.text, frame.client_id))
        except UNAVAILABLE:
            await self.send_unavailable(client_id=frame.client_id)
            return
        if posted.created:
            return
        if posted.message.deleted_at is not None:
            # A resend of a message staff deleted meanwhile: answered, never shown again.
            await self.send_error(
                "invalid_request", "This message was deleted by a moderator.", client_id=frame.client_id
            )
            return
        await self.send(text_data=protocol.chat_frame(posted.message))

    async def on_rename(self, frame: protocol.Rename) -> None:
        assert self.tab is not None
        if not await self.within_rate(action="rename", client_id=None):
            return
        try:
            username = await gateway.run_service(
                services.rename_visitor,
                deliver_locally=self.hub.dispatch,
                session_id=self.tab.identity.session_id,
                username=frame.username,
                previous=self.tab.identity.username,
            )
        except UNAVAILABLE:
            await self.send_unavailable(client_id=None)
            return
        # This tab's next frame (a chat sent right after the rename) carries
        # the new name, without waiting for the event to come back via the hub.
        self.tab.identity = replace(self.tab.identity, username=username)

    async def on_history(self, frame: protocol.History) -> None:
        if not await self.within_rate(action="read", client_id=frame.client_id):
            return
        try:
            messages, has_more = await database_sync_to_async(selectors.messages_before)(
                room=self.room, before=frame.before, limit=frame.limit
            )
        except UNAVAILABLE:
            await self.send_unavailable(client_id=frame.client_id)
            return
        await self.send(text_data=protocol.history_frame(messages, has_more=has_more))

    async def on_resume(self, frame: protocol.Resume) -> None:
        if not await self.within_rate(action="read", client_id=frame.client_id):
            return
        try:
            resumed = await database_sync_to_async(selectors.resume)(room=self.room, after=frame.after)
        except UNAVAILABLE:
            await self.send_unavailable(client_id=frame.client_id)
            return
        await self.send(
            text_data=protocol.history_frame(resumed.messages, has_more=resumed.has_more, deleted=resumed.deleted)
        )

    # --- Helpers ------------------------------------------------------------------

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        """Send a frame; a socket that closed meanwhile is not an error.

        Frames queued before daphne reports the disconnect still try to go
        out. daphne then raises ``Disconnected``, which would end the
        consumer before ``disconnect`` runs and leave it in the hub.
        """
        with contextlib.suppress(Disconnected):
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def within_rate(self, *, action: str, client_id: str | None) -> bool:
        assert self.tab is not None
        try:
            retry_after = await self.rate_limiter.hit(action=action, author_id=self.tab.identity.author_id)
        except UNAVAILABLE:
            await self.send_unavailable(client_id=client_id)
            return False
        if retry_after is None:
            return True
        logger.info("frame rejected room=%s code=rate_limited action=%s retry_after=%s", self.room, action, retry_after)
        await self.send_rate_limited(client_id=client_id, retry_after=retry_after)
        return False

    async def within_frame_budget(self, *, client_id: str | None) -> bool:
        """Take one of this socket's frame tokens (in memory); answer ``rate_limited`` when none is left."""
        retry_after = self.frame_budget.take(limit("frame"), time.monotonic())
        if retry_after is None:
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        if self.refused_in_a_row == 1:
            logger.info(
                "frame rejected room=%s code=rate_limited action=frame retry_after=%s "
                "(further refusals of this flood are not logged)",
                self.room,
                retry_after,
            )
        if self.refused_in_a_row > settings.CHAT_FRAME_FLOOD_CLOSE:
            # No page sends on past `retry_after` like this (chat.js waits): a script does.
            logger.info("closing room=%s: frame flood (%d refused in a row)", self.room, self.refused_in_a_row - 1)
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return False
        await self.send_rate_limited(client_id=client_id, retry_after=retry_after)
        return False

    async def send_rate_limited(self, *, client_id: str | None, retry_after: float) -> None:
        await self.send_error(
            "rate_limited", "Too many requests; wait a moment.", client_id=client_id, retry_after=retry_after
        )

    async def send_unavailable(self, *, client_id: str | None) -> None:
        # Called from the caller's except block: name what failed (its class;
        # a database error's text can quote the row).
        failed = sys.exception()
        logger.warning("frame rejected room=%s code=unavailable (%s)", self.room, type(failed).__name__)
        await self.send_error("unavailable", "The chat cannot store this right now; try again.", client_id=client_id)

    async def send_error(
        self, code: str, message: str, *, client_id: str | None = None, retry_after: float | None = None
    ) -> None:
        metrics.frame_rejected(code)
        await self.send(text_data=protocol.error_frame(code, message, client_id=client_id, retry_after=retry_after))
