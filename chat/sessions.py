"""The session store: Django's database sessions, cheaper to create and to read.

Also where a websocket finds its session: the key in the handshake's cookie.
"""

import base64
import secrets
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import IntegrityError, connection
from django.http.cookie import parse_cookie
from django.utils import timezone


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
    """Django's database sessions, cheaper: a new browser's without a lookup, one random draw, no
    transaction and a plain ``INSERT``; every read a plain ``SELECT`` (``load``).

    Django draws a random 32-character key, checks with a ``SELECT`` that no
    session has it, then inserts it with ``must_create`` inside
    ``transaction.atomic`` (django/contrib/sessions/backends/db.py
    ``SessionStore.save``). The insert alone already refuses a key in use
    (it is the primary key): ``save`` raises ``CreateError`` and ``create``
    draws another. So the lookup only costs a query on every browser's first
    page view, and the transaction a ``COMMIT`` round trip: a lone ``INSERT``
    in autocommit is atomic by itself (docs/performance.md).
    """

    def _get_new_session_key(self) -> str:
        # Django's get_random_string asks the system's random source once per
        # character (32 calls, 7 % of a new browser's page view under py-spy);
        # 20 random bytes in base32 are 32 characters of VALID_KEY_CHARS, 160 bits.
        return base64.b32encode(secrets.token_bytes(20)).decode().lower()

    def load(self) -> dict[str, Any]:
        """Read the session in one plain ``SELECT``, as Django's ``load`` does through the ORM.

        django/contrib/sessions/backends/db.py ``SessionStore.load`` gets the
        row with ``Session.objects.get(session_key=…, expire_date__gt=now)``;
        building and compiling that query each time was a quarter of the
        database thread's time on a returning tab's connect (under py-spy,
        docs/performance.md). The same statement is written out here; a
        missing or expired session is treated as Django treats it (no key,
        empty data), and the data is decoded by Django's ``decode``.
        """
        table = self.model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT session_data FROM {table} WHERE session_key = %s AND expire_date > %s",  # noqa: S608 - table name only
                [self.session_key, connection.ops.adapt_datetimefield_value(timezone.now())],
            )
            row = cursor.fetchone()
        if row is None:
            self._session_key = None
            return {}
        return self.decode(row[0])

    def save(self, must_create: bool = False) -> None:
        if not must_create or self.session_key is None or connection.in_atomic_block:
            super().save(must_create=must_create)
            return
        # What Django's create_model_instance and save(force_insert=True) write,
        # in one plain INSERT: the ORM's insert (its compiler, the model's
        # save signals) was a fifth of a new browser's page view under py-spy.
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {self.model._meta.db_table} (session_key, session_data, expire_date)"  # noqa: S608 - table name only
                    " VALUES (%s, %s, %s)",
                    [
                        self.session_key,
                        self.encode(self._get_session(no_load=True)),
                        connection.ops.adapt_datetimefield_value(self.get_expiry_date()),
                    ],
                )
        except IntegrityError:
            raise CreateError from None


# --- Sessions of page views alone -------------------------------------------------
# A browser's first page view creates its session. Until the browser opens a
# socket (chat.js then calls chat.views.socket_opened) or signs in, the session
# is "page-only": it and its cookie live a day (from its last save), not
# SESSION_COOKIE_AGE, so the daily housekeeping (`manage.py housekeeping`, which
# runs Django's clearsessions) deletes what crawlers and cookieless clients
# leave behind. The flag rides in the session itself and the short lifetime
# in its expire_date, so marking costs no query of its own: a new session is
# inserted anyway, and keeping it is one UPDATE, once per browser.
PAGE_ONLY_KEY = "page_only"
PAGE_ONLY_SECONDS = 24 * 3600


def start_page_only(session: Any) -> None:
    """Mark a new session page-only: a day's lifetime, until the browser shows it is one."""
    session[PAGE_ONLY_KEY] = True
    session.set_expiry(PAGE_ONLY_SECONDS)


def is_page_only(session: Any) -> bool:
    return bool(session.get(PAGE_ONLY_KEY))


def keep(session: Any) -> bool:
    """Give a page-only session the full lifetime (saved, and its cookie re-sent, on the way out).

    Returns whether the session is a browser's (has a ``session_id``); one
    without, or none at all, is left alone: nothing is created.
    """
    if not session.get("session_id"):
        return False
    if session.pop(PAGE_ONLY_KEY, False):
        session.set_expiry(None)  # back to SESSION_COOKIE_AGE
    return True
