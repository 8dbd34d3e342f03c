"""A server process's one subscriber to the channel layer: it opens tabs, and delivers to them.

A broadcast to a room crosses the channel layer once per *process*, not once
per open socket. Each process has one :class:`RoomHub`. While it has tabs in
a room it is in the room's group with a single channel of its own, reads
every event once and writes the frame (encoded once, by the sender) straight
to each local tab: no channel-layer message, no JSON encoding and no trip
through the consumer's dispatch per socket.

The hub composes its parts and hands them what they need:

- per room (a ``Feed``): the ordered, gap-free ``MessageStream`` and the
  ``PresenceFeed`` (what each tab has been shown of the room's people);
- the ``LayerProbe``, which tells it when the layer delivers again;
- the presence store, which it polls for changed rooms and through which
  it renews every local socket on one timer (no task per socket).

A browser's events (a rename) come through one group all hubs are in; the
hub shows them in that browser's local tabs, and one tab per room (claimed
across processes in the presence store) has the room told.
"""

import asyncio
import logging
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from chat import metrics, protocol, selectors
from chat.realtime import gateway
from chat.realtime.events import (
    IDENTITY_GROUP,
    Event,
    MessagesDeleted,
    MessageStored,
    RoomRenameShown,
    VisitorBlocked,
    VisitorRenamed,
    VisitorSignedOut,
    from_message,
    room_group,
)
from chat.realtime.presence_feed import PresenceFeed
from chat.realtime.presence_store import PresenceStore, Renewal, get_presence
from chat.realtime.probe import PROBE_TIMEOUT, PROBE_TYPE, LayerProbe
from chat.realtime.stream import Broadcast, MessageStream
from chat.realtime.tab import Tab, prepare

logger = logging.getLogger(__name__)

# Tabs of one room the hub renews in one script.
RENEW_AT_ONCE = 500
# How often the hub asks the presence store which rooms changed. A tab still
# gets at most one presence frame a second (presence_feed.PRESENCE_INTERVAL).
PRESENCE_POLL = 0.25


@dataclass
class Feed:
    """One room as this process serves it: its tabs, its message stream, its presence."""

    stream: MessageStream
    presence: PresenceFeed[Tab]
    tabs: set[Tab] = field(default_factory=set)


class RoomHub:
    """The tabs of one process, by room, and their one channel-layer subscription."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.feeds: dict[str, Feed] = {}
        # Local tabs by browser (author id), for the browser's events.
        self.authors: dict[str, set[Tab]] = {}
        self._channel: str | None = None
        self._probe: LayerProbe | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._membership = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def presence(self) -> PresenceStore:
        return get_presence()

    # --- Opening and closing tabs ------------------------------------------------------

    async def open(self, tab: Tab, *, stored_last_id: int | None) -> bool:
        """Join ``tab`` to its room, count it and add it to presence, send its welcome and snapshot.

        ``stored_last_id`` is the room's newest message id as the connect read
        it. False (and nothing kept) when the tab is over its identity's
        socket cap. Raises what Redis or the layer raised; the caller then
        closes the socket, and ``close`` cleans up.
        """
        await self._join(tab)
        feed = self.feeds[tab.room]
        last_id = feed.stream.start_from(stored_last_id)
        identity = tab.identity
        people = await self.presence.enter(
            room=tab.room,
            socket_id=tab.socket_id,
            author_id=identity.author_id,
            username=identity.username,
            verified=identity.verified,
            known_list=feed.presence.list_version,
        )
        if people is None:
            await self._leave(tab)
            return False
        if people.listed is None and not feed.presence.has_list(people.list_version):
            people = await self.presence.read(room=tab.room, known_list=-1)  # the feed let that list go
        await tab.send(
            protocol.welcome_frame(
                room=tab.room,
                username=tab.identity.username,  # a rename may have come meanwhile
                author_id=identity.author_id,
                verified=identity.verified,
                last_id=last_id,
            )
        )
        await tab.send(feed.presence.snapshot(tab, people, asyncio.get_running_loop().time()))
        await tab.welcomed(last_id)
        return True

    async def close(self, tab: Tab) -> None:
        """Stop delivering to ``tab`` and take it out of presence and its socket count (once)."""
        if tab.closing:
            return
        tab.closing = True
        # Leave first: daphne gives a closed socket's consumer only
        # --application-close-timeout (10 s) to finish, and the hub must stop
        # delivering to it and renewing it whatever Redis does.
        await self._leave(tab)
        try:
            await self.presence.exit(room=tab.room, socket_id=tab.socket_id, author_id=tab.identity.author_id)
        except Exception as exc:
            # Its presence entry and socket count expire on their own (CHAT_PRESENCE_TTL).
            logger.warning("disconnect cleanup failed room=%s: %s", tab.room, exc.__class__.__name__)

    def has(self, tab: Tab) -> bool:
        """Whether ``tab`` is still in its room here."""
        feed = self.feeds.get(tab.room)
        return feed is not None and tab in feed.tabs

    async def _join(self, tab: Tab) -> None:
        """Start delivering the room's events and the browser's to ``tab``.

        Raises what the channel layer raised (Redis down); then nothing is recorded.
        """
        async with self._membership:
            if self._channel is None:
                channel = await self.layer.new_channel()
                await self.layer.group_add(IDENTITY_GROUP, channel)
                self._channel = channel
                self._start_loops(channel)
            if tab.room not in self.feeds:
                await self.layer.group_add(room_group(tab.room), self._channel)
                self.feeds[tab.room] = Feed(
                    MessageStream(tab.room, self._broadcaster(tab.room)), PresenceFeed(tab.room)
                )
            self.feeds[tab.room].tabs.add(tab)
            metrics.SOCKETS_OPEN.inc()
            self.authors.setdefault(tab.identity.author_id, set()).add(tab)

    async def _leave(self, tab: Tab) -> None:
        """Stop delivering to ``tab``; the last one out of a room leaves its group.

        The hub's own records change first, so a channel layer that is down
        (the unsubscribes fail, and are only logged) leaves nothing behind here.
        """
        async with self._membership:
            feed = self.feeds.get(tab.room)
            if feed is None or tab not in feed.tabs:
                return
            feed.tabs.discard(tab)
            metrics.SOCKETS_OPEN.dec()
            feed.presence.forget(tab)
            mine = self.authors.get(tab.identity.author_id, set())
            mine.discard(tab)
            if not mine:
                self.authors.pop(tab.identity.author_id, None)
            channel = self._channel
            assert channel is not None
            groups: list[str] = []
            if not feed.tabs:
                del self.feeds[tab.room]
                feed.stream.stop()
                groups.append(room_group(tab.room))
            if not self.feeds:
                groups.append(IDENTITY_GROUP)
            for group in groups:
                try:
                    await self.layer.group_discard(group, channel)
                except Exception as exc:  # Redis down: its subscriptions go with the connection
                    logger.warning("room hub cannot leave group=%s: %s", group, exc.__class__.__name__)
            if not self.feeds:
                metrics.presence_seen(())  # the presence loop, which keeps it, stops
                # A cancelled receive ends the channel (the pub/sub layer
                # unsubscribes it): the next join makes a new one.
                for loop in self._loops:
                    loop.cancel()
                self._loops, self._channel, self._probe = [], None, None

    def _start_loops(self, channel: str) -> None:
        loops = [self._read(channel), self._keep_present(), self._send_presence()]
        if settings.REDIS_URL:  # only a layer outside the process (Redis) can lose events
            self._probe = LayerProbe(self.layer, channel, self._layer_back)
            loops.append(self._probe.watch())
        self._loops = [asyncio.create_task(loop) for loop in loops]

    def spawn(self, work: Any) -> None:
        """Run ``work`` as a task of its own, kept until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Reading the layer -------------------------------------------------------------

    async def _read(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: keep trying, sockets stay open
                logger.warning("room hub cannot read the channel layer: %s", exc.__class__.__name__)
                if self._probe is not None:
                    self._probe.delivering = False
                await asyncio.sleep(1)
                continue
            try:
                if message.get("type") == PROBE_TYPE:
                    if self._probe is not None:
                        self._probe.echo(message)
                    continue
                event = from_message(message)
                if event is not None:
                    await self.dispatch(event)
            except Exception:  # one bad event (an older process's, say) must not stop the reader
                logger.exception("room hub cannot handle a message of type %r", message.get("type"))

    async def dispatch(self, event: Event) -> None:
        """Deliver one event to the local tabs it concerns (also used when the layer refused it)."""
        match event:
            case MessageStored(room=room) if room in self.feeds:
                await self.feeds[room].stream.on_message(event)
            case MessagesDeleted(room=room) if room in self.feeds:
                await self.feeds[room].stream.on_deleted(event)
            case RoomRenameShown(room=room, frame=frame) if room in self.feeds:
                await self._broadcast(room, frame)
            case VisitorRenamed():
                await self._visitor_renamed(event)
            case VisitorSignedOut(author_id=author_id):
                for tab in list(self.authors.get(author_id, ())):
                    if tab.identity.verified:
                        await tab.close(protocol.CLOSE_NO_SESSION)
            case VisitorBlocked(author_id=author_id):
                await self._close_blocked({author_id})

    async def _close_blocked(self, author_ids: set[str]) -> None:
        for author_id in author_ids:
            for tab in list(self.authors.get(author_id, ())):
                await tab.close(protocol.CLOSE_BLOCKED)

    async def _broadcast(self, room: str, frame: str, message_id: int | None = None) -> None:
        feed = self.feeds.get(room)
        tabs = list(feed.tabs if feed else ())
        prepared = prepare(frame) if len(tabs) > 1 else None
        metrics.delivered("room", len(tabs))
        for tab in tabs:
            try:
                await tab.deliver(frame, message_id, prepared)
            except Exception:  # one broken socket must not silence the room
                logger.exception("delivery failed room=%s", room)

    def _broadcaster(self, room: str) -> Broadcast:
        async def broadcast(frame: str, message_id: int | None) -> None:
            await self._broadcast(room, frame, message_id)

        return broadcast

    async def _visitor_renamed(self, event: VisitorRenamed) -> None:
        """A browser was renamed: each of its local tabs shows it, then one tab per room tells the room."""
        tabs = list(self.authors.get(event.author_id, ()))
        frame = protocol.identity_frame(username=event.username)
        for tab in tabs:
            tab.identity = replace(tab.identity, username=event.username)
            await tab.deliver(frame)
        if event.old == event.username:
            return
        # Telling a room takes Redis round trips: off the reader, so the
        # room's messages keep flowing meanwhile.
        for room in {tab.room for tab in tabs}:
            self.spawn(self._announce_rename(room, event))

    async def _announce_rename(self, room: str, event: VisitorRenamed) -> None:
        """Show the new name on the room's list and send the room ``renamed`` (once, across processes)."""
        try:
            if not await self.presence.rename(
                room=room, author_id=event.author_id, username=event.username, change_id=event.change_id
            ):
                return  # a tab of this browser on another process tells the room
            frame = protocol.renamed_frame(author_id=event.author_id, old=event.old, username=event.username)
            await gateway.publish([RoomRenameShown(room, frame)], deliver_locally=self.dispatch)
        except Exception as exc:
            logger.warning("rename announcement failed room=%s: %s", room, exc.__class__.__name__)

    async def _layer_back(self) -> None:
        """The layer delivers again: rejoin its groups, catch every room up, put every tab back in presence.

        Browser events are not in the database's order of messages: a block
        sent meanwhile is looked up instead, and its tabs closed.
        """
        # A layer that keeps groups in Redis (the core layer) lost them in a
        # restart; joining again is harmless for the pub/sub layer.
        assert self._channel is not None
        for group in [room_group(room) for room in self.feeds] + [IDENTITY_GROUP]:
            try:
                await self.layer.group_add(group, self._channel)
            except Exception as exc:
                logger.warning("room hub cannot rejoin group=%s: %s", group, exc.__class__.__name__)
        for feed in list(self.feeds.values()):
            feed.stream.catch_up()
        try:
            await self._close_blocked(await database_sync_to_async(selectors.blocked_among)(list(self.authors)))
        except Exception as exc:
            logger.warning("room hub cannot look up blocks: %s", exc.__class__.__name__)
        await self._renew_all()

    # --- Presence ---------------------------------------------------------------------

    async def _keep_present(self) -> None:
        """Renew every local tab's presence entry and socket count, a third of the expiry apart.

        Renewals run ``RENEW_AT_ONCE`` at a time, and passes keep a fixed
        schedule, so a pass over thousands of tabs takes a few round trips'
        time and does not push the next one back.
        """
        loop = asyncio.get_running_loop()
        interval = settings.CHAT_PRESENCE_TTL / 3
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            count = await self._renew_all()
            due += interval
            if loop.time() > due:
                logger.warning("presence renewal of %d socket(s) took longer than its interval", count)
                due = loop.time()

    async def _renew_all(self) -> int:
        """Renew every local tab, ``RENEW_AT_ONCE`` tabs of a room per script."""
        count = 0
        for room, feed in list(self.feeds.items()):
            tabs = list(feed.tabs)
            count += len(tabs)
            for start in range(0, len(tabs), RENEW_AT_ONCE):
                try:
                    await asyncio.wait_for(self._renew_some(room, tabs[start : start + RENEW_AT_ONCE]), PROBE_TIMEOUT)
                except TimeoutError:
                    logger.warning("presence renewal timed out room=%s", room)
                except Exception:
                    logger.exception("presence renewal failed room=%s", room)
        return count

    async def _renew_some(self, room: str, tabs: list[Tab]) -> None:
        """Renew ``tabs`` of ``room`` in one script; none that closed meanwhile stays in presence.

        A renewal puts back a tab whose entry is gone (it had expired), so a
        tab whose cleanup ran while the script was on its way would come back
        as a ghost: those are taken out again.
        """
        live = [tab for tab in tabs if not tab.closing]
        await self.presence.renew(room=room, tabs=[_renewal(tab) for tab in live])
        for tab in live:
            if tab.closing:
                await self.presence.exit(room=room, socket_id=tab.socket_id, author_id=tab.identity.author_id)

    async def _send_presence(self) -> None:
        """Send each tab that is behind its room's presence, at most once a second."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PRESENCE_POLL)
            store = self.presence
            rooms = list(self.feeds)
            try:
                versions = await store.versions(rooms)
                for room, version in zip(rooms, versions, strict=True):
                    feed = self.feeds.get(room)
                    if feed is not None and version != feed.presence.version:
                        feed.presence.learn(await store.read(room=room, known_list=feed.presence.list_version))
            except Exception as exc:  # Redis down: try again on the next pass
                logger.warning("presence read failed: %s", exc.__class__.__name__)
            metrics.presence_seen(feed.presence.count for feed in self.feeds.values())
            now = loop.time()
            for room in rooms:
                feed = self.feeds.get(room)
                for tabs, frame in feed.presence.due(now) if feed else ():
                    prepared = prepare(frame) if len(tabs) > 1 else None
                    metrics.delivered("presence", len(tabs))
                    for tab in tabs:
                        await tab.send(frame, prepared)


def _renewal(tab: Tab) -> Renewal:
    identity = tab.identity
    return Renewal(tab.socket_id, identity.author_id, identity.username, identity.verified)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoomHub]" = weakref.WeakKeyDictionary()


def get_hub() -> RoomHub:
    """Return this event loop's hub for the current channel layer."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:  # a new layer: settings changed (tests)
        hub = _hubs[loop] = RoomHub(layer)
    return hub
