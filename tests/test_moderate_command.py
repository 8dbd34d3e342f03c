"""``manage.py moderate``: what it prints, what it refuses, and its effect on open tabs across processes."""

import asyncio
import uuid
from io import StringIO

import pytest
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from chat import services
from chat.identity import Identity, author_id_for
from chat.models import Block, Message
from tests.servers import Server, closed_with, manage, recv, run_manage

pytestmark = pytest.mark.django_db


def identity(name: str = "Ada") -> Identity:
    sid = uuid.uuid4()
    return Identity(sid, author_id_for(sid), name, False)


def post(who: Identity, text: str, room: str = "lobby") -> int:
    return services.post_message(identity=who, room=room, text=text, client_id=None).message.pk


def moderate(*args: str) -> str:
    out = StringIO()
    call_command("moderate", *args, stdout=out)
    return out.getvalue()


def shown() -> list[int]:
    return list(Message.objects.filter(deleted_at=None).order_by("pk").values_list("pk", flat=True))


def test_delete_prints_what_it_did_and_records_it_as_the_system_user():
    ada = identity()
    first, second, kept = post(ada, "a"), post(ada, "b", room="other"), post(ada, "c")
    out = moderate("delete", str(first), str(second))
    assert out.startswith(f"Deleted 2 message(s).\n  room lobby: {first}\n  room other: {second}\n")
    assert shown() == [kept]
    entries = LogEntry.objects.order_by("object_id")
    assert [(e.user.username, e.action_flag, e.object_id) for e in entries] == [
        ("moderate", DELETION, str(first)),
        ("moderate", DELETION, str(second)),
    ]
    system = User.objects.get(username="moderate")
    assert not system.is_active and not system.has_usable_password()  # it cannot sign in
    # Again: nothing left to delete, and it says so.
    assert "Deleted 0 message(s).\n1 were deleted already." in moderate("delete", str(first))


def test_an_unknown_message_id_fails_naming_it_and_changes_nothing():
    kept = post(identity(), "stays")
    with pytest.raises(CommandError, match=f"Unknown message\\(s\\): {kept + 99}. Nothing was changed."):
        moderate("delete", str(kept), str(kept + 99))
    assert shown() == [kept]
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("delete", "seven"),
        ("delete",),
        ("delete-by", "abc"),  # no --room
        ("block",),
        ("frobnicate", "1"),
    ],
)
def test_malformed_commands_are_refused_and_change_nothing(args):
    kept = post(identity(), "stays")
    with pytest.raises(CommandError):
        moderate(*args)
    assert shown() == [kept]


def test_delete_by_takes_one_browsers_messages_in_one_room():
    spammer, other = identity("Spam"), identity("Ok")
    spam = [post(spammer, f"spam {n}") for n in range(3)]
    elsewhere, kept = post(spammer, "elsewhere", room="other"), post(other, "fine")
    out = moderate("delete-by", spammer.author_id, "--room", "lobby")
    assert out.startswith(f"Deleted 3 message(s).\n  room lobby: {' '.join(map(str, spam))}\n")
    assert shown() == [elsewhere, kept]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("delete-by", "0" * 20, "--room", "lobby"), "Unknown author id(s): " + "0" * 20),
        (("delete-by", "{author}", "--room", "bad room!"), "Not a room name: 'bad room!'"),
        (("block", "{author}", "0" * 20), "Unknown author id(s): " + "0" * 20),
        (("unblock", "1" * 20), "Unknown author id(s): " + "1" * 20),
        (("block", "{author}", "--as", "nobody"), "No user 'nobody' (--as)"),
    ],
)
def test_unknown_authors_rooms_and_users_fail_naming_them_and_change_nothing(args, error):
    ada = identity()
    kept = post(ada, "stays")
    with pytest.raises(CommandError) as failed:
        moderate(*(arg.format(author=ada.author_id) for arg in args))
    assert error in str(failed.value)
    assert shown() == [kept]
    assert not Block.objects.exists()
    assert not LogEntry.objects.exists()


def test_block_and_unblock_as_a_named_user():
    User.objects.create_user("alice", is_staff=True)
    ada, grace = identity("Ada"), identity("Grace")
    post(ada, "hi")
    services.rename_visitor(session_id=grace.session_id, username="Grace", previous="g")  # known by her settings
    out = moderate("block", ada.author_id, grace.author_id, "--as", "alice")
    assert f"Blocked 2 browser(s): {' '.join(sorted([ada.author_id, grace.author_id]))}." in out
    assert "Already blocked" in moderate("block", ada.author_id, "--as", "alice")
    assert set(Block.objects.values_list("author_id", flat=True)) == {ada.author_id, grace.author_id}
    assert f"Unblocked 1 browser(s): {ada.author_id}." in moderate("unblock", ada.author_id, "--as", "alice")
    assert list(Block.objects.values_list("author_id", flat=True)) == [grace.author_id]
    flags = list(LogEntry.objects.order_by("pk").values_list("user__username", "action_flag"))
    assert flags == [("alice", ADDITION), ("alice", ADDITION), ("alice", DELETION)]


# --- Another process: the command beside running servers ---------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_with_redis_the_command_reaches_open_tabs_on_every_process_within_a_second(server_env, tmp_path):
    servers = [Server(server_env, tmp_path / f"daphne{n}.log") for n in range(2)]
    try:
        asyncio.run(_command_reaches_both(servers, server_env))
    finally:
        for server in servers:
            server.stop()


async def _command_reaches_both(servers: list[Server], env: dict[str, str]) -> None:
    one, two = servers
    troll, reader = one.browser(), two.browser()
    async with one.ws(troll) as bad, two.ws(troll, room="other") as bad_elsewhere, two.ws(reader) as good:
        author = (await recv(bad, "welcome"))["author_id"]
        await recv(bad_elsewhere, "welcome")
        await recv(good, "welcome")
        await bad.send('{"type":"chat","text":"spam"}')
        spam = (await recv(good, "chat"))["id"]

        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(None, manage, env, "moderate", "delete", str(spam))
        assert "Deleted 1 message(s)." in out and "No REDIS_URL" not in out
        assert await recv(good, "deleted", timeout=1) == {"type": "deleted", "room": "lobby", "ids": [spam]}

        await loop.run_in_executor(None, manage, env, "moderate", "block", author)
        started = loop.time()
        codes = await asyncio.gather(closed_with(bad), closed_with(bad_elsewhere))
        assert codes == [4403, 4403]
        assert loop.time() - started < 1.0
        await good.send('{"type":"ping"}')
        assert await recv(good, "pong") == {"type": "pong"}  # the other browser stays
    async with one.ws(troll) as again:
        assert await closed_with(again) == 4403


@pytest.mark.django_db(transaction=True)
def test_without_redis_a_command_reaches_tabs_when_they_next_connect(server_env, tmp_path):
    env = {**server_env, "REDIS_URL": ""}
    server = Server(env, tmp_path / "daphne.log")
    try:
        troll = server.browser()

        async def connect() -> dict:
            async with server.ws(troll) as ws:
                welcome = await recv(ws, "welcome")
                await ws.send('{"type":"chat","text":"spam"}')  # now the chat knows this author
                await recv(ws, "chat")
                return welcome

        author = asyncio.run(connect())["author_id"]
        done = run_manage(env, "moderate", "block", author)
        assert done.returncode == 0, done.stderr
        assert "No REDIS_URL: open tabs see this when they next connect" in done.stdout

        async def refused() -> int:
            async with server.ws(troll) as ws:
                return await closed_with(ws)

        assert asyncio.run(refused()) == 4403
    finally:
        server.stop()
