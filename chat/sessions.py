"""The session store: Django's database sessions, one query cheaper for a new browser.

Also where a websocket finds its session: the key in the handshake's cookie.
"""

from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.http.cookie import parse_cookie
from django.utils.crypto import get_random_string


def session_key(scope: dict[str, Any]) -> str | None:
    """Return the session key in a websocket handshake's cookie, if it has one.

    Channels' ``AuthMiddlewareStack`` would do this, then load the session
    and the user in two more trips to the database thread, and keep a copy
    of the scope per middleware for the socket's lifetime; the consumer
    resolves all of it in one trip instead (``services.resolve_socket``).
    """
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME) or None
    return None


class SessionStore(DatabaseSessionStore):
    """Django's database sessions, without the lookup before a new session's insert.

    Django draws a random 32-character key, checks with a ``SELECT`` that no
    session has it, then inserts it with ``must_create``. The insert alone
    already refuses a key in use (it is the primary key): ``save`` raises
    ``CreateError`` and ``create`` draws another. So the lookup only costs a
    query on every browser's first page view (docs/performance.md).
    """

    def _get_new_session_key(self) -> str:
        return get_random_string(32, VALID_KEY_CHARS)
