"""Services against the real database: renames, messages, purges."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from chat import services
from chat.identity import Identity, author_id_for, guest_name_for
from chat.models import Message, Room, VisitorSettings
from chat.realtime.events import group_of
from tests.conftest import collected_events, make_session

pytestmark = pytest.mark.django_db


def identity(name: str = "Ada", verified: bool = False) -> Identity:
    sid = uuid.uuid4()
    return Identity(sid, author_id_for(sid), name, verified)


# --- resolve_identity ------------------------------------------------------------


def test_resolve_without_settings_gives_the_guest_name(data_queries):
    session = make_session()
    with data_queries() as queries:
        resolved = services.resolve_identity(session=session, verified=False)
    assert resolved is not None
    assert resolved.username == guest_name_for(resolved.author_id)
    assert queries.count == 1  # the settings lookup; no write
    assert not VisitorSettings.objects.exists()


def test_resolve_without_session_id_is_none():
    session = make_session()
    session.flush()
    assert services.resolve_identity(session=session, verified=False) is None


def test_resolve_refreshes_read_at_at_most_once_a_day(data_queries):
    session = make_session()
    sid = uuid.UUID(session["session_id"])
    services.rename_visitor(session_id=sid, username="Ada", previous="x")
    recent = timezone.now() - timedelta(hours=23)
    VisitorSettings.objects.update(read_at=recent)
    with data_queries() as queries:
        assert services.resolve_identity(session=session, verified=False).username == "Ada"
    assert queries.count == 1
    assert VisitorSettings.objects.get().read_at == recent

    VisitorSettings.objects.update(read_at=timezone.now() - timedelta(days=2))
    with data_queries() as queries:
        services.resolve_identity(session=session, verified=True)
    assert queries.count == 2  # the lookup and one UPDATE
    assert timezone.now() - VisitorSettings.objects.get().read_at < timedelta(minutes=1)


# --- rename_visitor -------------------------------------------------------------


def test_rename_upserts_one_row(data_queries):
    sid = uuid.uuid4()
    with data_queries() as queries:
        assert services.rename_visitor(session_id=sid, username="  Ada  ", previous="g") == "Ada"
    assert queries.count == 1  # INSERT ... ON CONFLICT DO UPDATE
    created = VisitorSettings.objects.get(session_id=sid).created_at
    services.rename_visitor(session_id=sid, username="Grace", previous="Ada")
    row = VisitorSettings.objects.get(session_id=sid)
    assert (row.username, row.created_at) == ("Grace", created)
    assert row.updated_at >= created
    assert VisitorSettings.objects.count() == 1


def test_invalid_rename_changes_nothing():
    sid = uuid.uuid4()
    services.rename_visitor(session_id=sid, username="Ada", previous="g")
    for bad in ["", "x" * 33, "a\u202eb"]:
        with pytest.raises(ValidationError):
            services.rename_visitor(session_id=sid, username=bad, previous="Ada")
    assert list(VisitorSettings.objects.values_list("username", flat=True)) == ["Ada"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_renames_of_one_browser_leave_one_row():
    sid = uuid.uuid4()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def rename(n: int) -> None:
        try:
            barrier.wait()
            services.rename_visitor(session_id=sid, username=f"name {n}", previous="g")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=rename, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert VisitorSettings.objects.filter(session_id=sid).count() == 1


# --- delete and purge -------------------------------------------------------------


def test_delete_visitor_settings():
    keep, drop = uuid.uuid4(), uuid.uuid4()
    services.rename_visitor(session_id=keep, username="Keep", previous="g")
    services.rename_visitor(session_id=drop, username="Drop", previous="g")
    assert services.delete_visitor_settings(session_ids=[drop, uuid.uuid4()]) == 1
    assert list(VisitorSettings.objects.values_list("username", flat=True)) == ["Keep"]


def test_purge_deletes_only_stale_settings():
    now = timezone.now()
    for name, age in [("fresh", 1), ("edge", 99), ("stale", 101), ("ancient", 400)]:
        VisitorSettings.objects.create(session_id=uuid.uuid4(), username=name, read_at=now - timedelta(days=age))
    assert services.purge_stale_settings() == 2
    assert sorted(VisitorSettings.objects.values_list("username", flat=True)) == ["edge", "fresh"]
    assert services.purge_stale_settings(days=50) == 1
    assert list(VisitorSettings.objects.values_list("username", flat=True)) == ["fresh"]


def test_purge_rejects_a_nonsense_age():
    VisitorSettings.objects.create(session_id=uuid.uuid4(), username="x", read_at=timezone.now())
    with pytest.raises(ValueError):
        services.purge_stale_settings(days=0)
    assert VisitorSettings.objects.count() == 1


# --- post_message ------------------------------------------------------------------


def test_post_message_stores_name_at_sending_time(data_queries):
    ada = identity("Ada", verified=True)
    services.post_message(identity=ada, room="lobby", text="warm up", client_id=None)  # creates the room
    with data_queries() as queries:
        posted = services.post_message(identity=ada, room="lobby", text="  hello  ", client_id="c1")
    assert queries.count == 3  # lock the room row, read its newest id, insert the message
    assert posted.created
    stored = Message.objects.get(pk=posted.message.pk)
    assert (stored.room_id, stored.username, stored.verified, stored.text, stored.client_id) == (
        "lobby",
        "Ada",
        True,
        "hello",
        "c1",
    )


def test_ids_grow_within_a_room():
    ada = identity()
    ids = [
        services.post_message(identity=ada, room=room, text="m", client_id=None).message.pk
        for room in ["a", "b", "a", "a", "b"]
    ]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_each_message_event_names_the_previous_message_of_its_room(django_capture_on_commit_callbacks):
    ada = identity()
    ids, sent = collected_events(
        django_capture_on_commit_callbacks,
        lambda: [
            services.post_message(identity=ada, room=room, text="m", client_id=None).message.pk
            for room in ["a", "b", "a", "a"]
        ],
    )
    chain = [(group_of(event), event.message_id, event.prev_id) for event in sent]
    assert chain == [
        ("chat.room.a", ids[0], None),
        ("chat.room.b", ids[1], None),
        ("chat.room.a", ids[2], ids[0]),
        ("chat.room.a", ids[3], ids[2]),
    ]


def test_resending_a_client_id_stores_nothing_new():
    ada, grace = identity("Ada"), identity("Grace")
    first = services.post_message(identity=ada, room="lobby", text="hi", client_id="same")
    again = services.post_message(identity=ada, room="lobby", text="hi", client_id="same")
    assert (again.created, again.message.pk) == (False, first.message.pk)
    # Another identity may use the same client_id.
    assert services.post_message(identity=grace, room="lobby", text="hi", client_id="same").created
    assert Message.objects.count() == 2


def test_a_batch_costs_two_queries_per_room_and_one_insert(data_queries, django_capture_on_commit_callbacks):
    ada, grace = identity("Ada"), identity("Grace")
    services.post_message(identity=ada, room="a", text="before", client_id=None)
    Room.objects.create(name="b")  # an empty room (a new one costs its insert too)
    posts = [
        services.Post(who, room, f"{room}{n}", f"c{n}")
        for n, (who, room) in enumerate([(ada, "a"), (grace, "b"), (grace, "a"), (ada, "a"), (ada, "b")])
    ]
    with data_queries() as queries:
        stored, sent = collected_events(django_capture_on_commit_callbacks, lambda: services.post_messages(posts))
    # rooms a and b: lock and newest id each; then one insert of all five
    assert queries.count == 5, queries.statements
    assert [p.created for p in stored] == [True] * 5
    assert [p.message.text for p in stored] == ["a0", "b1", "a2", "a3", "b4"]
    ids = [p.message.pk for p in stored]
    assert ids == sorted(ids)
    before = Message.objects.get(text="before").pk
    # Each event names its room's previous message, across the batch too.
    chain = [(group_of(event), event.message_id, event.prev_id) for event in sent]
    assert sorted(chain, key=lambda link: link[1]) == [
        ("chat.room.a", ids[0], before),
        ("chat.room.b", ids[1], None),
        ("chat.room.a", ids[2], ids[0]),
        ("chat.room.a", ids[3], ids[2]),
        ("chat.room.b", ids[4], ids[1]),
    ]
    assert list(Message.objects.filter(room_id="a").order_by("id").values_list("text", flat=True)) == [
        "before",
        "a0",
        "a2",
        "a3",
    ]


def test_a_batch_with_resends_stores_each_client_id_once(django_capture_on_commit_callbacks):
    ada, grace = identity("Ada"), identity("Grace")
    earlier = services.post_message(identity=ada, room="lobby", text="sent before", client_id="old")
    posts = [
        services.Post(ada, "lobby", "new", "n1"),
        services.Post(ada, "lobby", "sent before", "old"),  # a resend of a stored message
        services.Post(grace, "lobby", "hers", "n1"),  # another identity's n1: its own
        services.Post(ada, "lobby", "new", "n1"),  # the same message twice in one batch
        services.Post(ada, "lobby", "no id", None),
    ]
    stored, sent = collected_events(django_capture_on_commit_callbacks, lambda: services.post_messages(posts))
    assert [p.created for p in stored] == [True, False, True, False, True]
    assert stored[1].message.pk == earlier.message.pk
    assert stored[3].message.pk == stored[0].message.pk
    assert sorted(event.message_id for event in sent) == sorted(stored[i].message.pk for i in (0, 2, 4))
    assert sorted(Message.objects.values_list("text", flat=True)) == ["hers", "new", "no id", "sent before"]


def test_a_resend_costs_one_more_query(data_queries):
    ada = identity()
    services.post_message(identity=ada, room="lobby", text="hi", client_id="same")
    with data_queries() as queries:
        again = services.post_message(identity=ada, room="lobby", text="hi", client_id="same")
    assert not again.created
    # lock, newest id, the insert that conflicts; then the lookup of the stored one
    assert queries.count == 4, queries.statements


def test_a_batch_with_an_invalid_post_stores_nothing():
    ada = identity()
    services.post_message(identity=ada, room="lobby", text="kept", client_id=None)
    with pytest.raises(ValidationError):
        services.post_messages([services.Post(ada, "lobby", "fine", None), services.Post(ada, "lobby", "", None)])
    assert list(Message.objects.values_list("text", flat=True)) == ["kept"]


@pytest.mark.parametrize(("text", "room"), [("", "lobby"), ("x" * 2001, "lobby"), ("ok", "bad room")])
def test_invalid_messages_store_nothing(text, room):
    services.post_message(identity=identity(), room="lobby", text="kept", client_id=None)
    with pytest.raises(ValidationError):
        services.post_message(identity=identity(), room=room, text=text, client_id=None)
    assert list(Message.objects.values_list("text", flat=True)) == ["kept"]
