"""The admin: staff only, and every change goes through the chat's services."""

import uuid
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from chat import services
from chat.identity import Identity
from chat.models import Block, Message, VisitorSettings
from tests.conftest import make_session
from tests.tabs import open_tab

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    return client


@pytest.fixture
def row() -> VisitorSettings:
    sid = uuid.uuid4()
    services.rename_visitor(session_id=sid, username="Ada", previous="g")
    return VisitorSettings.objects.get(session_id=sid)


@pytest.fixture
def message() -> Message:
    poster = Identity(uuid.uuid4(), "a1", "Ada", False)
    return services.post_message(identity=poster, room="lobby", text="hello", client_id=None).message


@pytest.fixture(params=["anonymous", "signed-in visitor"])
def outsider(request, client):
    """A browser that is not staff: nobody signed in, or a user without is_staff."""
    if request.param == "signed-in visitor":
        User.objects.create_user("visitor", password="pw")
        client.login(username="visitor", password="pw")
    return client


def is_login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/chat/visitorsettings/",
        "/admin/chat/message/",
        "/admin/chat/visitorsettings/{row.pk}/change/",
        "/admin/chat/message/{message.pk}/change/",
        "/admin/chat/visitorsettings/{row.pk}/delete/",
    ],
)
def test_admin_requires_staff(outsider, row, message, url):
    assert is_login_redirect(outsider.get(url.format(row=row, message=message)))


def changes(row: VisitorSettings, message: Message) -> list[tuple[str, dict]]:
    """Every write the admin offers, as the POST a form would send."""
    return [
        (f"/admin/chat/visitorsettings/{row.pk}/change/", {"username": "Hijacked"}),
        (f"/admin/chat/visitorsettings/{row.pk}/delete/", {"post": "yes"}),
        ("/admin/chat/visitorsettings/", {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}),
        ("/admin/chat/visitorsettings/", {"action": "purge_stale", "_selected_action": [row.pk]}),
        ("/admin/chat/visitorsettings/add/", {"session_id": str(uuid.uuid4()), "username": "Planted"}),
        (f"/admin/chat/message/{message.pk}/delete/", {"post": "yes"}),
        ("/admin/chat/message/", {"action": "delete_selected", "_selected_action": [message.pk], "post": "yes"}),
        ("/admin/chat/message/", {"action": "delete_everything_written", "_selected_action": [message.pk]}),
        ("/admin/chat/message/", {"action": "block_writers", "_selected_action": [message.pk]}),
        ("/admin/chat/visitorsettings/", {"action": "block", "_selected_action": [row.pk]}),
        ("/admin/chat/visitorsettings/", {"action": "delete_everything_written", "_selected_action": [row.pk]}),
    ]


def assert_unchanged(row: VisitorSettings, message: Message) -> None:
    assert list(VisitorSettings.objects.values_list("pk", "username")) == [(row.pk, "Ada")]
    assert list(Message.objects.values_list("pk", "text", "deleted_at")) == [(message.pk, "hello", None)]
    assert not Block.objects.exists()


def test_outsiders_cannot_post_changes(outsider, row, message):
    for url, data in changes(row, message):
        assert is_login_redirect(outsider.post(url, data)), url
    assert_unchanged(row, message)


def test_staff_without_permissions_cannot_post_changes(client, row, message):
    User.objects.create_user("intern", password="pw", is_staff=True)
    client.login(username="intern", password="pw")
    assert client.get(f"/admin/chat/visitorsettings/{row.pk}/change/").status_code == 403
    for url, data in changes(row, message):
        assert client.post(url, data).status_code == 403, url
    assert_unchanged(row, message)


def test_search_by_name_and_session_id(staff_client, row):
    assert "Ada" in staff_client.get("/admin/chat/visitorsettings/?q=ada").content.decode()
    assert "Ada" in staff_client.get(f"/admin/chat/visitorsettings/?q={row.session_id}").content.decode()
    assert "Ada" not in staff_client.get("/admin/chat/visitorsettings/?q=nobody").content.decode()


def test_edit_name_normalizes_and_saves(staff_client, row):
    response = staff_client.post(f"/admin/chat/visitorsettings/{row.pk}/change/", {"username": "  Ada   King  "})
    assert response.status_code == 302
    assert VisitorSettings.objects.get(pk=row.pk).username == "Ada King"


def test_add_a_settings_row(staff_client):
    sid = uuid.uuid4()
    response = staff_client.post(
        "/admin/chat/visitorsettings/add/", {"session_id": str(sid), "username": "  Ada   King  ", "_save": "Save"}
    )
    # As Django's admin answers an add: back to the list, with the row saved, normalized.
    assert (response.status_code, response["Location"]) == (302, "/admin/chat/visitorsettings/")
    row = VisitorSettings.objects.get()
    assert (row.session_id, row.username) == (sid, "Ada King")
    listing = staff_client.get(response["Location"]).content.decode()
    assert "was added successfully" in listing and "Ada King" in listing
    # The admin's history names what was added.
    assert LogEntry.objects.get().get_change_message() == "Added."
    assert LogEntry.objects.get().object_id == str(row.pk)


def test_add_then_continue_editing_opens_the_new_row(staff_client):
    sid = uuid.uuid4()
    response = staff_client.post(
        "/admin/chat/visitorsettings/add/", {"session_id": str(sid), "username": "Ada", "_continue": "1"}
    )
    row = VisitorSettings.objects.get(session_id=sid)
    assert (response.status_code, response["Location"]) == (302, f"/admin/chat/visitorsettings/{row.pk}/change/")


@pytest.mark.django_db(transaction=True)  # the events leave at commit
async def test_an_added_then_edited_row_reaches_the_browsers_open_tab(staff_client):
    session = await database_sync_to_async(make_session)()
    tab = await open_tab(session.session_key)
    post = database_sync_to_async(staff_client.post)

    await post("/admin/chat/visitorsettings/add/", {"session_id": session["session_id"], "username": "Added by staff"})
    assert await tab.recv_type("identity") == {"type": "identity", "username": "Added by staff"}

    row = await database_sync_to_async(VisitorSettings.objects.get)(session_id=session["session_id"])
    await post(f"/admin/chat/visitorsettings/{row.pk}/change/", {"username": "Edited by staff"})
    assert await tab.recv_type("identity") == {"type": "identity", "username": "Edited by staff"}
    await tab.close()


@pytest.mark.parametrize("bad", ["", "x" * 33, "evil\u202eeman"])
def test_add_with_an_invalid_name_is_refused_and_nothing_is_written(staff_client, bad):
    response = staff_client.post("/admin/chat/visitorsettings/add/", {"session_id": str(uuid.uuid4()), "username": bad})
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert not VisitorSettings.objects.exists()


def test_add_for_a_browser_that_has_a_row_is_refused(staff_client, row):
    response = staff_client.post(
        "/admin/chat/visitorsettings/add/", {"session_id": str(row.session_id), "username": "Planted"}
    )
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert list(VisitorSettings.objects.values_list("username", flat=True)) == ["Ada"]


@pytest.mark.parametrize("bad", ["", "x" * 33, "evil\u202eeman"])
def test_invalid_name_is_refused_and_nothing_changes(staff_client, row, bad):
    response = staff_client.post(f"/admin/chat/visitorsettings/{row.pk}/change/", {"username": bad})
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert VisitorSettings.objects.get(pk=row.pk).username == "Ada"


def test_stale_filter_and_purge_action(staff_client, row):
    VisitorSettings.objects.create(
        session_id=uuid.uuid4(), username="Old", read_at=timezone.now() - timedelta(days=150)
    )
    stale = staff_client.get("/admin/chat/visitorsettings/?stale=yes").content.decode()
    assert "Old" in stale and ">Ada<" not in stale
    response = staff_client.post(
        "/admin/chat/visitorsettings/",
        {"action": "purge_stale", "_selected_action": [row.pk]},
    )
    assert response.status_code == 302
    assert list(VisitorSettings.objects.values_list("username", flat=True)) == ["Ada"]


def test_delete_settings(staff_client, row):
    response = staff_client.post(f"/admin/chat/visitorsettings/{row.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not VisitorSettings.objects.exists()


def test_messages_search_and_delete(staff_client):
    poster = Identity(uuid.uuid4(), "a1", "Ada", False)
    keep = services.post_message(identity=poster, room="lobby", text="keep me", client_id=None).message
    drop = services.post_message(identity=poster, room="other", text="drop me", client_id=None).message
    listing = staff_client.get("/admin/chat/message/?q=drop").content.decode()
    assert "drop me" in listing and "keep me" not in listing
    assert "keep me" not in staff_client.get("/admin/chat/message/?q=other").content.decode()
    # Messages are read-only: there is no add form.
    assert staff_client.get("/admin/chat/message/add/").status_code == 403
    staff_client.post(
        "/admin/chat/message/", {"action": "delete_selected", "_selected_action": [drop.pk], "post": "yes"}
    )
    assert list(Message.objects.filter(deleted_at=None).values_list("pk", flat=True)) == [keep.pk]


# --- Moderation (contract §5) ------------------------------------------------------


def test_search_settings_and_messages_by_author_id(staff_client, row, message):
    listing = staff_client.get(f"/admin/chat/visitorsettings/?q={row.author_id}").content.decode()
    assert "Ada" in listing and row.author_id in listing
    assert ">Ada<" not in staff_client.get("/admin/chat/visitorsettings/?q=" + "0" * 20).content.decode()
    assert "hello" in staff_client.get(f"/admin/chat/message/?q={message.author_id}").content.decode()


def test_the_delete_view_hides_the_message_and_records_it_once(staff_client, message):
    response = staff_client.post(f"/admin/chat/message/{message.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    row = Message.objects.get(pk=message.pk)
    assert row.deleted_at is not None and row.deleted_by.username == "admin"
    assert list(LogEntry.objects.values_list("object_id", "action_flag", "change_message")) == [
        (str(message.pk), DELETION, "Deleted (admin).")
    ]
    assert "hello" not in staff_client.get("/chat/lobby/").content.decode()
    # Staff still see it, marked, and can list what was deleted.
    assert "hello" in staff_client.get("/admin/chat/message/?deleted=yes").content.decode()
    assert "hello" not in staff_client.get("/admin/chat/message/?deleted=no").content.decode()


def test_delete_everything_a_browser_wrote_from_the_message_list_and_the_settings_row(staff_client, row):
    troll = Identity(row.session_id, row.author_id, "Ada", False)
    other = Identity(uuid.uuid4(), "b" * 20, "Bo", False)
    lobby = [
        services.post_message(identity=troll, room="lobby", text=f"x{n}", client_id=None).message for n in range(3)
    ]
    elsewhere = services.post_message(identity=troll, room="other", text="y", client_id=None).message
    kept = services.post_message(identity=other, room="lobby", text="fine", client_id=None).message

    response = staff_client.post(
        "/admin/chat/message/", {"action": "delete_everything_written", "_selected_action": [lobby[0].pk]}, follow=True
    )
    assert "Deleted 3 message(s) (rooms: lobby)." in response.content.decode()

    def shown() -> set[int]:
        return set(Message.objects.filter(deleted_at=None).values_list("pk", flat=True))

    assert shown() == {elsewhere.pk, kept.pk}
    response = staff_client.post(
        "/admin/chat/visitorsettings/",
        {"action": "delete_everything_written", "_selected_action": [row.pk]},
        follow=True,
    )
    assert "Deleted 1 message(s) (rooms: other)." in response.content.decode()
    assert shown() == {kept.pk}


def test_block_and_unblock_from_the_settings_row_the_message_list_and_the_block_list(staff_client, row, message):
    response = staff_client.post(
        "/admin/chat/visitorsettings/", {"action": "block", "_selected_action": [row.pk]}, follow=True
    )
    assert "Blocked 1 browser(s); 0 already were." in response.content.decode()
    assert list(Block.objects.values_list("author_id", "created_by__username")) == [(row.author_id, "admin")]
    assert ">Ada<" in staff_client.get("/admin/chat/visitorsettings/?blocked=yes").content.decode()
    assert ">Ada<" not in staff_client.get("/admin/chat/visitorsettings/?blocked=no").content.decode()

    staff_client.post("/admin/chat/visitorsettings/", {"action": "unblock", "_selected_action": [row.pk]})
    assert not Block.objects.exists()

    # A guest with no settings row: blocked from one of its messages.
    staff_client.post("/admin/chat/message/", {"action": "block_writers", "_selected_action": [message.pk]})
    block = Block.objects.get()
    assert block.author_id == message.author_id
    # The list of blocks: deleting one unblocks it (recorded once, as an unblock).
    assert message.author_id in staff_client.get("/admin/chat/block/").content.decode()
    staff_client.post(f"/admin/chat/block/{block.pk}/delete/", {"post": "yes"})
    assert not Block.objects.exists()
    flags = list(LogEntry.objects.order_by("pk").values_list("action_flag", "change_message"))
    assert flags == [
        (ADDITION, "Blocked (admin)."),
        (DELETION, "Unblocked (admin)."),
        (ADDITION, "Blocked (admin)."),
        (DELETION, "Unblocked (admin)."),
    ]
    assert staff_client.get("/admin/chat/block/add/").status_code == 403


def test_moderation_actions_need_their_permissions(client, row, message):
    """Staff who may only view cannot delete or block."""
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_message", "view_visitorsettings"]))
    client.login(username="viewer", password="pw")
    assert client.get("/admin/chat/message/").status_code == 200
    actions = client.get("/admin/chat/message/").content.decode()
    assert "delete_everything_written" not in actions and "block_writers" not in actions
    for url, data in changes(row, message):
        client.post(url, data)
    assert_unchanged(row, message)
