"""The chat websocket: one consumer per open tab.

The consumer authenticates from ``scope``, parses each frame with
``chat.protocol``, calls one service or selector, and sends or broadcasts the
result. Room broadcasts and its browser's events (a rename) reach it
through its process's ``RoomHub`` (``chat.fanout``), room frames already
encoded; the consumer has no channel-layer channel of its own.
"""

import asyncio
import logging
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from chat import events, protocol, selectors, services
from chat.fanout import get_hub
from chat.identity import Identity
from chat.ratelimit import TokenBucket, get_rate_limiter, limit
from chat.realtime.presence_store import get_presence
from chat.sessions import session_key
from chat.writer import get_writer

logger = logging.getLogger(__name__)

# What a broken database, Redis or channel layer raises; the frame is
# answered with "unavailable" and the socket stays open.
UNAVAILABLE = (DatabaseError, RedisError, OSError, asyncio.TimeoutError)
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_ABNORMAL = 1006


class ChatConsumer(AsyncWebsocketConsumer):
    """A websocket of one browser tab in one room."""

    # No channel of its own: the hub brings room and browser events, and a
    # channel per socket costs each socket memory and a Redis subscription.
    channel_layer_alias = None

    identity: Identity | None = None
    # Room broadcasts that arrive before the welcome wait here (None once sent),
    # with the message id of chat frames.
    early: list[tuple[str, int | None]] | None = None
    # The welcome's last_id: messages up to it are the client's to fetch with
    # `resume`, so live copies of them are not sent too (each arrives once).
    live_after = 0
    # Set when the socket's cleanup begins: no renewal may put it back after.
    closing = False
    # Whether the last frame was over the socket's frame budget: a flood is
    # logged once, when it starts, not once per frame.
    over_frame_budget = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.identity is not None and not self.closing:
                # The consumer ended without `disconnect` (an error, or daphne
                # cancelled it): clean up in a task of the hub's, so the room
                # does not keep a ghost the hub would renew forever.
                self.hub.spawn(self.disconnect(CLOSE_ABNORMAL))

    async def connect(self) -> None:
        self.room: str = self.scope["url_route"]["kwargs"]["room"]
        # This socket's name in presence and the socket count.
        self.socket_id = uuid.uuid4().hex
        # Held by a presence renewal and by the cleanup, so a renewal under way
        # when the socket closes ends before the cleanup removes the entries.
        self.renewal = asyncio.Lock()
        self.presence = get_presence()
        self.rate_limiter = get_rate_limiter()
        self.frame_budget = TokenBucket(limit("frame"), time.monotonic())
        self.hub = get_hub()
        self.writer = get_writer()
        try:
            # One trip to the database thread: the session, its user, the
            # browser's settings and the room's newest message id.
            found = await database_sync_to_async(services.resolve_socket)(
                session_key=session_key(self.scope), room=self.room
            )
        except UNAVAILABLE as exc:
            logger.warning("connect refused room=%s: storage unavailable (%s)", self.room, exc.__class__.__name__)
            await self.accept()
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self.accept()
        if found is None:
            logger.info("connect closed room=%s: no valid session", self.room)
            await self.close(code=protocol.CLOSE_NO_SESSION)
            return
        identity, stored_last_id = found
        self.identity = identity
        self.early = []
        try:
            await self.hub.join(self.room, self, author=identity.author_id)
            # The welcome's last_id: messages up to it are the client's to
            # `resume`, every later one reaches this socket live (chat.fanout).
            last_id = self.hub.start_from(self.room, stored_last_id)
            people = await self.presence.enter(
                room=self.room, socket_id=self.socket_id, author_id=identity.author_id,
                username=identity.username, verified=identity.verified,
                known_list=self.hub.feeds[self.room].presence.list_version,
            )
            if people is None:
                await self.refuse_over_cap()
                return
            await self.send(
                text_data=protocol.welcome_frame(
                    room=self.room,
                    username=self.identity.username,  # a rename may have come meanwhile
                    author_id=identity.author_id,
                    verified=identity.verified,
                    last_id=last_id,
                )
            )
            early, self.early = self.early, None
            self.live_after = last_id or 0
            await self.send(text_data=await self.hub.first_presence(self.room, self, people))
            for frame, message_id in early:
                await self.deliver(frame, message_id)
        except UNAVAILABLE as exc:
            logger.warning("connect closed room=%s: storage or channel layer unavailable (%s)",
                           self.room, exc.__class__.__name__)
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        logger.info("connected room=%s author=%s verified=%s", self.room, identity.author_id, identity.verified)

    async def disconnect(self, code: int) -> None:
        if self.identity is None or self.closing:
            return
        self.closing = True
        logger.info("disconnected room=%s author=%s code=%s", self.room, self.identity.author_id, code)
        # Leave the hub first (it logs what it cannot undo in Redis): daphne
        # gives a closed socket's consumer only --application-close-timeout
        # (10 s) to finish, and the hub must stop delivering to it and renewing it.
        await self.hub.leave(self.room, self, author=self.identity.author_id)
        try:
            async with self.renewal:
                await self.presence.exit(room=self.room, socket_id=self.socket_id, author_id=self.identity.author_id)
        except UNAVAILABLE as exc:
            # Its presence entry and socket count expire on their own (CHAT_PRESENCE_TTL).
            logger.warning("disconnect cleanup failed room=%s: %s", self.room, exc.__class__.__name__)

    # --- Client frames ----------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            logger.info("closing room=%s: binary frame", self.room)
            await self.close(code=protocol.CLOSE_BINARY_FRAME)
            return
        if self.identity is None or text_data is None:
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
        assert self.identity is not None
        if not await self.within_rate(action="chat", client_id=frame.client_id):
            return
        try:
            posted = await self.writer.post(
                services.Post(self.identity, self.room, frame.text, frame.client_id)
            )
        except UNAVAILABLE:
            await self.send_unavailable(client_id=frame.client_id)
            return
        if not posted.created:
            await self.send(text_data=protocol.chat_frame(posted.message))

    async def on_rename(self, frame: protocol.Rename) -> None:
        assert self.identity is not None
        if not await self.within_rate(action="rename", client_id=None):
            return
        try:
            username = await events.call_service(
                services.rename_visitor,
                session_id=self.identity.session_id,
                username=frame.username,
                previous=self.identity.username,
            )
        except events.BroadcastFailed as failed:
            # Saved, but the layer (Redis) did not take the event: this
            # process's tabs of the browser get it at once; tabs on other
            # processes see the name on their next connect.
            username = failed.result
            for _group, event in failed.unsent:
                await self.hub.dispatch(event)
        except UNAVAILABLE:
            await self.send_unavailable(client_id=None)
            return
        # This tab's next frame (a chat sent right after the rename) carries
        # the new name, without waiting for the event to come back via the hub.
        self.identity = replace(self.identity, username=username)

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
            messages, has_more = await database_sync_to_async(selectors.messages_after)(
                room=self.room, after=frame.after, limit=protocol.RESUME_MAX
            )
        except UNAVAILABLE:
            await self.send_unavailable(client_id=frame.client_id)
            return
        await self.send(text_data=protocol.history_frame(messages, has_more=has_more))

    # --- From the hub: room broadcasts and the browser's events ------------------

    async def deliver(self, frame: str, message_id: int | None = None) -> None:
        """Send a room broadcast to this socket (after the welcome); ``message_id`` of a chat frame."""
        if self.early is not None:
            self.early.append((frame, message_id))
        elif message_id is None or message_id > self.live_after:
            try:
                await self.base_send({"type": "websocket.send", "text": frame})
            except Disconnected:
                pass  # closed meanwhile: see send()

    async def deliver_presence(self, frame: str) -> None:
        """Send a presence frame of the room (the hub sends them only after the welcome)."""
        await self.send(text_data=frame)

    async def identity_changed(self, event: dict[str, Any]) -> None:
        """This browser was renamed (by one of its tabs, or by staff): show it."""
        if self.identity is None:
            return
        self.identity = replace(self.identity, username=event["username"])
        await self.deliver(protocol.identity_frame(username=event["username"]))

    async def announce_rename(self, event: dict[str, Any]) -> None:
        """Tell the room (one tab per room does, across processes too) and fix its presence list."""
        if self.identity is None:
            return
        try:
            if not await self.presence.rename(
                room=self.room, author_id=self.identity.author_id, username=event["username"],
                change_id=event["change_id"],
            ):
                return  # another tab of this browser in the room (maybe on another process) tells it
            frame = protocol.renamed_frame(author_id=self.identity.author_id, old=event["old"], username=event["username"])
            await events.publish(events.room_group(self.room), events.room_frame(self.room, frame))
        except UNAVAILABLE as exc:
            logger.warning("rename announcement failed room=%s: %s", self.room, exc.__class__.__name__)

    async def layer_recovered(self) -> None:
        """Redis came back (maybe empty): put this tab back in presence."""
        await self.refresh_presence()

    async def refresh_presence(self) -> None:
        """Renew this tab's presence entry and socket count (the hub asks, a third of the expiry apart)."""
        if self.identity is None:
            return
        try:
            async with self.renewal:
                if self.closing:
                    return  # the cleanup has begun: renewing would bring the tab back
                await self.presence.renew(
                    room=self.room, socket_id=self.socket_id, author_id=self.identity.author_id,
                    username=self.identity.username, verified=self.identity.verified,
                )
        except UNAVAILABLE as exc:
            logger.warning("presence heartbeat failed room=%s: %s", self.room, exc.__class__.__name__)

    # --- Helpers ------------------------------------------------------------------

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        """Send a frame; a socket that closed meanwhile is not an error.

        Events queued before daphne reports the disconnect still try to send.
        daphne then raises ``Disconnected``, which would kill the consumer
        before ``disconnect`` runs and leave it in its groups and presence.
        """
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:
            pass

    async def refuse_over_cap(self) -> None:
        """Close a socket over its identity's cap (``CHAT_MAX_SOCKETS_PER_IDENTITY``) with 4429."""
        assert self.identity is not None
        logger.info("connect closed room=%s author=%s: over %s sockets",
                    self.room, self.identity.author_id, settings.CHAT_MAX_SOCKETS_PER_IDENTITY)
        await self.hub.leave(self.room, self, author=self.identity.author_id)
        self.identity = None  # nothing of it to clean up on disconnect
        await self.close(code=protocol.CLOSE_TOO_MANY_CONNECTIONS, reason="too many connections")

    async def within_rate(self, *, action: str, client_id: str | None) -> bool:
        assert self.identity is not None
        try:
            retry_after = await self.rate_limiter.hit(action=action, author_id=self.identity.author_id)
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
            self.over_frame_budget = False
            return True
        if not self.over_frame_budget:
            self.over_frame_budget = True
            logger.info("frame rejected room=%s code=rate_limited action=frame retry_after=%s "
                        "(further refusals of this flood are not logged)", self.room, retry_after)
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
        await self.send(
            text_data=protocol.error_frame(code, message, client_id=client_id, retry_after=retry_after)
        )
