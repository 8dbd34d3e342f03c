"""python manage.py purge_stale_settings and housekeeping."""

import uuid
from datetime import date, timedelta
from io import StringIO

import pytest
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat import middleware
from chat.models import VisitorSettings

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows() -> None:
    now = timezone.now()
    for name, age in [("today", 0), ("month", 30), ("stale", 120), ("ancient", 500)]:
        VisitorSettings.objects.create(session_id=uuid.uuid4(), username=name, read_at=now - timedelta(days=age))


def names() -> list[str]:
    return sorted(VisitorSettings.objects.values_list("username", flat=True))


def test_default_is_100_days(rows):
    out = StringIO()
    call_command("purge_stale_settings", stdout=out)
    assert names() == ["month", "today"]
    assert "Deleted 2 stale settings row(s)" in out.getvalue()


def test_days_option(rows):
    call_command("purge_stale_settings", "--days", "7", stdout=StringIO())
    assert names() == ["today"]


@pytest.mark.parametrize("days", ["0", "-5"])
def test_bad_days_are_refused_and_nothing_is_deleted(rows, days):
    with pytest.raises(CommandError):
        call_command("purge_stale_settings", "--days", days)
    assert len(names()) == 4


def test_non_numeric_days_are_refused(rows):
    with pytest.raises(CommandError):
        call_command("purge_stale_settings", "--days", "soon")
    assert len(names()) == 4


# --- python manage.py housekeeping ---------------------------------------------------


def browser(client, *, socket: bool) -> str:
    """A browser's page view (and, if ``socket``, what chat.js sends once its socket opened)."""
    client.get("/chat/lobby/")
    if socket:
        assert client.post("/socket-opened?keep=1").json()["kept"] is True
    key = client.session.session_key
    client.cookies.clear()
    return key


def test_housekeeping_deletes_stale_settings_and_page_only_sessions_after_a_day(rows, client, monkeypatch):
    page_only = [browser(client, socket=False) for _ in range(3)]
    chatted = browser(client, socket=True)
    out = StringIO()
    call_command("housekeeping", stdout=out)  # the same day: nothing of it is old enough
    assert Session.objects.count() == 4
    assert "Deleted 2 stale settings row(s)" in out.getvalue()
    assert "Deleted 0 expired session(s); 4 left." in out.getvalue()

    a_day_later = timezone.now() + timedelta(days=1, minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: a_day_later)
    out = StringIO()
    call_command("housekeeping", stdout=out)
    assert list(Session.objects.values_list("session_key", flat=True)) == [chatted]
    assert "Deleted 3 expired session(s); 1 left." in out.getvalue()
    assert not Session.objects.filter(session_key__in=page_only).exists()


def test_housekeeping_keeps_a_page_only_session_while_its_browser_comes_back_daily(client, monkeypatch):
    client.get("/chat/lobby/")
    seen_again = client.session.session_key
    client.cookies.clear()
    client.get("/chat/lobby/")
    not_seen_again = client.session.session_key
    # The next day's first view re-saves the session (refreshed daily): a day more.
    tomorrow = timezone.now() + timedelta(hours=20)
    monkeypatch.setattr(timezone, "now", lambda: tomorrow)
    next_date = date.today() + timedelta(days=1)
    monkeypatch.setattr(middleware, "date", type("Tomorrow", (), {"today": staticmethod(lambda: next_date)}))
    client.cookies["sessionid"] = seen_again
    assert "sessionid" in client.get("/chat/lobby/").cookies
    later = tomorrow + timedelta(hours=20)
    monkeypatch.setattr(timezone, "now", lambda: later)
    call_command("housekeeping", stdout=StringIO())
    assert list(Session.objects.values_list("session_key", flat=True)) == [seen_again]
    assert not_seen_again != seen_again


@pytest.mark.parametrize("args", [["--days", "0"], ["--every", "-1"]])
def test_housekeeping_refuses_bad_numbers(rows, args):
    with pytest.raises(CommandError):
        call_command("housekeeping", *args, stdout=StringIO())
    assert len(names()) == 4
