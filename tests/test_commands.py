"""python manage.py purge_stale_settings."""

import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

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
