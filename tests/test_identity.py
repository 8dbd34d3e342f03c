"""Identity derivation: session_id, author_id, guest names (no database)."""

import uuid

from django.contrib.sessions.backends.signed_cookies import SessionStore

from chat.identity import SESSION_ID_KEY, author_id_for, ensure_session_id, get_session_id, guest_name_for


def test_ensure_session_id_sets_once():
    session = SessionStore()
    first = ensure_session_id(session)
    assert ensure_session_id(session) == first
    assert session[SESSION_ID_KEY] == str(first)


def test_corrupt_session_id_reads_as_none():
    session = SessionStore()
    for bad in ["not-a-uuid", 12, ["x"]]:
        session[SESSION_ID_KEY] = bad
        assert get_session_id(session) is None


def test_author_id_is_stable_opaque_and_distinct():
    sid = uuid.uuid4()
    author = author_id_for(sid)
    assert author == author_id_for(sid)
    assert author != author_id_for(uuid.uuid4())
    assert sid.hex[:8] not in author and str(sid) not in author
    assert len(author) == 20


def test_author_id_depends_on_the_secret_key(settings):
    sid = uuid.uuid4()
    before = author_id_for(sid)
    settings.SECRET_KEY = "another-secret"
    assert author_id_for(sid) != before


def test_guest_name_is_stable():
    author = author_id_for(uuid.uuid4())
    assert guest_name_for(author) == guest_name_for(author) == f"guest-{author[:4]}"
