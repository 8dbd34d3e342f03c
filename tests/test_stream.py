"""One room's message stream: in id order, each once, what the layer lost read from the database."""

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async

from chat import services
from chat.identity import Identity
from chat.realtime.events import MessagesDeleted, MessageStored
from chat.realtime.stream import REORDER_WAIT, MessageStream

ADA = Identity(uuid.uuid4(), "a" * 20, "Ada", False)


class Room:
    """What the stream delivered to the room's tabs, in order."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    async def broadcast(self, frame: str, message_id: int) -> None:
        assert json.loads(frame)["id"] == message_id
        self.ids.append(message_id)


def event(message_id: int, prev_id: int | None) -> MessageStored:
    return MessageStored("lobby", message_id, prev_id, json.dumps({"type": "chat", "id": message_id}))


@database_sync_to_async
def store(n: int) -> list[int]:
    """Store ``n`` messages in the lobby; their events are never sent (as if lost)."""
    return [
        services.post_message(identity=ADA, room="lobby", text=f"m{i}", client_id=None).message.pk for i in range(n)
    ]


async def until(condition, timeout: float = 3) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.django_db(transaction=True)
async def test_messages_that_overtook_each_other_are_delivered_in_order_once():
    room = Room()
    stream = MessageStream("lobby", room.broadcast)
    assert stream.start_from(10) == 10
    for message in (event(12, 11), event(11, 10), event(11, 10), event(13, 12)):  # late, and a duplicate
        await stream.on_message(message)
    await asyncio.sleep(REORDER_WAIT * 2)
    assert room.ids == [11, 12, 13]
    stream.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_lost_message_is_read_from_the_database_before_the_next():
    first, lost, third = await store(3)
    room = Room()
    stream = MessageStream("lobby", room.broadcast)
    stream.start_from(first)
    await stream.on_message(event(third, lost))  # the event of `lost` never arrives
    await until(lambda: len(room.ids) == 2, timeout=REORDER_WAIT * 20)
    assert room.ids == [lost, third]
    stream.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_new_stream_reads_what_was_stored_after_the_connect_read_it():
    # The connect read the newest id, then the hub joined the room's group:
    # a message stored in between came before the subscription.
    (read_at_connect,) = await store(1)
    (in_between,) = await store(1)
    room = Room()
    stream = MessageStream("lobby", room.broadcast)
    assert stream.start_from(read_at_connect) == read_at_connect  # the tab resumes up to here
    await until(lambda: room.ids == [in_between])
    stream.stop()


@pytest.mark.django_db(transaction=True)
async def test_catch_up_delivers_what_was_stored_while_the_layer_was_away():
    (before,) = await store(1)
    room = Room()
    stream = MessageStream("lobby", room.broadcast)
    stream.start_from(before)
    await asyncio.sleep(0.1)
    missed = await store(3)  # stored, never broadcast (Redis was down)
    stream.catch_up()
    await until(lambda: len(room.ids) == 3)
    await stream.on_message(event(missed[-1], missed[-2]))  # a late copy changes nothing
    assert room.ids == missed
    stream.stop()


@pytest.mark.django_db(transaction=True)
async def test_a_message_deleted_while_it_waited_for_its_predecessor_is_never_delivered():
    frames: list[str] = []

    async def broadcast(frame: str, message_id: int | None) -> None:
        frames.append(frame)

    stream = MessageStream("lobby", broadcast)
    stream.start_from(10)
    await stream.on_message(event(12, 11))  # waits for 11
    deleted = json.dumps({"type": "deleted", "room": "lobby", "ids": [12]})
    await stream.on_deleted(MessagesDeleted("lobby", [12], deleted))
    await stream.on_message(event(11, 10))
    await asyncio.sleep(REORDER_WAIT * 2)
    assert [json.loads(frame) for frame in frames] == [json.loads(deleted), {"type": "chat", "id": 11}]
    stream.stop()
