"""The per-process room hub: opening tabs, delivering room events, leaving cleanly."""

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import protocol
from chat.identity import Identity
from chat.models import Block
from chat.realtime import gateway
from chat.realtime.events import RoomRenameShown, room_group
from chat.realtime.hub import RoomHub
from chat.realtime.tab import Tab

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """A stand-in for a consumer's socket: records what the hub sends."""

    def __init__(self, broken: bool = False) -> None:
        self.frames: list[dict] = []
        self.broken = broken

    async def send(self, message: dict) -> None:
        if self.broken:
            raise RuntimeError("this socket is broken")
        self.frames.append(json.loads(message["text"]))

    def kinds(self) -> list[str]:
        return [frame["type"] for frame in self.frames]

    def texts(self) -> list[str]:
        return [frame["text"] for frame in self.frames if frame["type"] == "x"]


def visitor(name: str) -> Identity:
    return Identity(uuid.uuid4(), uuid.uuid4().hex[:20], name, False)


async def opened(hub: RoomHub, room: str, socket: Socket, name: str = "Ada") -> Tab:
    tab = Tab(room, visitor(name), socket.send)
    assert await hub.open(tab, stored_last_id=None)
    return tab


async def shown(room: str, text: str) -> None:
    async def nowhere(event):
        raise AssertionError("the layer refused the event")

    await gateway.publish([RoomRenameShown(room, json.dumps({"type": "x", "text": text}))], deliver_locally=nowhere)


async def until(condition, timeout: float = 3) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_opened_tab_gets_its_welcome_then_the_rooms_people():
    hub, socket = RoomHub(get_channel_layer()), Socket()
    tab = await opened(hub, "lobby", socket)
    assert socket.kinds() == ["welcome", "presence"]
    assert socket.frames[1]["count"] == 1 and socket.frames[1]["users"][0]["username"] == "Ada"
    await hub.close(tab)


async def test_one_event_reaches_every_local_tab_in_the_room_and_no_other():
    hub = RoomHub(get_channel_layer())
    lobby, also_lobby, elsewhere = Socket(), Socket(), Socket()
    tabs = [
        await opened(hub, "lobby", lobby),
        await opened(hub, "lobby", also_lobby),
        await opened(hub, "other", elsewhere),
    ]
    await shown("lobby", "hello")
    await until(lambda: lobby.texts() and also_lobby.texts())
    assert lobby.texts() == also_lobby.texts() == ["hello"]
    assert elsewhere.texts() == []
    for tab in tabs:
        await hub.close(tab)
    assert hub.feeds == {} and hub.authors == {}


async def test_a_broken_socket_does_not_silence_the_room():
    hub, broken, fine = RoomHub(get_channel_layer()), Socket(), Socket()
    tabs = [await opened(hub, "lobby", broken), await opened(hub, "lobby", fine)]
    broken.broken = True
    for n in range(2):
        await shown("lobby", f"frame {n}")
    await until(lambda: len(fine.texts()) == 2)
    assert fine.texts() == ["frame 0", "frame 1"]
    for tab in tabs:
        await hub.close(tab)


async def test_after_the_last_tab_leaves_the_room_hears_nothing_more():
    hub, first, second = RoomHub(get_channel_layer()), Socket(), Socket()
    await hub.close(await opened(hub, "lobby", first))
    await shown("lobby", "missed")
    tab = await opened(hub, "lobby", second)  # a new channel, joined afresh
    await shown("lobby", "heard")
    await until(lambda: second.texts())
    assert first.texts() == [] and second.texts() == ["heard"]
    await hub.close(tab)


async def test_a_bad_message_does_not_stop_the_room():
    hub, socket = RoomHub(get_channel_layer()), Socket()
    tab = await opened(hub, "lobby", socket)
    layer = get_channel_layer()
    # From an older or broken process: a missing field, an unknown type.
    await layer.group_send(room_group("lobby"), {"type": "chat.room_rename_shown", "room": "lobby"})
    await layer.group_send(room_group("lobby"), {"type": "identity.changed", "old": "a", "username": "b"})
    await shown("lobby", "still heard")
    await until(lambda: socket.texts())
    assert socket.texts() == ["still heard"]
    await hub.close(tab)


class LayerThatCannotUnsubscribe:
    """The configured layer, but leaving a group fails (Redis went away)."""

    def __init__(self, layer) -> None:
        self.layer = layer

    def __getattr__(self, name):
        return getattr(self.layer, name)

    async def group_discard(self, group, channel):
        raise ConnectionError("Redis is down")


async def test_leaving_while_the_layer_is_down_leaves_nothing_behind_in_the_hub():
    hub = RoomHub(LayerThatCannotUnsubscribe(get_channel_layer()))
    tab = await opened(hub, "lobby", Socket())
    await hub.close(tab)
    assert hub.feeds == {} and hub.authors == {}
    assert not hub.has(tab)
    assert hub._loops == []  # its tasks were stopped


async def test_a_tab_over_its_identitys_cap_is_refused_and_not_kept(settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 1
    hub, who = RoomHub(get_channel_layer()), visitor("Ada")
    first = Tab("lobby", who, Socket().send)
    assert await hub.open(first, stored_last_id=None)
    socket = Socket()
    over = Tab("lobby", who, socket.send)
    assert not await hub.open(over, stored_last_id=None)
    assert socket.frames == [] and not hub.has(over)
    await hub.close(first)


class ClosableSocket(Socket):
    """A socket that also records the code it was closed with."""

    closed: int | None = None

    async def send(self, message: dict) -> None:
        if message["type"] == "websocket.close":
            self.closed = message["code"]
        else:
            await super().send(message)


async def test_a_block_sent_while_the_layer_was_down_closes_the_tabs_when_it_is_back():
    """Browser events are not replayed after an outage: the hub looks the blocks up instead."""
    hub, blocked, fine = RoomHub(get_channel_layer()), ClosableSocket(), ClosableSocket()
    blocked_tab, fine_tab = await opened(hub, "lobby", blocked), await opened(hub, "lobby", fine, name="Bo")
    # The block committed, but its event never reached this process.
    await database_sync_to_async(Block.objects.create)(author_id=blocked_tab.identity.author_id)
    await hub._layer_back()
    assert (blocked.closed, fine.closed) == (protocol.CLOSE_BLOCKED, None)
    for tab in (blocked_tab, fine_tab):
        await hub.close(tab)
