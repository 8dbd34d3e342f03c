"""The session store: Django's database sessions, one query cheaper for a new browser."""

from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils.crypto import get_random_string


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
