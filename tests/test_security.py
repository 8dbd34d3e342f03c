"""Nobody can act as another browser over the socket, and no frame carries a session secret.

Identity comes from the session cookie alone: fields a client adds to its
frames (an ``author_id``, a ``session_id``, ``verified``) are ignored, and
neither the session key nor the ``session_id`` is ever sent to any tab.
"""

import json

import pytest
from channels.db import database_sync_to_async

from chat.identity import author_id_for, guest_name_for
from chat.models import Message, VisitorSettings
from tests.conftest import make_session
from tests.tabs import Tab, open_tab

pytestmark = pytest.mark.django_db(transaction=True)


async def new_session():
    return await database_sync_to_async(make_session)()


async def test_extra_fields_in_frames_cannot_borrow_another_identity():
    victim, mallory = await new_session(), await new_session()
    victim_author = author_id_for(victim["session_id"])
    mallory_author = author_id_for(mallory["session_id"])
    v, m = await open_tab(victim.session_key), await open_tab(mallory.session_key)
    await v.send({"type": "rename", "username": "Victim"})
    await v.recv_type("identity")
    await v.send({"type": "chat", "text": "the victim's own", "client_id": "v-1"})
    await v.recv_type("chat")
    for tab in (v, m):
        await tab.quiet()
    borrowed = {
        "author_id": victim_author,
        "session_id": victim["session_id"],
        "username": "Victim",
        "verified": True,
        "room": "other",
        "id": 1,
        "ts": "2000-01-01T00:00:00.000Z",
    }

    # A chat frame, even with the victim's client_id, is Mallory's own new message.
    await m.send({**borrowed, "type": "chat", "text": "it is me, the victim", "client_id": "v-1"})
    seen = await v.recv_type("chat")
    assert await m.recv_type("chat") == seen
    assert (seen["author_id"], seen["username"], seen["verified"], seen["room"], seen["text"]) == (
        mallory_author,
        guest_name_for(mallory_author),
        False,
        "lobby",
        "it is me, the victim",
    )
    stored = await database_sync_to_async(Message.objects.get)(pk=seen["id"])
    assert (stored.author_id, stored.username, stored.verified, stored.room_id) == (
        mallory_author,
        guest_name_for(mallory_author),
        False,
        "lobby",
    )

    # A rename renames Mallory only; the victim's tabs get no identity frame.
    await v.quiet()
    await m.send({**borrowed, "type": "rename", "username": "Mallory"})
    assert await m.recv_type("identity") == {"type": "identity", "username": "Mallory"}
    renamed = await v.recv_type("renamed")
    assert (renamed["author_id"], renamed["username"]) == (mallory_author, "Mallory")
    frames = [await v.recv()]
    while not await v.comm.receive_nothing(timeout=0.5):
        frames.append(await v.recv())
    assert "identity" not in {f["type"] for f in frames}
    names = await database_sync_to_async(
        lambda: {str(sid): name for sid, name in VisitorSettings.objects.values_list("session_id", "username")}
    )()
    assert names == {victim["session_id"]: "Victim", mallory["session_id"]: "Mallory"}
    for tab in (v, m):
        await tab.close()


async def raw_frames(tab: Tab) -> list[str]:
    """Every frame the tab has pending, as sent on the wire."""
    frames = []
    while not await tab.comm.receive_nothing(timeout=0.3):
        frames.append(await tab.comm.receive_from())
    return frames


async def test_no_frame_to_any_tab_carries_a_session_key_or_session_id():
    ada, grace = await new_session(), await new_session()
    secrets = {
        value
        for session in (ada, grace)
        for value in (session.session_key, session["session_id"], session["session_id"].replace("-", ""))
    }
    wire: list[str] = []
    a, g = Tab(ada.session_key), Tab(grace.session_key)
    for tab in (a, g):
        wire.append(json.dumps(await tab.open()))  # welcome
        wire += await raw_frames(tab)  # presence
    await a.send({"type": "chat", "text": "hello", "client_id": "c1"})
    await a.send({"type": "rename", "username": "Ada"})
    await g.send({"type": "history", "limit": 10})
    await g.send({"type": "resume", "after": 0})
    await g.send({"type": "chat", "text": "", "client_id": "bad"})
    wire += await raw_frames(a)
    await a.close()  # g sees the presence change
    wire += await raw_frames(g)

    kinds = {json.loads(frame)["type"] for frame in wire}
    assert {"welcome", "presence", "chat", "history", "identity", "renamed", "error"} <= kinds
    leaked = [(secret, frame) for frame in wire for secret in secrets if secret in frame]
    assert not leaked
    await g.close()
