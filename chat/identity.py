"""Who a visitor is: the per-browser ``session_id`` and what derives from it.

A browser's identity is the random ``session_id`` kept in its Django session.
The public ``author_id`` and the guest name are derived from it with a keyed
hash, so neither reveals the session key or the ``session_id``.
"""

import uuid
from dataclasses import dataclass
from types import SimpleNamespace

from django.contrib import auth
from django.contrib.sessions.backends.base import SessionBase
from django.utils.crypto import salted_hmac

SESSION_ID_KEY = "session_id"


@dataclass(frozen=True)
class Identity:
    """A resolved visitor, as the chat shows it to others."""

    session_id: uuid.UUID
    author_id: str
    username: str
    verified: bool


def get_session_id(session: SessionBase) -> uuid.UUID | None:
    """Return the session's ``session_id``, or None when it has none (or a corrupt one)."""
    value = session.get(SESSION_ID_KEY)
    try:
        return uuid.UUID(value) if value else None
    except (TypeError, ValueError, AttributeError):
        return None


def ensure_session_id(session: SessionBase) -> uuid.UUID:
    """Return the session's ``session_id``, setting a new random one if it has none."""
    session_id = get_session_id(session)
    if session_id is None:
        session_id = uuid.uuid4()
        session[SESSION_ID_KEY] = str(session_id)
    return session_id


def signed_in(session: SessionBase) -> bool:
    """Whether a signed-in Django user owns the session, by Django's own checks.

    ``auth.get_user`` checks the backend and the session's auth hash (a
    changed password signs the session out), as a page view does. A guest's
    session has no user id: no query.
    """
    if auth.SESSION_KEY not in session:
        return False
    return bool(auth.get_user(SimpleNamespace(session=session)).is_authenticated)


def author_id_for(session_id: uuid.UUID) -> str:
    """Return the public, opaque ``author_id`` of a ``session_id``."""
    return salted_hmac("chat.identity.author_id", str(session_id), algorithm="sha256").hexdigest()[:20]


def guest_name_for(author_id: str) -> str:
    """Return the stable guest name shown until the visitor picks one."""
    return f"guest-{author_id[:4]}"
