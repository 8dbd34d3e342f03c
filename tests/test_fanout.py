"""The per-process room hub, with stand-in sockets on the configured channel layer."""

import asyncio

from channels.layers import get_channel_layer

from chat import events
from chat.fanout import RoomHub


class Socket:
    """A stand-in for a consumer: records what the hub delivers."""

    def __init__(self, broken: bool = False) -> None:
        self.frames: list[str] = []
        self.broken = broken

    async def deliver(self, frame: str) -> None:
        if self.broken:
            raise RuntimeError("this socket is broken")
        self.frames.append(frame)

    async def deliver_presence(self, version: int, frame: str) -> None:
        await self.deliver(frame)


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
    assert hub.rooms == {}


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
