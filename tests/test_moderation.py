"""Moderation (contract §5) through its services and the consumer: deletes and blocks, live in open tabs."""

import math
import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import Client
from django.utils import timezone

from chat import moderation, protocol, selectors, services
from chat.identity import Identity, author_id_for
from chat.models import Block, Message, Room, VisitorSettings
from chat.realtime.events import MessagesDeleted, VisitorBlocked
from tests.conftest import collected_events, make_session
from tests.tabs import TIMEOUT, Tab, new_browser, open_tab

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> User:
    return User.objects.create_superuser("mod", "mod@example.com", "pw")


def identity(name: str = "Ada") -> Identity:
    sid = uuid.uuid4()
    return Identity(sid, author_id_for(sid), name, False)


def post(who: Identity, text: str, room: str = "lobby", client_id: str | None = None) -> int:
    return services.post_message(identity=who, room=room, text=text, client_id=client_id).message.pk


# --- Deleting messages -------------------------------------------------------------


def test_a_deleted_message_is_gone_from_the_first_render_history_and_resume(staff, client):
    ada = identity()
    first, middle, last = post(ada, "first"), post(ada, "delete me"), post(ada, "last")
    assert moderation.delete_messages(ids=[middle], by=staff, via="test") == {"lobby": [middle]}

    page = client.get("/chat/lobby/").content.decode()
    assert "first" in page and "last" in page and "delete me" not in page
    assert [m.pk for m in selectors.latest_messages(room="lobby")] == [first, last]
    assert [m.pk for m in selectors.messages_before(room="lobby", before=last + 1, limit=50)[0]] == [first, last]
    resumed = selectors.resume(room="lobby", after=first)
    assert [m.pk for m in resumed.messages] == [last]
    assert resumed.deleted == []  # above `after`: the tab never had it
    assert selectors.resume(room="lobby", after=last).deleted == [middle]
    # The row stays (ids are the room's order), marked: when and by whom.
    row = Message.objects.get(pk=middle)
    assert row.text == "delete me" and row.deleted_by == staff and row.deleted_at is not None


def test_resume_names_ids_up_to_after_deleted_in_the_last_7_days_newest_first_at_most_1000(staff, monkeypatch):
    ada = identity()
    ids = [post(ada, f"m{n}") for n in range(6)]
    moderation.delete_messages(ids=ids[:5], by=staff, via="test")
    Message.objects.filter(pk=ids[0]).update(deleted_at=timezone.now() - timedelta(days=8))
    Message.objects.filter(pk=ids[1]).update(deleted_at=timezone.now() - timedelta(days=6))
    assert selectors.resume(room="lobby", after=ids[5]).deleted == [ids[4], ids[3], ids[2], ids[1]]
    assert selectors.resume(room="lobby", after=ids[3]).deleted == [ids[3], ids[2], ids[1]]
    assert selectors.resume(room="other", after=ids[5]).deleted == []
    monkeypatch.setattr(protocol, "RESUME_DELETED_MAX", 2)
    assert selectors.resume(room="lobby", after=ids[5]).deleted == [ids[4], ids[3]]


def test_a_delete_of_1000_messages_is_one_statement_one_history_insert_and_one_event(
    staff, data_queries, django_capture_on_commit_callbacks
):
    Room.objects.create(name="lobby")
    ada = identity()
    Message.objects.bulk_create(
        Message(room_id="lobby", author_id=ada.author_id, username="Ada", text=f"spam {n}") for n in range(1000)
    )
    ids = list(Message.objects.values_list("pk", flat=True))
    ContentType.objects.get_for_model(Message)  # cached once per process
    with data_queries() as queries:
        deleted, sent = collected_events(
            django_capture_on_commit_callbacks,
            lambda: moderation.delete_messages(ids=ids, by=staff, via="test"),
        )
    assert deleted == {"lobby": sorted(ids)}
    # One UPDATE deletes them all; the history is one INSERT (SQLite splits it by its variable limit).
    log_fields = [field for field in LogEntry._meta.concrete_fields if not field.primary_key]
    inserts = math.ceil(1000 / connection.ops.bulk_batch_size(log_fields, [LogEntry()] * 1000))
    assert inserts == 1 or connection.vendor == "sqlite"
    kinds = [sql.split()[0] for sql in queries.statements]
    assert kinds == ["UPDATE"] + ["INSERT"] * inserts, queries.statements
    assert sent == [MessagesDeleted("lobby", sorted(ids), protocol.deleted_frame(room="lobby", ids=sorted(ids)))]
    assert LogEntry.objects.filter(action_flag=DELETION, user=staff).count() == 1000
    assert not Message.objects.filter(deleted_at=None).exists()


def test_deleting_again_changes_nothing_and_tells_nobody(staff, django_capture_on_commit_callbacks):
    gone = post(identity(), "gone")
    moderation.delete_messages(ids=[gone], by=staff, via="test")
    stamp = Message.objects.get(pk=gone).deleted_at
    result, sent = collected_events(
        django_capture_on_commit_callbacks, lambda: moderation.delete_messages(ids=[gone], by=staff, via="test")
    )
    assert (result, sent) == ({}, [])
    assert Message.objects.get(pk=gone).deleted_at == stamp
    assert LogEntry.objects.count() == 1


def test_the_history_records_who_what_when_and_where(staff):
    gone = post(identity(), "gone for good")
    before = timezone.now()
    moderation.delete_messages(ids=[gone], by=staff, via="admin")
    entry = LogEntry.objects.get()
    assert (entry.user, entry.action_flag, entry.object_id) == (staff, DELETION, str(gone))
    assert entry.content_type.model_class() is Message
    assert "gone for good" in entry.object_repr and entry.change_message == "Deleted (admin)."
    assert entry.action_time >= before


def test_delete_written_by_takes_one_browsers_messages_of_one_room(staff, django_capture_on_commit_callbacks):
    spammer, other = identity("Spam"), identity("Ok")
    spam = [post(spammer, f"spam {n}") for n in range(3)]
    elsewhere = post(spammer, "spam elsewhere", room="other")
    kept = post(other, "fine")
    deleted, sent = collected_events(
        django_capture_on_commit_callbacks,
        lambda: moderation.delete_written_by(author_id=spammer.author_id, room="lobby", by=staff, via="test"),
    )
    assert deleted == {"lobby": spam}
    assert [type(event) for event in sent] == [MessagesDeleted]  # one frame for all of them
    assert set(Message.objects.filter(deleted_at=None).values_list("pk", flat=True)) == {elsewhere, kept}
    # In every room at once (the settings row's action): one frame per room.
    assert moderation.delete_written_by(author_id=spammer.author_id, room=None, by=staff, via="test") == {
        "other": [elsewhere]
    }


def test_a_resent_client_id_does_not_bring_a_deleted_message_back(staff):
    ada = identity()
    gone = post(ada, "oops", client_id="c-1")
    moderation.delete_messages(ids=[gone], by=staff, via="test")
    again = services.post_message(identity=ada, room="lobby", text="oops", client_id="c-1")
    assert (again.created, again.message.pk, again.message.deleted_at is not None) == (False, gone, True)
    assert Message.objects.count() == 1
    assert selectors.latest_messages(room="lobby") == []


# --- Blocking ---------------------------------------------------------------------------


def test_block_and_unblock_record_who_and_tell_every_process(staff, data_queries, django_capture_on_commit_callbacks):
    ada = identity()
    ContentType.objects.get_for_model(Block)
    with data_queries() as queries:
        blocked, sent = collected_events(
            django_capture_on_commit_callbacks,
            lambda: moderation.block(author_ids=[ada.author_id], by=staff, via="test"),
        )
    assert blocked == [ada.author_id]
    assert sent == [VisitorBlocked(ada.author_id)]
    assert queries.count == 3, queries.statements  # the blocks already there; the insert; the history
    assert Block.objects.get().created_by == staff
    assert LogEntry.objects.get().action_flag == ADDITION

    # Blocking again adds nothing but tells the tabs again (one may have missed the first).
    again, sent = collected_events(
        django_capture_on_commit_callbacks, lambda: moderation.block(author_ids=[ada.author_id], by=staff, via="test")
    )
    assert (again, sent, Block.objects.count()) == ([], [VisitorBlocked(ada.author_id)], 1)

    with data_queries() as queries:
        assert moderation.unblock(author_ids=[ada.author_id], by=staff, via="test") == [ada.author_id]
    assert queries.count == 3, queries.statements  # the rows, locked; the history; the delete
    assert not Block.objects.exists()
    assert list(LogEntry.objects.order_by("pk").values_list("action_flag", flat=True)) == [ADDITION, DELETION]
    assert moderation.unblock(author_ids=[ada.author_id], by=staff, via="test") == []


def test_a_connect_reads_the_block_in_the_query_it_already_makes(staff, data_queries):
    session = make_session()
    author_id = author_id_for(uuid.UUID(session["session_id"]))
    moderation.block(author_ids=[author_id], by=staff, via="test")
    with data_queries() as queries:
        start = services.resolve_socket(session_key=session.session_key, room="lobby")
    assert start is not None and start.blocked
    assert queries.count == 2  # the session; settings, block and newest id
    moderation.unblock(author_ids=[author_id], by=staff, via="test")
    assert not services.resolve_socket(session_key=session.session_key, room="lobby").blocked


# --- Open tabs -----------------------------------------------------------------------------


async def closed_code(tab: Tab) -> int:
    output = await tab.comm.receive_output(timeout=TIMEOUT)
    while output["type"] != "websocket.close":
        output = await tab.comm.receive_output(timeout=TIMEOUT)
    return output["code"]


def as_staff(action, **kwargs):
    """Run a moderation service as staff do, in a transaction of its own (its events leave at commit)."""
    staff = User.objects.get_or_create(username="mod", defaults={"is_staff": True})[0]
    return action(by=staff, via="test", **kwargs)


@pytest.mark.django_db(transaction=True)
async def test_a_blocked_browser_is_accepted_then_closed_with_4403_and_stores_nothing():
    key = await new_browser()
    session = await database_sync_to_async(make_session)()
    author_id = author_id_for(uuid.UUID(session["session_id"]))
    await database_sync_to_async(as_staff)(moderation.block, author_ids=[author_id])
    tab = Tab(session.session_key)
    connected, _ = await tab.comm.connect(timeout=TIMEOUT)
    assert connected
    assert await tab.comm.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    # Another browser is not touched.
    other = await open_tab(key)
    await other.close()


@pytest.mark.django_db(transaction=True)
async def test_a_block_closes_the_browsers_tabs_in_every_room_and_no_other():
    key = await new_browser()
    tabs = [await open_tab(key), await open_tab(key, room="other")]
    welcome_author = (await database_sync_to_async(services.resolve_socket)(session_key=key, room="x")).identity
    bystander = await open_tab(await new_browser())
    await database_sync_to_async(as_staff)(moderation.block, author_ids=[welcome_author.author_id])
    assert [await closed_code(tab) for tab in tabs] == [4403, 4403]
    assert await bystander.only_presence()
    # Unblocked, its next socket is accepted.
    await database_sync_to_async(as_staff)(moderation.unblock, author_ids=[welcome_author.author_id])
    again = await open_tab(key)
    await again.close()
    await bystander.close()


@pytest.mark.django_db(transaction=True)
async def test_open_tabs_of_the_room_get_one_deleted_frame_and_others_nothing():
    ada, grace = await new_browser(), await new_browser()
    tab_a, tab_g = await open_tab(ada), await open_tab(grace)
    elsewhere = await open_tab(ada, room="other")
    ids = []
    for text in ("one", "two", "three"):
        await tab_a.send({"type": "chat", "text": text})
        ids.append((await tab_a.recv_type("chat"))["id"])
    for _ in ids:
        await tab_g.recv_type("chat")
    await database_sync_to_async(as_staff)(moderation.delete_messages, ids=ids[:2])
    for tab in (tab_a, tab_g):
        assert await tab.recv_type("deleted") == {"type": "deleted", "room": "lobby", "ids": ids[:2]}
    assert await elsewhere.only_presence()
    # A tab that was away asks to resume from its newest id: the answer names what went meanwhile.
    await tab_g.send({"type": "resume", "after": ids[2]})
    assert await tab_g.recv_type("history") == {
        "type": "history",
        "messages": [],
        "has_more": False,
        "deleted": ids[1::-1],
    }
    for tab in (tab_a, tab_g, elsewhere):
        await tab.close()


@pytest.mark.django_db(transaction=True)
async def test_resending_a_deleted_message_is_refused_with_its_client_id():
    tab = await open_tab(await new_browser())
    await tab.send({"type": "chat", "text": "regret", "client_id": "c-9"})
    gone = (await tab.recv_type("chat"))["id"]
    await database_sync_to_async(as_staff)(moderation.delete_messages, ids=[gone])
    await tab.recv_type("deleted")
    await tab.send({"type": "chat", "text": "regret", "client_id": "c-9"})
    assert await tab.recv_type("error") == {
        "type": "error",
        "code": "invalid_request",
        "message": "This message was deleted by a moderator.",
        "client_id": "c-9",
    }
    assert await database_sync_to_async(Message.objects.filter(deleted_at=None).count)() == 0
    await tab.close()


@pytest.mark.django_db(transaction=True)
async def test_the_admin_acts_live_in_the_server_process():
    """The admin runs in the server: a block from its settings list closes the open tab at once."""
    key = await new_browser()
    tab = await open_tab(key)
    await tab.send({"type": "rename", "username": "Troll"})
    await tab.recv_type("identity")

    def block_in_the_admin() -> int:
        User.objects.create_superuser("boss", "boss@example.com", "pw")
        browser = Client()
        browser.login(username="boss", password="pw")
        row = VisitorSettings.objects.get(username="Troll")
        return browser.post(
            "/admin/chat/visitorsettings/", {"action": "block", "_selected_action": [row.pk]}
        ).status_code

    assert await database_sync_to_async(block_in_the_admin)() == 302
    assert await closed_code(tab) == 4403


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_settings_rows_their_author_id():
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0001_initial")])
    old_apps = executor.loader.project_state([("chat", "0001_initial")]).apps
    session_id = uuid.uuid4()
    old_apps.get_model("chat", "VisitorSettings").objects.create(session_id=session_id, username="Old timer")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    row = VisitorSettings.objects.get(session_id=session_id)
    assert row.author_id == author_id_for(session_id)


def test_more_ids_than_one_statement_takes_are_deleted_in_chunks_with_one_frame(
    staff, data_queries, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(moderation, "IDS_PER_STATEMENT", 2)
    ada = identity()
    ids = [post(ada, f"m{n}") for n in range(5)]
    with data_queries() as queries:
        deleted, sent = collected_events(
            django_capture_on_commit_callbacks, lambda: moderation.delete_messages(ids=ids, by=staff, via="test")
        )
    assert deleted == {"lobby": ids}
    assert sum(sql.startswith("UPDATE") for sql in queries.statements) == 3
    assert [event.ids for event in sent] == [ids]
