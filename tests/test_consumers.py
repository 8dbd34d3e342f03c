"""The websocket consumer through the real ASGI stack (origin check, sessions, auth).

Every frame and error of the contract (docs/protocol.md), presence with tab
counts, per-identity rate limits, and exact query counts. With REDIS_URL set
these run over the Redis channel layer, presence and rate limits.
"""

import asyncio
import itertools
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from chat import services
from chat.identity import author_id_for, guest_name_for
from chat.models import Message, VisitorSettings
from chat.realtime.hub import get_hub
from tests.conftest import make_session
from tests.tabs import TIMEOUT, Tab, new_browser, open_tab

pytestmark = pytest.mark.django_db(transaction=True)

# --- Handshake ------------------------------------------------------------------


async def test_welcome_then_presence():
    key = await new_browser()
    tab = Tab(key)
    welcome = await tab.open()
    author = welcome["author_id"]
    assert welcome == {
        "type": "welcome",
        "room": "lobby",
        "username": guest_name_for(author),
        "author_id": author,
        "verified": False,
        "last_id": None,
    }
    presence = await tab.recv()
    assert presence == {
        "type": "presence",
        "room": "lobby",
        "count": 1,
        "users": [{"author_id": author, "username": guest_name_for(author), "verified": False, "tabs": 1}],
    }
    await tab.close()


async def test_welcome_carries_the_newest_message_id():
    tab = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "one"})
    sent = await tab.recv_type("chat")
    other = Tab(await new_browser())
    assert (await other.open())["last_id"] == sent["id"]
    await tab.close()
    await other.close()


def invalid_session_cookie(kind: str) -> str | None:
    """The cookie of a browser without a valid session, of the given kind."""
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    if kind == "none":
        return None
    if kind == "garbage":
        return "not-a-session-key"
    if kind == "forged":  # well-formed, never issued
        return get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
    session = make_session()
    key = session.session_key
    if kind == "expired":
        Session.objects.filter(pk=key).update(expire_date=timezone.now() - timezone.timedelta(seconds=1))
    elif kind == "flushed":  # what logging out does
        session.flush()
    elif kind == "deleted":  # clearsessions, or the row removed by hand
        Session.objects.filter(pk=key).delete()
    elif kind == "no session_id":
        del session["session_id"]
        session["other"] = 1
        session.save()
    return key


@pytest.mark.parametrize("kind", ["none", "garbage", "forged", "expired", "flushed", "deleted", "no session_id"])
async def test_handshake_without_a_valid_session_closes_with_4401_and_can_do_nothing(kind):
    # Someone with a name and a message is in the room: nothing of theirs is adopted.
    other = await open_tab(await new_browser())
    await other.send({"type": "rename", "username": "Someone"})
    await other.send({"type": "chat", "text": "theirs"})
    await other.recv_type("chat")
    await other.recv_type("presence_diff")  # its own new name on the list
    await other.quiet()

    tab = Tab(await database_sync_to_async(invalid_session_cookie)(kind))
    connected, _ = await tab.comm.connect(timeout=TIMEOUT)
    assert connected  # accepted, then closed at once (no welcome): the client reloads the page
    assert await tab.comm.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4401}
    # A client that ignores the close gets nothing done.
    for frame in (
        {"type": "chat", "text": "sneaky"},
        {"type": "rename", "username": "Sneaky"},
        {"type": "history"},
        {"type": "ping"},
    ):
        await tab.send(frame)
    assert await tab.comm.receive_nothing(timeout=0.5)
    assert await other.silent()  # nobody joined the room
    assert await database_sync_to_async(lambda: list(Message.objects.values_list("text", flat=True)))() == ["theirs"]
    assert await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))() == [
        "Someone"
    ]
    await tab.comm.disconnect()
    await other.close()


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", b"http://localhost.evil.example"])
async def test_foreign_origin_is_refused_before_accept(origin):
    tab = Tab(await new_browser(), origin=origin)
    connected, _ = await tab.comm.connect(timeout=TIMEOUT)
    assert not connected  # closed before accept: daphne answers the handshake with 403


async def test_signed_in_staff_are_verified():
    user = await database_sync_to_async(User.objects.create_user)("staff", password="pw", is_staff=True)
    tab = Tab(await new_browser(user=user))
    assert (await tab.open())["verified"] is True
    await tab.recv_type("presence")
    await tab.send({"type": "chat", "text": "official"})
    assert (await tab.recv_type("chat"))["verified"] is True
    await tab.close()


async def test_after_sign_out_no_socket_of_that_browser_stays_verified():
    user = await database_sync_to_async(User.objects.create_user)("staff", password="pw", is_staff=True)
    key = await new_browser(user=user)
    staff, elsewhere = Tab(key), Tab(key, room="other")
    welcomes = [await tab.open() for tab in (staff, elsewhere)]
    assert [w["verified"] for w in welcomes] == [True, True]
    bystander = await open_tab(await new_browser())
    await staff.quiet()

    def sign_out() -> str:
        browser = Client()
        browser.cookies[settings.SESSION_COOKIE_NAME] = key
        assert browser.post("/admin/logout/").status_code == 200
        return browser.cookies[settings.SESSION_COOKIE_NAME].value  # the flushed session's new key

    new_key = await database_sync_to_async(sign_out)()
    # Both of its sockets, in every room, are closed; the page reloads and comes back as a guest.
    for tab in (staff, elsewhere):
        closed = await tab.comm.receive_output(timeout=TIMEOUT)
        while closed["type"] != "websocket.close":
            closed = await tab.comm.receive_output(timeout=TIMEOUT)
        assert closed["code"] == 4401
    assert await bystander.only_presence()  # another browser is not touched
    again = Tab(new_key)
    welcome = await again.open()
    assert welcome["verified"] is False  # a guest now
    assert welcome["author_id"] == welcomes[0]["author_id"]  # the same browser: its session_id was kept
    await again.close()
    await bystander.close()


# --- chat -----------------------------------------------------------------------


async def test_chat_reaches_the_room_and_only_the_room():
    ada, grace, elsewhere = [await new_browser() for _ in range(3)]
    tab_a, tab_g = await open_tab(ada), await open_tab(grace)
    tab_x = await open_tab(elsewhere, room="other")
    await tab_a.quiet()
    await tab_a.send({"type": "chat", "text": "  <b>hi</b>  ", "client_id": "c-1"})
    echo = await tab_a.recv_type("chat")
    seen = await tab_g.recv_type("chat")
    assert echo == seen
    assert echo["text"] == "<b>hi</b>" and echo["client_id"] == "c-1" and echo["room"] == "lobby"
    assert echo["ts"].endswith("Z") and echo["verified"] is False
    assert await tab_x.silent()
    stored = await database_sync_to_async(Message.objects.get)()
    assert (stored.pk, stored.text, stored.username) == (echo["id"], "<b>hi</b>", echo["username"])
    for tab in (tab_a, tab_g, tab_x):
        await tab.close()


async def test_resent_client_id_answers_with_the_stored_message_only_to_the_sender():
    key = await new_browser()
    tab, other = await open_tab(key), await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "once", "client_id": "dup"})
    first = await tab.recv_type("chat")
    await other.recv_type("chat")
    await tab.quiet()
    await tab.send({"type": "chat", "text": "once", "client_id": "dup"})
    assert await tab.recv() == first
    assert await other.silent()
    assert await database_sync_to_async(Message.objects.count)() == 1
    await tab.close()
    await other.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[]", "bad_json"),
        ({"type": "dance"}, "unknown_type"),
        ({"no": "type"}, "unknown_type"),
        ({"type": "chat", "text": "   "}, "invalid_text"),
        ({"type": "chat", "text": "x" * 2001}, "text_too_long"),
        ({"type": "chat", "text": "a\u0000b"}, "invalid_text"),
        ({"type": "chat", "text": "hi", "client_id": "c" * 65}, "invalid_request"),
        ({"type": "rename", "username": "x" * 33}, "invalid_username"),
        ({"type": "rename", "username": "evil\u202e"}, "invalid_username"),
        ({"type": "history", "before": "x"}, "invalid_request"),
        ({"type": "history", "before": 5, "limit": 500}, "invalid_request"),
        ({"type": "resume"}, "invalid_request"),
    ],
)
async def test_bad_frames_get_the_contract_error_and_change_nothing(frame, code):
    key = await new_browser()
    tab = await open_tab(key)
    await tab.send({"type": "rename", "username": "Ada"})
    await tab.recv_type("identity")
    await tab.send({"type": "chat", "text": "kept", "client_id": "k"})
    await tab.recv_type("chat")
    await tab.quiet()

    await tab.send(frame)
    error = await tab.recv()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    # The socket stays open and usable.
    await tab.send({"type": "ping"})
    assert await tab.recv() == {"type": "pong"}
    assert await database_sync_to_async(lambda: list(Message.objects.values_list("text", flat=True)))() == ["kept"]
    assert await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))() == [
        "Ada"
    ]
    await tab.close()


async def test_invalid_chat_error_carries_its_client_id():
    tab = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "", "client_id": "c7"})
    assert (await tab.recv())["client_id"] == "c7"
    await tab.close()


async def test_binary_frame_closes_with_4003():
    tab = await open_tab(await new_browser())
    await tab.comm.send_to(bytes_data=b"\x00\x01")
    assert await tab.comm.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4003}


async def test_ping_pong():
    tab = await open_tab(await new_browser())
    await tab.send({"type": "ping"})
    assert await tab.recv() == {"type": "pong"}
    await tab.close()


# --- history and resume -----------------------------------------------------------


def post_many(key_author: str, count: int, room: str = "lobby") -> list[int]:
    from chat.models import Room

    Room.objects.get_or_create(name=room)
    Message.objects.bulk_create(
        Message(room_id=room, author_id=key_author, username="bulk", text=f"m{n}") for n in range(count)
    )
    return sorted(m.pk for m in Message.objects.filter(room_id=room))


async def test_history_pages_backwards_oldest_first():
    ids = await database_sync_to_async(post_many)("a" * 20, 120)
    tab = await open_tab(await new_browser())
    await tab.send({"type": "history", "before": ids[-50], "limit": 50})
    page = await tab.recv()
    assert page["type"] == "history" and page["has_more"] is True
    assert [m["id"] for m in page["messages"]] == ids[-100:-50]
    await tab.send({"type": "history", "before": ids[-100]})
    page = await tab.recv()
    assert [m["id"] for m in page["messages"]] == ids[:20] and page["has_more"] is False
    await tab.close()


async def test_resume_returns_everything_missed_up_to_500():
    ids = await database_sync_to_async(post_many)("a" * 20, 520)
    tab = await open_tab(await new_browser())
    await tab.send({"type": "resume", "after": ids[9]})
    first = await tab.recv()
    assert [m["id"] for m in first["messages"]] == ids[10:510] and first["has_more"] is True
    await tab.send({"type": "resume", "after": ids[509]})
    rest = await tab.recv()
    assert [m["id"] for m in rest["messages"]] == ids[510:] and rest["has_more"] is False
    await tab.close()


# --- rename ------------------------------------------------------------------------


async def test_rename_reaches_every_tab_of_the_browser_and_each_room_once():
    ada, grace = await new_browser(), await new_browser()
    a1, a2 = await open_tab(ada), await open_tab(ada)
    a3 = await open_tab(ada, room="other")
    g = await open_tab(grace)
    for tab in (a1, a2, a3, g):
        await tab.quiet()

    await a1.send({"type": "rename", "username": "  Ada   Lovelace "})
    for tab in (a1, a2, a3):
        assert await tab.recv_type("identity") == {"type": "identity", "username": "Ada Lovelace"}
    renamed = await g.recv_type("renamed")
    assert renamed["username"] == "Ada Lovelace" and renamed["old"].startswith("guest-")
    people = await g.until_people(lambda people: any(u["username"] == "Ada Lovelace" for u in people))
    assert [(u["username"], u["tabs"]) for u in people if u["author_id"] == renamed["author_id"]] == [
        ("Ada Lovelace", 2)
    ]
    rows = await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))()
    assert rows == ["Ada Lovelace"]
    # Messages carry the new name.
    await a2.send({"type": "chat", "text": "hello"})
    assert (await g.recv_type("chat"))["username"] == "Ada Lovelace"
    for tab in (a1, a2, a3, g):
        await tab.close()


async def test_renamed_is_sent_once_per_room():
    ada, grace = await new_browser(), await new_browser()
    a1, a2, g = await open_tab(ada), await open_tab(ada), await open_tab(grace)
    for tab in (a1, a2, g):
        await tab.quiet()
    await a1.send({"type": "rename", "username": "Ada"})
    frames = []
    while not await g.comm.receive_nothing(timeout=0.5):
        frames.append(json.loads(await g.comm.receive_from()))
    assert [f["type"] for f in frames].count("renamed") == 1
    for tab in (a1, a2, g):
        await tab.close()


async def test_name_survives_a_new_connection():
    key = await new_browser()
    tab = await open_tab(key)
    await tab.send({"type": "rename", "username": "Grace"})
    await tab.recv_type("identity")
    await tab.close()
    again = Tab(key)
    assert (await again.open())["username"] == "Grace"
    await again.close()


async def test_a_chat_sent_right_after_a_rename_carries_the_new_name():
    # The two frames back to back, as the page sends them when the visitor
    # presses Enter in the name field and sends at once: the tab must not
    # wait for its own rename to come back through the channel layer.
    for n in range(5):
        tab = await open_tab(await new_browser())
        await tab.send({"type": "rename", "username": f"  Ada  {n} "})
        await tab.send({"type": "chat", "text": "right after", "client_id": "c1"})
        assert (await tab.recv_type("chat"))["username"] == f"Ada {n}"
        await tab.close()


# --- presence ------------------------------------------------------------------------


async def test_presence_counts_people_and_tabs():
    ada, grace = await new_browser(), await new_browser()
    a1 = await open_tab(ada)
    a2 = await open_tab(ada)
    g = Tab(grace)
    await g.open()
    presence = await g.recv_type("presence")
    assert presence["count"] == 2
    assert sorted(u["tabs"] for u in presence["users"]) == [1, 2]
    await a2.close()
    await g.until_people(lambda people: sorted(u["tabs"] for u in people) == [1, 1])
    assert g.people.count == 2
    await a1.close()
    await g.until_people(lambda people: [u["tabs"] for u in people] == [1])
    assert g.people.count == 1
    await g.close()


async def test_an_idle_tab_stays_present_past_many_expiries(settings):
    settings.CHAT_PRESENCE_TTL = 0.6  # the hub renews every tab each 0.2 s
    idle = await open_tab(await new_browser())
    await asyncio.sleep(2)  # more than three expiries without a frame from the tab
    newcomer = Tab(await new_browser())
    await newcomer.open()
    presence = await newcomer.recv_type("presence")
    assert len(presence["users"]) == 2
    await newcomer.close()
    await idle.close()


async def test_a_tab_that_closes_while_its_renewal_runs_is_not_brought_back(monkeypatch):
    stays = await open_tab(await new_browser())
    leaving = Tab(await new_browser())
    author_id = (await leaving.open())["author_id"]
    hub = get_hub()
    store = hub.presence
    [tab] = [t for t in hub.feeds["lobby"].tabs if t.identity.author_id == author_id]
    renew = store.renew

    async def closes_meanwhile(*, room, tabs):
        # The hub's pass picked the tab; its socket closes and is cleaned up
        # before the script runs, which (its entry gone) puts it back.
        await leaving.close()
        await until_gone(hub, tab)
        await renew(room=room, tabs=tabs)

    monkeypatch.setattr(store, "renew", closes_meanwhile)
    await hub._renew_all()
    monkeypatch.undo()
    newcomer = Tab(await new_browser())
    await newcomer.open()
    presence = await newcomer.recv_type("presence")
    assert author_id not in [u["author_id"] for u in presence["users"]]
    assert len(presence["users"]) == 2  # the tab that stayed and the newcomer
    await newcomer.close()
    await stays.close()


async def until_gone(hub, tab) -> None:
    for _ in range(100):
        if not hub.has(tab) and tab.closing:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the tab did not leave the hub")


async def test_a_consumer_that_fails_still_leaves_the_room(monkeypatch):
    from chat.consumers import ChatConsumer

    async def broken(self, frame):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ChatConsumer, "on_history", broken)
    watcher = await open_tab(await new_browser())
    failing = await open_tab(await new_browser())
    await watcher.quiet()
    await failing.send({"type": "history", "before": 10**9})
    with pytest.raises(RuntimeError):
        await failing.comm.receive_from(timeout=TIMEOUT)  # the consumer died
    await watcher.until_people(lambda people: len(people) == 1)  # its cleanup ran: it left the room
    assert watcher.people.count == 1
    await watcher.close()


async def test_a_crowd_joining_shows_up_in_a_few_diffs_at_most_one_a_second():
    watcher = await open_tab(await new_browser())
    crowd = [await open_tab(await new_browser()) for _ in range(12)]
    frames, times = [], []
    loop = asyncio.get_running_loop()
    while not await watcher.comm.receive_nothing(timeout=1.5):
        frames.append(await watcher.recv())
        times.append(loop.time())
    assert {f["type"] for f in frames} == {"presence_diff"}
    # Changes that come close together share a frame, a second or more apart.
    assert len(frames) < 12
    assert all(later - earlier > 0.9 for earlier, later in itertools.pairwise(times))
    assert len(watcher.people.users) == watcher.people.count == 13
    for tab in (watcher, *crowd):
        await tab.close()


# --- rate limit ------------------------------------------------------------------------


async def test_rate_limit_is_per_identity_across_tabs(settings):
    settings.CHAT_RATE_BURST = 4
    settings.CHAT_RATE_PER_SECOND = 0.5
    ada, grace = await new_browser(), await new_browser()
    a1, a2, g = await open_tab(ada), await open_tab(ada), await open_tab(grace)
    for n in range(4):
        await (a1 if n % 2 else a2).send({"type": "chat", "text": f"m{n}", "client_id": f"c{n}"})
        await a1.recv_type("chat")
    for tab in (a2, g):
        await tab.quiet()
    await a2.send({"type": "chat", "text": "too much", "client_id": "c4"})
    error = await a2.recv_type("error")
    assert error["code"] == "rate_limited" and error["client_id"] == "c4"
    assert 0 < error["retry_after"] <= 2
    # Another identity is not affected.
    await g.send({"type": "chat", "text": "still fine"})
    assert (await g.recv_type("chat"))["text"] == "still fine"
    stored = await database_sync_to_async(lambda: sorted(Message.objects.values_list("text", flat=True)))()
    assert stored == ["m0", "m1", "m2", "m3", "still fine"]
    for tab in (a1, a2, g):
        await tab.close()


# --- changes made by staff ------------------------------------------------------------


async def test_staff_rename_and_delete_reach_open_tabs_live():
    session = await database_sync_to_async(make_session)()
    session_id = uuid.UUID(session["session_id"])
    tab = await open_tab(session.session_key)

    # What the admin's save and delete call, from a sync thread as the admin does.
    await database_sync_to_async(services.rename_visitor)(
        session_id=session_id, username="Renamed by staff", previous="x"
    )
    assert await tab.recv_type("identity") == {"type": "identity", "username": "Renamed by staff"}

    await database_sync_to_async(services.delete_visitor_settings)(session_ids=[session_id])
    assert await tab.recv_type("identity") == {
        "type": "identity",
        "username": guest_name_for(author_id_for(session_id)),
    }
    await tab.close()


# --- query counts ---------------------------------------------------------------------


async def test_query_counts_per_operation(all_queries):
    tab = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "warm up"})  # creates the room row
    await tab.recv_type("chat")
    await tab.close()

    first = Tab(await new_browser())
    all_queries.clear()
    await first.open()
    await first.recv_type("presence")
    # The session; the settings with the room's newest id (one query); and,
    # as the process's first socket in the room, what was stored meanwhile
    # (read by the hub in a task of its own, as the welcome goes out).
    for _ in range(50):
        if all_queries.count >= 3:
            break
        await asyncio.sleep(0.02)
    assert all_queries.count == 3, all_queries.statements
    assert sum("MAX" in sql for sql in all_queries.statements) == 1

    tab = Tab(await new_browser())
    all_queries.clear()
    await tab.open()
    await tab.recv_type("presence")
    assert all_queries.count == 2, all_queries.statements  # the session; settings, block and newest id

    all_queries.clear()
    await tab.send({"type": "chat", "text": "hi"})
    await tab.recv_type("chat")
    # room lock, the room's previous id (the event's prev_id), insert; and no
    # query per recipient: the hub delivered it without a catch-up fetch
    assert all_queries.count == 3, all_queries.statements

    all_queries.clear()
    await tab.send({"type": "rename", "username": "Ada"})
    await tab.recv_type("identity")
    assert all_queries.count == 1, all_queries.statements  # one upsert

    all_queries.clear()
    await tab.send({"type": "history", "before": 10**9})
    await tab.recv_type("history")
    assert all_queries.count == 1, all_queries.statements

    all_queries.clear()
    await tab.send({"type": "resume", "after": 0})
    await tab.recv_type("history")
    assert all_queries.count == 2, all_queries.statements  # the messages after; the ids deleted up to it
    await tab.close()
    await first.close()


class RedisCommands:
    """The commands the process sends to Redis from now on (presence, limits, the channel layer).

    Leaves out what the hub sends on its own timers, whatever the sockets do:
    the presence poll (``MGET``, four times a second) and the layer probe
    (``PUBLISH`` to its own channel, every second).
    """

    PERIODIC = frozenset({"MGET", "PUBLISH"})

    def __init__(self, monkeypatch) -> None:
        from redis.asyncio.client import PubSub, Redis

        self.names: list[str] = []
        for cls in (Redis, PubSub):
            original = cls.execute_command

            async def counting(client, *args, _original=original, **kwargs):
                if str(args[0]).upper() not in self.PERIODIC:
                    self.names.append(str(args[0]).upper())
                return await _original(client, *args, **kwargs)

            monkeypatch.setattr(cls, "execute_command", counting)


@pytest.mark.redis
async def test_redis_commands_per_connect_and_close(monkeypatch):
    watcher = await open_tab(await new_browser())  # the process already serves the room
    key = await new_browser()
    commands = RedisCommands(monkeypatch)
    tab = Tab(key)
    await tab.open()
    await tab.recv_type("presence")
    # The socket cap, the presence entry and the read of the room's people: one script.
    assert commands.names == ["EVALSHA"], commands.names
    commands.names.clear()
    await tab.close()
    for _ in range(50):
        if commands.names:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert commands.names == ["EVALSHA"], commands.names  # out of the cap and of presence, one script
    await watcher.close()
