"""The admin login is throttled per username and per address (django-axes, chatsite/login_throttle.py)."""

from datetime import timedelta
from unittest import mock

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import base_user
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.utils import timezone

from chat.addresses import client_address

pytestmark = pytest.mark.django_db

GUESSER, COLLEAGUE, ELSEWHERE = "203.0.113.5", "198.51.100.7", "192.0.2.9"


@pytest.fixture
def staff():
    User.objects.create_superuser("admin", "admin@example.com", "right-pw")
    User.objects.create_superuser("editor", "editor@example.com", "editor-pw")


def sign_in(address: str, username: str, password: str):
    """POST the admin's login form from ``address`` (a new browser each time)."""
    client = Client(REMOTE_ADDR=address)
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def signed_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


@pytest.fixture
def hasher_runs():
    """Count the password hasher's runs: a password checked, or hashed for a user that does not exist.

    ``User.check_password`` and ``set_password`` (ModelBackend hashes the
    password of an unknown user too, so that timing does not tell) call
    these two, which run the configured hasher.
    """
    with (
        mock.patch.object(base_user, "check_password", wraps=base_user.check_password) as check,
        mock.patch.object(base_user, "make_password", wraps=base_user.make_password) as make,
    ):
        yield lambda: check.call_count + make.call_count


def test_the_sixth_wrong_password_in_a_row_is_refused_without_the_hasher(staff, hasher_runs):
    assert settings.AXES_FAILURE_LIMIT == 5
    for attempt in range(1, 5):
        response = sign_in(GUESSER, "admin", f"guess-{attempt}")
        assert response.status_code == 200 and b"Please enter the correct username and password" in response.content
        assert hasher_runs() == attempt
    # The fifth wrong one is checked (hasher run), and locks.
    fifth = sign_in(GUESSER, "admin", "guess-5")
    assert hasher_runs() == 5 and fifth.status_code == 429
    sixth = sign_in(GUESSER, "admin", "guess-6")
    assert hasher_runs() == 5, "a locked-out login must not run the password hasher"
    assert sixth.status_code == 429
    assert b"Account locked: too many login attempts" in sixth.content
    # Even the right password is refused now, from this address or another one (per username) ...
    assert not signed_in(sign_in(ELSEWHERE, "admin", "right-pw"))
    # ... and from this address, for another user (per address).
    assert not signed_in(sign_in(GUESSER, "editor", "editor-pw"))
    assert hasher_runs() == 5
    # Another user, from another address: unaffected.
    assert signed_in(sign_in(COLLEAGUE, "editor", "editor-pw"))


def test_guessing_many_usernames_from_one_address_is_locked_per_address(staff, hasher_runs):
    for attempt in range(5):
        sign_in(GUESSER, f"nobody-{attempt}", "guess")
    assert hasher_runs() == 5
    assert sign_in(GUESSER, "admin", "guess").status_code == 429
    assert hasher_runs() == 5
    assert signed_in(sign_in(COLLEAGUE, "admin", "right-pw"))


def test_a_successful_login_clears_the_count(staff):
    for _ in range(4):
        sign_in(GUESSER, "admin", "typo")
    assert signed_in(sign_in(GUESSER, "admin", "right-pw"))
    for _ in range(4):  # "in a row": four more are four, not eight
        assert sign_in(GUESSER, "admin", "typo").status_code == 200
    assert signed_in(sign_in(GUESSER, "admin", "right-pw"))


def test_the_lockout_ends_after_the_cooloff(staff):
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME
    for _ in range(6):
        sign_in(GUESSER, "admin", "guess")
    assert sign_in(GUESSER, "admin", "right-pw").status_code == 429
    # Fifteen minutes and a second later (the attempts' clock moved back, not the test's).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert signed_in(sign_in(GUESSER, "admin", "right-pw"))


def test_the_forwarded_address_is_trusted_only_behind_the_proxy(settings):
    factory = RequestFactory()
    # daphne --proxy-headers put X-Forwarded-For's first address in REMOTE_ADDR.
    forwarded = factory.post("/admin/login/", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="203.0.113.5")
    direct = factory.post("/admin/login/", REMOTE_ADDR="198.51.100.7")
    settings.BEHIND_PROXY = True
    assert client_address(forwarded) == "203.0.113.5"
    settings.BEHIND_PROXY = False
    # Anyone may send the header: all such requests share one count.
    assert client_address(forwarded) is None
    assert client_address(direct) == "198.51.100.7"


def test_logins_without_a_request_are_not_throttled(staff):
    # The test client's login() and a shell call authenticate() without a request.
    for _ in range(6):
        sign_in(GUESSER, "admin", "guess")
    assert Client().login(username="admin", password="right-pw")
