"""The process's message writer: messages that wait together are stored together."""

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError
from django.db import OperationalError

from chat import services
from chat.identity import Identity, author_id_for
from chat.models import Message
from chat.writer import get_writer
from tests.tabs import new_browser, open_tab

pytestmark = pytest.mark.django_db(transaction=True)


def someone(name: str) -> Identity:
    sid = uuid.uuid4()
    return Identity(sid, author_id_for(sid), name, False)


async def stored_texts() -> list[str]:
    return await database_sync_to_async(lambda: list(Message.objects.order_by("id").values_list("text", flat=True)))()


async def test_messages_that_arrive_together_are_stored_together_and_reach_the_room_in_order(all_queries):
    reader = await open_tab(await new_browser())
    writer = get_writer()
    await writer.post(services.Post(someone("Warm"), "lobby", "warm up", None))  # creates the room
    await reader.recv_type("chat")
    senders = [someone(f"Sender {n}") for n in range(20)]

    all_queries.clear()
    stored = await asyncio.gather(
        *(writer.post(services.Post(who, "lobby", f"m{n}", f"c{n}")) for n, who in enumerate(senders))
    )
    # One batch: the room's lock, its newest id, one insert of twenty rows.
    assert all_queries.count == 3, all_queries.statements
    assert [posted.message.text for posted in stored] == [f"m{n}" for n in range(20)]
    shown = [(await reader.recv_type("chat"))["text"] for _ in range(20)]
    assert shown == [f"m{n}" for n in range(20)]
    assert await reader.silent()
    await reader.close()


async def test_an_invalid_message_fails_alone():
    writer = get_writer()
    ada = someone("Ada")
    results = await asyncio.gather(
        writer.post(services.Post(ada, "lobby", "first", None)),
        writer.post(services.Post(ada, "lobby", "", None)),
        writer.post(services.Post(ada, "lobby", "third", None)),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValidationError)
    assert [r.message.text for r in (results[0], results[2])] == ["first", "third"]
    assert await stored_texts() == ["first", "third"]


async def test_a_database_failure_reaches_every_sender_of_the_batch_and_the_next_batch_is_stored(monkeypatch):
    writer = get_writer()
    ada = someone("Ada")
    await writer.post(services.Post(ada, "lobby", "kept", None))
    real = services.post_messages

    def database_down(posts):
        raise OperationalError("connection to server failed")

    monkeypatch.setattr(services, "post_messages", database_down)
    results = await asyncio.gather(
        *(writer.post(services.Post(ada, "lobby", f"lost {n}", f"c{n}")) for n in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, OperationalError) for r in results), results
    monkeypatch.setattr(services, "post_messages", real)
    # The senders resend (same client_ids): stored once each, after what was kept.
    again = await asyncio.gather(*(writer.post(services.Post(ada, "lobby", f"lost {n}", f"c{n}")) for n in range(3)))
    assert [p.created for p in again] == [True, True, True]
    assert await stored_texts() == ["kept", "lost 0", "lost 1", "lost 2"]


async def test_a_sender_that_leaves_while_waiting_does_not_stop_the_others():
    writer = get_writer()
    ada, grace = someone("Ada"), someone("Grace")
    leaving = asyncio.create_task(writer.post(services.Post(ada, "lobby", "sent, then closed the tab", "a1")))
    staying = asyncio.create_task(writer.post(services.Post(grace, "lobby", "still here", "g1")))
    await asyncio.sleep(0)  # both are waiting for the writer
    leaving.cancel()
    posted = await staying
    assert posted.created and posted.message.text == "still here"
    # The message of the closed tab was on its way and is stored; its resend
    # (same client_id, from the reopened tab) gets that one back.
    resent = await writer.post(services.Post(ada, "lobby", "sent, then closed the tab", "a1"))
    assert not resent.created
    assert sorted(await stored_texts()) == ["sent, then closed the tab", "still here"]
