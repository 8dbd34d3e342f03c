"""Shared fixtures: real services when configured, clean state for every test.

Tests marked ``postgres`` or ``redis`` need the real server (``DATABASE_URL``
pointing at PostgreSQL, ``REDIS_URL``); tests marked ``browser`` need Debian's
Chromium. Without it they skip and say why; under ``CI=true`` a missing
service fails the run instead.
"""

import copy
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat import ratelimit
from chat.identity import ensure_session_id
from chat.realtime import gateway, presence_store
from chat.sessions import SessionStore
from tests.servers import NGINX, Server, manage, server_environment

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing_service(item: pytest.Item) -> str | None:
    if item.get_closest_marker("postgres") and settings.DATABASES["default"]["ENGINE"] != (
        "django.db.backends.postgresql"
    ):
        return "needs PostgreSQL: set DATABASE_URL=postgres://… to run it"
    if item.get_closest_marker("redis") and not settings.REDIS_URL:
        return "needs Redis: set REDIS_URL=redis://… to run it"
    if item.get_closest_marker("browser") and not Path(CHROMIUM).is_file():
        return f"needs Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM=/path)"
    if item.get_closest_marker("proxy") and not Path(NGINX).is_file():
        return f"needs nginx at {NGINX}: apt-get install nginx (or set NGINX=/path)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _missing_service(item)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and this test {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated_state(settings) -> Iterator[None]:
    """Give each test its own Redis key space, channel layer and in-process stores."""
    run = uuid.uuid4().hex[:12]
    settings.CHAT_REDIS_PREFIX = f"chat-test-{run}"
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    if "prefix" in layers["default"].get("CONFIG", {}):
        layers["default"]["CONFIG"]["prefix"] = f"asgi-test-{run}"
    settings.CHANNEL_LAYERS = layers  # the setting_changed signal resets the layer
    caches = copy.deepcopy(settings.CACHES)  # the newest pages (chat/newest_page.py): a space of its own
    caches["default"]["KEY_PREFIX"] = f"chat-test-{run}"
    settings.CACHES = caches
    # Plain names: the manifest storage needs a collectstatic (Django's advice
    # for tests); the tests of static files collect into a directory of their
    # own (the collected_static fixture).
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": PLAIN_STATIC_STORAGE}}
    settings.WHITENOISE_USE_FINDERS = True  # served from the apps' folders, as with DEBUG on
    saved = presence_store._local, ratelimit._local
    presence_store._local, ratelimit._local = presence_store.LocalPresence(), ratelimit.LocalRateLimiter()
    yield
    presence_store._local, ratelimit._local = saved


PLAIN_STATIC_STORAGE = "django.contrib.staticfiles.storage.StaticFilesStorage"


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory) -> Path:
    """A STATIC_ROOT that ``collectstatic`` wrote, as the Dockerfile's build does (once per test run)."""
    root = tmp_path_factory.mktemp("staticfiles")
    env = {**os.environ, "STATIC_ROOT": str(root), "DEBUG": "0", "SECRET_KEY": "collectstatic-only"}
    manage(env, "collectstatic", "--noinput", "-v0")
    return root


def make_session(*, user=None) -> SessionStore:
    """Create and save a browser session the way a first page view does."""
    session = SessionStore()
    ensure_session_id(session)
    if user is not None:
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
    session.save()
    return session


def collected_events(capture_on_commit, action):
    """Run a service as the socket side does (``gateway.run_service``); return its result and the events it queued.

    ``capture_on_commit`` is pytest-django's ``django_capture_on_commit_callbacks``.
    """
    sent: list = []
    token = gateway._outbox.set(sent)
    try:
        with capture_on_commit(execute=True):
            result = action()
    finally:
        gateway._outbox.reset(token)
    return result, sent


@pytest.fixture
def browser_session() -> Callable[..., SessionStore]:
    """Return a factory of saved sessions (one per simulated browser)."""
    return make_session


_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


class DataQueries(CaptureQueriesContext):
    """Capture queries, counting only data statements (not BEGIN/SAVEPOINT/...).

    Transaction control differs between SQLite and PostgreSQL; the data
    statements an operation runs are what must stay exact.
    """

    @property
    def statements(self) -> list[str]:
        return [q["sql"] for q in self.captured_queries if not q["sql"].upper().startswith(_TRANSACTION_CONTROL)]

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def data_queries() -> Callable[[], DataQueries]:
    return lambda: DataQueries(connection)


@pytest.fixture
async def channel_layer():
    layer = get_channel_layer()
    yield layer
    if hasattr(layer, "close_pools"):
        await layer.close_pools()


class AllQueries:
    """Data statements run on any thread (the consumer's database thread too)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture
def all_queries(monkeypatch) -> AllQueries:
    """Record every data statement from now on, whichever thread runs it."""
    from django.db.backends import utils

    record = AllQueries()
    original = utils.CursorWrapper._execute_with_wrappers

    def recording(self, sql, params, many, executor):
        if not str(sql).upper().lstrip().startswith(_TRANSACTION_CONTROL):
            record.statements.append(str(sql))
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(utils.CursorWrapper, "_execute_with_wrappers", recording)
    return record


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """Close connections after each use, so the consumer's database thread
    holds none open when the test database is dropped."""
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture
def server_env(tmp_path) -> dict[str, str]:
    """Environment for real server processes sharing this test's database and Redis space."""
    return server_environment(tmp_path)


@pytest.fixture
def server(server_env, tmp_path) -> Iterator[Server]:
    """One real daphne process, stopped after the test."""
    started = Server(server_env, tmp_path / "daphne.log")
    yield started
    started.stop()
