"""HTTP: redirects, the room page's first render, cookies, sessions, health."""

import contextlib
import json
import logging
import re
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from chat import services
from chat.identity import Identity, author_id_for, guest_name_for
from chat.models import VisitorSettings

pytestmark = pytest.mark.django_db


DAY = 24 * 3600


def session_id_of(client: Client) -> uuid.UUID:
    return uuid.UUID(client.session["session_id"])


def page_config(response) -> dict:
    html = response.content.decode()
    return json.loads(html.split('<script id="chat-config" type="application/json">')[1].split("</script>")[0])


def keep_session(client: Client):
    """What chat.js does once its socket opened, on a page-only session."""
    response = client.post("/socket-opened?keep=1")
    assert response.status_code == 200 and response.json()["kept"] is True
    return response


def expires_in(client: Client) -> float:
    return (Session.objects.get(pk=client.session.session_key).expire_date - timezone.now()).total_seconds()


def test_root_redirects_to_the_lobby(client):
    response = client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/chat/lobby/")


@pytest.mark.parametrize("room", ["lobby", "a", "Room_2-b", "x" * 50])
def test_room_pages_exist(client, room):
    assert client.get(f"/chat/{room}/").status_code == 200


@pytest.mark.parametrize("room", ["x" * 51, "a%20b", "caf%C3%A9", "a.b", "%3Cscript%3E"])
def test_bad_room_names_are_404(client, room):
    assert client.get(f"/chat/{room}/").status_code == 404


def test_first_view_sets_an_httponly_lax_cookie_for_a_day(client):
    response = client.get("/chat/lobby/")
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    # A page view alone: the session and its cookie live a day (chat.sessions)
    # until the browser opens a socket.
    assert int(cookie["max-age"]) == DAY
    assert not cookie["secure"]
    assert session_id_of(client)
    assert page_config(response)["session_kept"] is False


def test_cookie_is_secure_over_https(client):
    response = client.get("/chat/lobby/", secure=True)
    assert response.cookies["sessionid"]["secure"]


def test_cookie_is_secure_over_https_ended_at_a_trusted_proxy(client, settings):
    https_at_proxy = {"HTTP_X_FORWARDED_PROTO": "https"}
    # Without BEHIND_PROXY the header is anyone's to send: not trusted.
    assert not client.get("/chat/lobby/", **https_at_proxy).cookies["sessionid"]["secure"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # BEHIND_PROXY=1
    client.cookies.clear()
    response = client.get("/chat/lobby/", **https_at_proxy)
    assert response.cookies["sessionid"]["secure"] and response.cookies["sessionid"]["httponly"]
    client.cookies.clear()
    assert not client.get("/chat/lobby/", HTTP_X_FORWARDED_PROTO="http").cookies["sessionid"]["secure"]


def test_session_id_is_stable_across_views_and_refreshed_daily(client):
    client.get("/chat/lobby/")
    first = session_id_of(client)
    keep_session(client)
    response = client.get("/chat/other/")
    assert session_id_of(client) == first
    assert "sessionid" not in response.cookies  # nothing changed: no write, no new cookie
    session = client.session
    session["refreshed_on"] = "2000-01-01"
    session.save()
    response = client.get("/chat/lobby/")
    assert int(response.cookies["sessionid"]["max-age"]) == 400 * DAY  # re-sent, fresh expiry
    assert session_id_of(client) == first


def test_an_expired_session_is_not_read_and_the_browser_starts_afresh(client):
    client.get("/chat/lobby/")
    keep_session(client)
    services.rename_visitor(session_id=session_id_of(client), username="old-name", previous="guest")
    expired_key = client.cookies["sessionid"].value
    Session.objects.filter(pk=expired_key).update(expire_date=timezone.now() - timezone.timedelta(seconds=1))
    response = client.get("/chat/lobby/")
    # A new session, a new identity, and not the expired one's name.
    assert response.cookies["sessionid"].value != expired_key
    assert page_config(response)["username"] != "old-name"
    assert VisitorSettings.objects.get().username == "old-name"  # the old browser's row is left to the purge


def test_session_id_survives_login_key_rotation_and_logout(client):
    client.get("/chat/lobby/")
    first = session_id_of(client)
    key_before = client.session.session_key
    User.objects.create_user("staff", password="pw", is_staff=True)
    assert client.login(username="staff", password="pw")
    client.get("/chat/lobby/")
    assert client.session.session_key != key_before
    assert session_id_of(client) == first
    client.post("/admin/logout/")
    assert session_id_of(client) == first


def test_query_counts_of_a_first_and_a_returning_page_view(client, data_queries, settings):
    with data_queries() as first:
        assert client.get("/chat/lobby/").status_code == 200
    # the newest 50 and the new session's insert (no lookup of its random
    # key first: the insert refuses a key in use; no settings lookup: the
    # session_id was drawn just now)
    assert first.count == 2, first.statements
    assert first.statements[-1].startswith('INSERT INTO "django_session"')
    with data_queries() as returning:
        assert client.get("/chat/lobby/").status_code == 200
    # the session and the settings lookup; with Redis the newest 50 come from
    # the cache (chat/newest_page.py) until the room changes; nothing written
    assert returning.count == (2 if settings.REDIS_URL else 3), returning.statements
    assert any("chat_message" in sql for sql in returning.statements) is not bool(settings.REDIS_URL)
    assert not any(sql.startswith(("INSERT", "UPDATE")) for sql in returning.statements)


def test_a_page_only_session_lives_a_day_and_a_socket_keeps_it_for_the_cookie_age(client, data_queries):
    client.get("/chat/lobby/")
    assert DAY - 60 < expires_in(client) <= DAY
    assert page_config(client.get("/chat/lobby/"))["session_kept"] is False  # views alone keep nothing
    first = session_id_of(client)
    with data_queries() as keeping:
        response = keep_session(client)
    # the session, then its new expiry: once per browser
    assert keeping.count == 2, keeping.statements
    assert keeping.statements[-1].startswith('UPDATE "django_session"')
    assert int(response.cookies["sessionid"]["max-age"]) == 400 * DAY
    assert 400 * DAY - 60 < expires_in(client) <= 400 * DAY
    assert session_id_of(client) == first
    assert page_config(client.get("/chat/lobby/"))["session_kept"] is True
    with data_queries() as again:
        response = keep_session(client)  # a tab that did not know yet: read, nothing written
    assert again.count == 1 and "sessionid" not in response.cookies
    with data_queries() as plain:
        response = client.post("/socket-opened")  # every other open: no query at all
    assert plain.count == 0 and response.json()["kept"] is None


def test_socket_opened_names_the_current_script_and_is_never_cached(client):
    response = client.post("/socket-opened")
    assert response.json()["script"] == "/static/chat/chat.js"  # plain names in tests; hashed: test_static.py
    assert "no-store" in response["Cache-Control"]


def test_socket_opened_creates_no_session(client):
    response = client.post("/socket-opened?keep=1")
    assert response.status_code == 200 and response.json()["kept"] is False
    assert "sessionid" not in response.cookies and not Session.objects.exists()
    client.cookies["sessionid"] = "x" * 32  # an unknown key
    assert client.post("/socket-opened?keep=1").json()["kept"] is False
    assert not Session.objects.exists()
    assert client.get("/socket-opened").status_code == 405


def test_signing_in_keeps_the_session(client):
    client.get("/admin/login/")
    assert client.session["page_only"] is True
    User.objects.create_superuser("staff", password="pw")
    client.post("/admin/login/", {"username": "staff", "password": "pw", "next": "/admin/"})
    assert client.session["_auth_user_id"]
    assert "page_only" not in client.session
    assert expires_in(client) > 399 * DAY


def test_the_page_is_never_cached(client):
    response = client.get("/chat/lobby/")
    assert response["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
    assert "Expires" in response


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "in a transaction"])
@pytest.mark.django_db(transaction=True)
def test_a_new_session_whose_key_is_taken_gets_another(monkeypatch, in_transaction):
    from django.contrib.sessions.backends.base import VALID_KEY_CHARS
    from django.contrib.sessions.models import Session
    from django.db import transaction

    from chat import sessions

    taken = sessions.SessionStore()
    taken["session_id"] = "theirs"
    taken.create()
    assert len(taken.session_key) == 32 and set(taken.session_key) <= set(VALID_KEY_CHARS)
    keys = iter([taken.session_key, "k" * 32])
    monkeypatch.setattr(sessions.SessionStore, "_get_new_session_key", lambda self: next(keys))
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        session = sessions.SessionStore()
        session["session_id"] = "mine"
        session.save()
    assert session.session_key == "k" * 32
    assert Session.objects.count() == 2
    assert sessions.SessionStore(taken.session_key).load() == {"session_id": "theirs"}  # untouched


@pytest.mark.django_db(transaction=True)  # the newest page's cache is renewed on commit
def test_first_render_holds_the_name_and_newest_50_oldest_first(client):
    client.get("/chat/lobby/")
    sid = session_id_of(client)
    services.rename_visitor(session_id=sid, username="Ada <Lovelace>", previous="g")
    poster = Identity(uuid.uuid4(), "poster", "Grace", False)
    ids = [
        services.post_message(identity=poster, room="lobby", text=f"message {n} <i>x</i>", client_id=None).message.pk
        for n in range(60)
    ]
    html = client.get("/chat/lobby/").content.decode()
    assert 'data-testid="username-input" id="username" value="Ada &lt;Lovelace&gt;"' in html
    shown = [int(part.split('"')[0]) for part in html.split('data-message-id="')[1:]]
    assert shown == ids[-50:]
    assert "message 10 &lt;i&gt;x&lt;/i&gt;" in html and "<i>x</i>" not in html
    assert "message 9 " not in html


def test_the_message_list_is_a_live_log(client):
    html = client.get("/chat/lobby/").content.decode()
    (tag,) = re.findall(r'<ol [^>]*data-testid="messages"[^>]*>', html)
    assert 'role="log"' in tag


HOSTILE_NAME = '"><script>alert(1)</script>'
HOSTILE_TEXTS = [
    "<script>alert(1)</script>",
    '</script><img src=x onerror="alert(1)"><a href="javascript:alert(1)">click</a>',
    "\u202eevil.exe\u202c zero\u200bwidth\ufeff",
]


@pytest.mark.django_db(transaction=True)  # the newest page's cache is renewed on commit
def test_hostile_names_and_texts_are_escaped_in_the_first_render(client):
    client.get("/chat/lobby/")
    services.rename_visitor(session_id=session_id_of(client), username=HOSTILE_NAME, previous="g")
    author = Identity(session_id_of(client), author_id_for(session_id_of(client)), HOSTILE_NAME, False)
    for text in HOSTILE_TEXTS:
        services.post_message(identity=author, room="lobby", text=text, client_id=None)
    html = client.get("/chat/lobby/").content.decode()

    # Only the page's own two scripts (its config and its module); no tag from a visitor.
    assert html.count("<script") == 2
    assert "<img" not in html and 'href="javascript' not in html
    assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert 'data-testid="message-author" dir="auto">&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</span>' in html
    assert 'dir="auto">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in html
    # Bidi and zero-width characters are kept, inside their own dir=auto element.
    assert 'data-testid="message-text" dir="auto">\u202eevil.exe\u202c zero\u200bwidth\ufeff</span>' in html
    # The config the client starts from holds the same texts, with "</script>" unable to end its tag.
    config = html.split('<script id="chat-config" type="application/json">')[1].split("</script>")[0]
    data = json.loads(config)
    assert [m["text"] for m in data["messages"]] == HOSTILE_TEXTS and data["username"] == HOSTILE_NAME


def test_guest_sees_the_stable_guest_name(client):
    client.get("/chat/lobby/")
    guest = guest_name_for(author_id_for(session_id_of(client)))
    for _ in range(2):
        assert f'value="{guest}"' in client.get("/chat/lobby/").content.decode()
    assert not VisitorSettings.objects.exists()


def test_page_never_exposes_the_session_key_or_session_id(client):
    client.get("/chat/lobby/")
    html = client.get("/chat/lobby/").content.decode()
    assert client.session.session_key not in html
    assert str(session_id_of(client)) not in html


# healthz checks the database from the database thread, which in a plain
# django_db test would close the test's own transaction: these commit.
@pytest.mark.django_db(transaction=True)
def test_healthz_ok_without_creating_a_session(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert "sessionid" not in response.cookies


@pytest.mark.django_db(transaction=True)
def test_healthz_reports_a_broken_channel_layer(client, settings):
    # A real Redis layer pointed at a port where nothing listens.
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert json.loads(response.content) == {"status": "error", "database": "ok", "channel_layer": "error"}


# Probes come by IP (the compose healthcheck asks for 127.0.0.1:8000, an
# orchestrator for the pod's address), whatever ALLOWED_HOSTS names.
PROBE_HOSTS = ["127.0.0.1:8000", "10.42.0.7", "10.42.0.7:8000", "[fd00::7]:8000", "chat.example.com"]


def assert_healthy_and_quiet(response, caplog) -> None:
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert "sessionid" not in response.cookies
    assert not Session.objects.exists()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def production_hosts(settings) -> None:
    """The README's production example: one public host name, HTTPS enforced."""
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.SECURE_SSL_REDIRECT = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("host", PROBE_HOSTS)
def test_healthz_answers_whatever_the_host_and_logs_nothing(client, production_hosts, caplog, host):
    with caplog.at_level(logging.DEBUG):
        response = client.get("/healthz", HTTP_HOST=host)
    assert_healthy_and_quiet(response, caplog)


@pytest.mark.django_db(transaction=True)
async def test_healthz_answers_whatever_the_host_through_the_asgi_application(production_hosts, caplog):
    from chatsite.asgi import application

    probe = HttpCommunicator(application, "GET", "/healthz", headers=[(b"host", b"10.42.0.7:8000")])
    with caplog.at_level(logging.DEBUG):
        response = await probe.get_response(timeout=5)
    assert response["status"] == 200
    assert json.loads(response["body"]) == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert not any(name.lower() == b"set-cookie" for name, _ in response["headers"])
    assert not await database_sync_to_async(Session.objects.exists)()  # closes its connection after
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    "path", ["/", "/chat/lobby/", "/admin/", "/admin/login/", "/healthz/", "/healthzz", "/healthz/x"]
)
def test_every_other_path_still_refuses_a_host_not_allowed(client, production_hosts, path):
    assert client.get(path, HTTP_HOST="10.42.0.7:8000", secure=True).status_code == 400
    assert client.get(path, HTTP_HOST="chat.example.com", secure=True).status_code != 400
