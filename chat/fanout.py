"""Room fan-out inside one server process, in order and without gaps.

A broadcast to a room crosses the channel layer once per *process*, not once
per open socket: each process has one :class:`RoomHub`, which joins a room's
channel-layer group with a single channel of its own while it has sockets in
that room, reads every room event from that channel, and writes the frame
(encoded once, by the sender) straight to each local socket. No per-socket
channel-layer message, no per-socket JSON encoding and no per-socket trip
through the consumer's dispatch (which in Channels 4.3 hops to the database
thread before every handler).

A browser's events (a rename reaching all its tabs) come the same way: the
hub joins the browser's group while it has one of its tabs, so a socket has
no channel-layer channel or subscription of its own. The hub also renews
every socket's presence entry on one timer. Both keep an idle socket's share
of server memory small (docs/performance.md).

Chat messages are delivered in id order, each once, and none is skipped even
when the channel layer loses one (Redis restarting, a publish that failed
after its commit, a subscription that was reconnecting): each message event
names the room's previous message (``prev_id``), so a hub that has not
delivered that one holds the message back a moment for the late one, then
fetches what it missed from the database. A probe the hub sends itself
through the layer every second finds outages with no message to reveal them;
once the probe comes back, the hub catches every room up from the database.

Presence crosses no channel layer: a few times a second the hub asks the
presence store which of its rooms changed (one read for all of them) and
reads those rooms' people; each room's ``PresenceFeed`` then sends each tab
that is behind one small diff, at most once a second (chat/realtime/).
"""

import asyncio
import itertools
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from chat import events, protocol, selectors
from chat.realtime.people import RoomPeople
from chat.realtime.presence_feed import PresenceFeed
from chat.realtime.presence_store import get_presence

logger = logging.getLogger(__name__)

# How long a message whose predecessor has not arrived waits for it before
# the hub fetches the gap from the database. Publishes of one room can
# overtake each other between processes; this is the usual late arrival.
REORDER_WAIT = 0.25
# The channel-layer probe: how often, and how long its echo may take. A
# process seconds behind under overload is not an outage: only a probe that
# fails at once (Redis refuses) or takes this long marks the layer down.
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 5.0
# Sockets whose presence the hub renews at the same time.
RENEW_AT_ONCE = 50
# How often the hub asks the presence store which rooms changed. A tab still
# gets at most one presence frame a second (presence_feed.PRESENCE_INTERVAL).
PRESENCE_POLL = 0.25


class Member(Protocol):
    """One socket in a room (a ``ChatConsumer``)."""

    async def deliver(self, frame: str, message_id: int | None = None) -> None:
        """Send a room broadcast (JSON text) to this socket; ``message_id`` of a chat frame."""

    async def deliver_presence(self, frame: str) -> None:
        """Send a presence frame of the room (after the welcome)."""

    async def identity_changed(self, event: dict[str, Any]) -> None:
        """Its browser was renamed: show the new name (no I/O but the socket's)."""

    async def announce_rename(self, event: dict[str, Any]) -> None:
        """Tell this socket's room about its browser's rename (one socket per room and process is asked)."""

    async def refresh_presence(self) -> None:
        """Renew what this socket keeps alive in the shared stores (presence, socket count)."""

    async def layer_recovered(self) -> None:
        """The channel layer (Redis) came back: restore what lives there for this socket."""


@dataclass
class Feed:
    """One room's sockets in this process, where its message stream stands, and its presence."""

    presence: PresenceFeed
    members: set[Member] = field(default_factory=set)
    # Id of the newest message delivered (0: none in the room; None: unknown yet).
    last_id: int | None = None
    # Messages that came before their predecessor: id -> (prev_id, frame).
    held: dict[int, tuple[int | None, str]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    repair: asyncio.Task[None] | None = None


class RoomHub:
    """The sockets of one process, by room, and their one channel-layer subscription."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.feeds: dict[str, Feed] = {}
        # Local sockets by browser (author id), for the browser's events.
        self.authors: dict[str, set[Member]] = {}
        self._channel: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._presence: asyncio.Task[None] | None = None
        # Only a layer outside the process (Redis) can lose events.
        self._probe_enabled = bool(settings.REDIS_URL)
        self._probe_tokens = itertools.count()
        self._probe_echo: dict[int, asyncio.Future[None]] = {}
        self.layer_ok = True
        self._membership = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self, room: str, member: Member, *, author: str | None = None) -> None:
        """Start delivering ``room``'s broadcasts to ``member``, and its browser's events (``author``).

        Raises what the channel layer raised (Redis down); then nothing is recorded.
        """
        async with self._membership:
            if self._channel is None:
                channel = await self.layer.new_channel()
                await self.layer.group_add(events.IDENTITY_GROUP, channel)
                self._channel = channel
            if room not in self.feeds:
                await self.layer.group_add(events.room_group(room), self._channel)
            if room not in self.feeds:
                self.feeds[room] = Feed(PresenceFeed(room))
            self.feeds[room].members.add(member)
            if author is not None:
                self.authors.setdefault(author, set()).add(member)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read())
            if self._probe_enabled and (self._watchdog is None or self._watchdog.done()):
                self._watchdog = asyncio.create_task(self._watch())
            if self._heartbeat is None or self._heartbeat.done():
                self._heartbeat = asyncio.create_task(self._keep_present())
            if self._presence is None or self._presence.done():
                self._presence = asyncio.create_task(self._send_presence())

    def start_from(self, room: str, stored_last_id: int | None) -> int | None:
        """Return the newest message id a socket that has just joined ``room`` is not sent live.

        A room the hub already serves answers with the newest message it has
        delivered: every later one reaches the new socket live, and the ones
        up to it are the socket's to ``resume``. For a room new to the hub,
        ``stored_last_id`` (read before the hub joined the room's group)
        becomes its starting point, and the hub reads once what was stored
        meanwhile, so a message committed between that read and the
        subscription is delivered too.
        """
        feed = self.feeds[room]
        if feed.last_id is None:
            feed.last_id = stored_last_id or 0
            self._schedule_repair(room, feed, delay=0, always=True)
        return feed.last_id or None

    async def leave(self, room: str, member: Member, *, author: str | None = None) -> None:
        """Stop delivering to ``member``; the last one out of a room leaves its group.

        The hub's own records change first, so a channel layer that is down
        (the unsubscribes fail, and are only logged) leaves nothing behind here.
        """
        async with self._membership:
            feed = self.feeds.get(room)
            if feed is None or member not in feed.members:
                return
            feed.members.discard(member)
            feed.presence.forget(member)
            channel = self._channel
            assert channel is not None
            groups: list[str] = []
            if author is not None and author in self.authors:
                self.authors[author].discard(member)
                if not self.authors[author]:
                    del self.authors[author]
            if not feed.members:
                del self.feeds[room]
                if feed.repair is not None:
                    feed.repair.cancel()
                groups.append(events.room_group(room))
            if not self.feeds:
                groups.append(events.IDENTITY_GROUP)
            await self._discard(groups, channel)
            if not self.feeds:
                # A cancelled receive ends the channel (the pub/sub layer
                # unsubscribes it): the next join makes a new one.
                for task in (self._reader, self._watchdog, self._heartbeat, self._presence):
                    if task is not None:
                        task.cancel()
                self._reader = self._watchdog = self._heartbeat = self._presence = None
                self._channel = None

    async def _discard(self, groups: list[str], channel: str) -> None:
        for group in groups:
            try:
                await self.layer.group_discard(group, channel)
            except Exception as exc:  # Redis down: its subscriptions go with the connection
                logger.warning("room hub cannot leave group=%s: %s", group, exc.__class__.__name__)

    def has(self, member: Member) -> bool:
        """Whether ``member`` is still in one of the hub's rooms."""
        return any(member in feed.members for feed in self.feeds.values())

    # --- Reading the layer ----------------------------------------------------

    async def _read(self) -> None:
        assert self._channel is not None
        while True:
            try:
                event = await self.layer.receive(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep trying, sockets stay open
                logger.warning("room hub cannot read the channel layer: %s", exc.__class__.__name__)
                self.layer_ok = False
                await asyncio.sleep(1)
                continue
            try:
                await self.dispatch(event)
            except Exception:  # one bad event (an older process's, say) must not stop the reader
                logger.exception("room hub cannot handle an event of type %r", event.get("type"))

    async def dispatch(self, event: dict[str, Any]) -> None:
        if event["type"] == "hub.probe":
            echo = self._probe_echo.pop(event["token"], None)
            if echo is not None and not echo.done():
                echo.set_result(None)
            return
        if event["type"] == "identity.changed":
            await self._identity_changed(event)
            return
        room = event.get("room")
        if room not in self.feeds:
            return
        if event["type"] == "room.message":
            await self._on_message(room, event["id"], event["prev_id"], event["frame"])
        elif event["type"] == "room.frame":
            await self.broadcast(room, event["frame"])

    async def broadcast(self, room: str, frame: str, message_id: int | None = None) -> None:
        feed = self.feeds.get(room)
        for member in list(feed.members if feed else ()):
            try:
                await member.deliver(frame, message_id)
            except Exception:  # one broken socket must not silence the room
                logger.exception("delivery failed room=%s", room)

    async def _identity_changed(self, event: dict[str, Any]) -> None:
        """A browser was renamed: each of its local tabs shows it, then one tab per room tells the room."""
        tabs = list(self.authors.get(event.get("author_id", ""), ()))
        for tab in tabs:
            try:
                await tab.identity_changed(event)
            except Exception:
                logger.exception("rename delivery failed")
        if event["old"] == event["username"]:
            return
        # Telling a room takes Redis round trips: off the reader, so the
        # room's messages keep flowing meanwhile.
        one_per_room = {feed_room: tab for tab in tabs for feed_room, feed in self.feeds.items() if tab in feed.members}
        for tab in one_per_room.values():
            self.spawn(tab.announce_rename(event))

    def spawn(self, work: Any) -> None:
        """Run ``work`` as a task of its own, kept until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Chat messages: in order, once, no gaps ----------------------------------

    async def _on_message(self, room: str, message_id: int, prev_id: int | None, frame: str) -> None:
        feed = self.feeds[room]
        async with feed.lock:
            if feed.last_id is not None and message_id <= feed.last_id:
                return  # delivered already (a catch-up got there first)
            if feed.last_id is not None and prev_id is not None and prev_id > feed.last_id:
                # Its predecessor has not been delivered: wait for it a moment.
                feed.held[message_id] = (prev_id, frame)
                self._schedule_repair(room, feed, delay=REORDER_WAIT)
                return
            await self._deliver_message(room, feed, message_id, frame)
            await self._release_held(room, feed)

    async def _deliver_message(self, room: str, feed: Feed, message_id: int, frame: str) -> None:
        feed.last_id = message_id
        await self.broadcast(room, frame, message_id)

    async def _release_held(self, room: str, feed: Feed) -> None:
        """Deliver held messages whose predecessor is now delivered."""
        for message_id in sorted(feed.held):
            prev_id, frame = feed.held[message_id]
            assert feed.last_id is not None
            if message_id <= feed.last_id:
                del feed.held[message_id]
            elif prev_id is None or prev_id <= feed.last_id:
                del feed.held[message_id]
                await self._deliver_message(room, feed, message_id, frame)
            else:
                break

    def _schedule_repair(self, room: str, feed: Feed, *, delay: float, always: bool = False) -> None:
        if feed.repair is None or feed.repair.done():
            feed.repair = asyncio.create_task(self._repair(room, feed, delay, always))

    async def _repair(self, room: str, feed: Feed, delay: float, always: bool) -> None:
        """Fetch from the database what this room's stream is missing, and deliver it in order.

        Unless ``always`` (after an outage), only while a message is still
        held: usually the late one arrived during the wait.
        """
        await asyncio.sleep(delay)
        async with feed.lock:
            if feed.last_id is None or not (always or feed.held):
                return
            try:
                while True:
                    missed, has_more = await database_sync_to_async(selectors.messages_after)(
                        room=room, after=feed.last_id, limit=protocol.RESUME_MAX
                    )
                    for message in missed:
                        await self._deliver_message(room, feed, message.pk, protocol.chat_frame(message))
                    if not has_more:
                        break
            except Exception as exc:  # the database is down too: try again
                logger.warning("room hub cannot fetch missed messages room=%s: %s", room, exc.__class__.__name__)
                feed.repair = None
                self._schedule_repair(room, feed, delay=1.0, always=True)
                return
            if missed:
                logger.info("room hub caught up room=%s: %d missed message(s)", room, len(missed))
            # Whatever is still held was deleted meanwhile or is newer: deliver in order.
            for message_id in sorted(feed.held):
                prev_id, frame = feed.held.pop(message_id)
                if message_id > feed.last_id:
                    await self._deliver_message(room, feed, message_id, frame)

    def catch_up(self) -> None:
        """Fetch every room's missed messages from the database (after a layer outage)."""
        for room, feed in self.feeds.items():
            if feed.repair is not None and not feed.repair.done():
                feed.repair.cancel()
            feed.repair = asyncio.create_task(self._repair(room, feed, 0, True))

    # --- The probe: is the layer delivering? ---------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            delivering = await self._probe()
            if delivering == self.layer_ok:
                continue
            self.layer_ok = delivering
            if not delivering:
                logger.warning("room hub: the channel layer is not delivering; sockets stay open")
                continue
            logger.warning("room hub: the channel layer is back; catching up %d room(s)", len(self.feeds))
            await self._recovered()

    async def _probe(self) -> bool:
        """Send a probe to this hub's own channel; True if it comes back in time."""
        if self._channel is None:
            return True
        token = next(self._probe_tokens)
        echo = self._probe_echo[token] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.layer.send(self._channel, {"type": "hub.probe", "token": token}),
                                   PROBE_TIMEOUT)
            await asyncio.wait_for(echo, PROBE_TIMEOUT)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        finally:
            self._probe_echo.pop(token, None)

    async def _recovered(self) -> None:
        # A layer that keeps groups in Redis (the core layer) lost them in a
        # restart; joining again is harmless for the pub/sub layer.
        groups = [events.room_group(room) for room in self.feeds] + [events.IDENTITY_GROUP]
        for group in groups:
            try:
                assert self._channel is not None
                await self.layer.group_add(group, self._channel)
            except Exception as exc:
                logger.warning("room hub cannot rejoin group=%s: %s", group, exc.__class__.__name__)
        self.catch_up()
        for feed in list(self.feeds.values()):
            for member in list(feed.members):
                try:
                    await member.layer_recovered()
                except Exception:
                    logger.exception("socket could not restore its state after the outage")

    # --- Presence -------------------------------------------------------------------

    async def _keep_present(self) -> None:
        """Renew every local socket's presence entry and socket count, a third of the expiry apart.

        Renewals run ``RENEW_AT_ONCE`` at a time, and passes keep a fixed
        schedule, so a pass over thousands of sockets takes a few round
        trips' time and does not push the next one back.
        """
        loop = asyncio.get_running_loop()
        interval = settings.CHAT_PRESENCE_TTL / 3
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            members = [member for feed in list(self.feeds.values()) for member in list(feed.members)]
            for start in range(0, len(members), RENEW_AT_ONCE):
                await asyncio.gather(*(self._renew(m) for m in members[start:start + RENEW_AT_ONCE]))
            due += interval
            if loop.time() > due:
                logger.warning("presence renewal of %d socket(s) took longer than its interval", len(members))
                due = loop.time()

    async def _renew(self, member: Member) -> None:
        if not self.has(member):
            return  # left while the pass ran
        try:
            await asyncio.wait_for(member.refresh_presence(), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("presence renewal timed out")
        except Exception:
            logger.exception("presence renewal failed")

    async def first_presence(self, room: str, member: Member, people: RoomPeople) -> str:
        """The presence snapshot for ``member``, which has just entered ``room`` (``people``: what it read)."""
        feed = self.feeds[room].presence
        if people.listed is None and not feed.has_list(people.list_version):
            # The feed let that list go meanwhile: read it again.
            people = await get_presence().read(room=room, known_list=-1)
        return feed.snapshot(member, people, asyncio.get_running_loop().time())

    async def _send_presence(self) -> None:
        """Send each tab that is behind its room's presence, at most once a second."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PRESENCE_POLL)
            store = get_presence()
            rooms = list(self.feeds)
            try:
                versions = await store.versions(rooms)
                for room, version in zip(rooms, versions, strict=True):
                    feed = self.feeds.get(room)
                    if feed is not None and version != feed.presence.version:
                        feed.presence.learn(await store.read(room=room, known_list=feed.presence.list_version))
            except Exception as exc:  # Redis down: try again on the next pass
                logger.warning("presence read failed: %s", exc.__class__.__name__)
            now = loop.time()
            for room in rooms:
                feed = self.feeds.get(room)
                for members, frame in feed.presence.due(now) if feed else ():
                    for member in members:
                        try:
                            await member.deliver_presence(frame)  # type: ignore[attr-defined]
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
