"""The per-process room hub, with stand-in sockets on the configured channel layer."""

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import events, services
from chat.fanout import REORDER_WAIT, RoomHub
from chat.identity import Identity


class Socket:
    """A stand-in for a consumer: records what the hub delivers."""

    def __init__(self, broken: bool = False) -> None:
        self.frames: list[str] = []
        self.broken = broken

    async def deliver(self, frame: str, message_id: int | None = None) -> None:
        if self.broken:
            raise RuntimeError("this socket is broken")
        self.frames.append(frame)

    async def deliver_presence(self, version: int, frame: str) -> None:
        await self.deliver(frame)

    async def identity_changed(self, event: dict) -> None:
        self.frames.append(json.dumps({"type": "identity", "username": event["username"]}))

    async def announce_rename(self, event: dict) -> None:
        pass

    async def refresh_presence(self) -> None:
        pass

    async def layer_recovered(self) -> None:
        pass

    def ids(self) -> list[int]:
        return [json.loads(frame)["id"] for frame in self.frames]


async def until(condition, timeout: float = 3) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_one_event_reaches_every_local_socket_in_the_room_and_no_other():
    hub = RoomHub(get_channel_layer())
    lobby, also_lobby, elsewhere = Socket(), Socket(), Socket()
    await hub.join("lobby", lobby)
    await hub.join("lobby", also_lobby)
    await hub.join("other", elsewhere)
    await events.publish(events.room_group("lobby"), events.room_frame("lobby", '{"type":"chat"}'))
    await until(lambda: lobby.frames and also_lobby.frames)
    assert lobby.frames == also_lobby.frames == ['{"type":"chat"}']
    assert elsewhere.frames == []
    for room, socket in (("lobby", lobby), ("lobby", also_lobby), ("other", elsewhere)):
        await hub.leave(room, socket)
    assert hub.feeds == {}


async def test_a_broken_socket_does_not_silence_the_room():
    hub = RoomHub(get_channel_layer())
    broken, fine = Socket(broken=True), Socket()
    await hub.join("lobby", broken)
    await hub.join("lobby", fine)
    for n in range(2):
        await events.publish(events.room_group("lobby"), events.room_frame("lobby", f"frame {n}"))
    await until(lambda: len(fine.frames) == 2)
    assert fine.frames == ["frame 0", "frame 1"]
    await hub.leave("lobby", broken)
    await hub.leave("lobby", fine)


async def test_after_the_last_socket_leaves_the_room_hears_nothing_more():
    hub = RoomHub(get_channel_layer())
    first = Socket()
    await hub.join("lobby", first)
    await hub.leave("lobby", first)
    await events.publish(events.room_group("lobby"), events.room_frame("lobby", "missed"))
    second = Socket()
    await hub.join("lobby", second)  # a new channel, joined afresh
    await events.publish(events.room_group("lobby"), events.room_frame("lobby", "heard"))
    await until(lambda: second.frames)
    assert first.frames == [] and second.frames == ["heard"]
    await hub.leave("lobby", second)


async def test_a_bad_event_does_not_stop_the_room():
    hub = RoomHub(get_channel_layer())
    socket = Socket()
    await hub.join("lobby", socket)
    # From an older or broken process: no frame, no author.
    await events.publish(events.room_group("lobby"), {"type": "room.frame", "room": "lobby"})
    await events.publish(events.room_group("lobby"), {"type": "identity.changed", "old": "a", "username": "b"})
    await events.publish(events.room_group("lobby"), events.room_frame("lobby", "still heard"))
    await until(lambda: socket.frames)
    assert socket.frames == ["still heard"]
    await hub.leave("lobby", socket)


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
    socket = Socket()
    await hub.join("lobby", socket, author="a" * 20)
    await hub.leave("lobby", socket, author="a" * 20)
    assert hub.feeds == {} and hub.authors == {}
    assert not hub.has(socket)
    assert hub._reader is None and hub._heartbeat is None  # its tasks were stopped


# --- Chat messages: in order, once, no gaps ---------------------------------------

ADA = Identity(uuid.uuid4(), "a" * 20, "Ada", False)


@database_sync_to_async
def store(n: int) -> list[int]:
    """Store ``n`` messages in the lobby; their events are never sent (as if lost)."""
    return [services.post_message(identity=ADA, room="lobby", text=f"m{i}", client_id=None).message.pk
            for i in range(n)]


async def message_event(message_id: int, prev_id: int | None) -> None:
    frame = json.dumps({"type": "chat", "id": message_id})
    await events.publish(
        events.room_group("lobby"), events.room_message("lobby", message_id=message_id, prev_id=prev_id, frame=frame)
    )


async def joined_hub(last_id: int | None) -> tuple[RoomHub, Socket]:
    hub, socket = RoomHub(get_channel_layer()), Socket()
    await hub.join("lobby", socket)
    hub.start_from("lobby", last_id)
    return hub, socket


async def test_messages_that_overtook_each_other_are_delivered_in_order_once():
    hub, socket = await joined_hub(10)
    await message_event(12, 11)  # arrives before its predecessor
    await message_event(11, 10)
    await message_event(11, 10)  # and again: a duplicate
    await message_event(13, 12)
    await until(lambda: len(socket.frames) >= 3)
    await asyncio.sleep(REORDER_WAIT * 2)
    assert socket.ids() == [11, 12, 13]
    await hub.leave("lobby", socket)


@pytest.mark.django_db(transaction=True)
async def test_a_lost_message_is_fetched_from_the_database_before_the_next():
    first, lost, third = await store(3)
    hub, socket = await joined_hub(first)
    await message_event(third, lost)  # the event of `lost` never arrives
    await until(lambda: len(socket.frames) == 2, timeout=REORDER_WAIT * 20)
    assert socket.ids() == [lost, third]
    await hub.leave("lobby", socket)


@pytest.mark.django_db(transaction=True)
async def test_catch_up_delivers_what_was_stored_while_the_layer_was_away():
    (before,) = await store(1)
    hub, socket = await joined_hub(before)
    missed = await store(3)  # stored, never broadcast (Redis was down)
    hub.catch_up()
    await until(lambda: len(socket.frames) == 3)
    await message_event(missed[-1], missed[-2])  # a late copy changes nothing
    await asyncio.sleep(0.2)
    assert socket.ids() == missed
    await hub.leave("lobby", socket)
