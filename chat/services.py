"""Writes: resolve a visitor, rename, post a message, purge (moderation: ``chat.moderation``).

Every service validates with ``chat.validators`` before it writes, uses the
database's own guarantees (unique constraints, upserts, row locks) instead of
read-then-write, and queues its events with ``gateway.send_on_commit``. The
consumer, the views, the admin and the management command all call these.
"""

import uuid
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from chat import newest_page, protocol, selectors, validators
from chat.identity import Identity, author_id_for, get_session_id, guest_name_for, signed_in
from chat.models import Message, Room, VisitorSettings
from chat.realtime import gateway
from chat.realtime.events import MessageStored, VisitorRenamed, VisitorSignedOut

# read_at only has to be good to the day for the stale-settings purge, so a
# connect writes it at most once a day rather than on every connect.
READ_AT_RESOLUTION = timedelta(days=1)


def resolve_identity(*, session: SessionBase, verified: bool) -> Identity | None:
    """Return the identity of a session's browser, or None if it has no ``session_id``.

    A session not saved yet (a new browser's first page view) got its
    ``session_id`` in this request: no settings row can hold it, so none is
    looked up.
    """
    session_id = get_session_id(session)
    if session_id is None:
        return None
    author_id = author_id_for(session_id)
    if session.session_key is None:
        return _identity(session_id, author_id, username=None, read_before=False, verified=verified)
    row = VisitorSettings.objects.filter(session_id=session_id).only("username", "read_at").first()
    if row is None:
        return _identity(session_id, author_id, username=None, read_before=False, verified=verified)
    read_before = timezone.now() - row.read_at >= READ_AT_RESOLUTION
    return _identity(session_id, author_id, username=row.username, read_before=read_before, verified=verified)


@dataclass(frozen=True)
class SocketStart:
    """What a connecting socket needs: its identity, whether staff blocked it, and the room's newest id."""

    identity: Identity
    blocked: bool
    last_id: int | None


def resolve_socket(*, session_key: str | None, room: str) -> SocketStart | None:
    """Return what a connecting socket needs to know; None without a valid session.

    Two queries for a guest (the session; the settings with the block and
    the newest id), one more for a signed-in user, and the once-a-day
    ``read_at`` update.
    """
    if not session_key:
        return None
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    session_id = get_session_id(session)
    if session_id is None:
        return None
    author_id = author_id_for(session_id)
    facts = selectors.socket_facts(
        session_id=session_id, author_id=author_id, room=room, read_since=timezone.now() - READ_AT_RESOLUTION
    )
    identity = _identity(
        session_id, author_id, username=facts.username, read_before=facts.read_before, verified=signed_in(session)
    )
    return SocketStart(identity, facts.blocked, facts.last_id)


def _identity(
    session_id: uuid.UUID, author_id: str, *, username: str | None, read_before: bool, verified: bool
) -> Identity:
    """A browser's identity from its settings (``username`` None: it has none, the guest name shows).

    ``read_before``: the settings were last read more than ``READ_AT_RESOLUTION``
    ago, and are marked read now (for the stale-settings purge).
    """
    if read_before:
        VisitorSettings.objects.filter(session_id=session_id).update(read_at=timezone.now())
    return Identity(session_id, author_id, username or guest_name_for(author_id), verified)


def _announce_name(*, session_id: uuid.UUID, old: str, username: str) -> None:
    gateway.send_on_commit(
        VisitorRenamed(author_id=author_id_for(session_id), change_id=uuid.uuid4().hex, old=old, username=username)
    )


def rename_visitor(*, session_id: uuid.UUID, username: str, previous: str) -> str:
    """Save a browser's display name and tell its open tabs; return the saved name.

    ``previous`` is the name its tabs show now (reported to rooms as ``old``).
    One upsert: however many tabs rename at once, there is one row.
    """
    username = validators.check_username(username)
    now = timezone.now()
    with transaction.atomic():
        VisitorSettings.objects.bulk_create(
            [
                VisitorSettings(
                    session_id=session_id,
                    author_id=author_id_for(session_id),
                    username=username,
                    read_at=now,
                    created_at=now,
                    updated_at=now,
                )
            ],
            update_conflicts=True,
            unique_fields=["session_id"],
            update_fields=["username", "read_at", "updated_at"],
        )
        _announce_name(session_id=session_id, old=previous, username=username)
    return username


def sign_out_visitor(*, session: SessionBase) -> None:
    """Tell every process that this browser's user signed out: its verified sockets close with 4401.

    Called as Django signs the user out (``user_logged_out``, before the
    session is flushed). The reconnecting tabs come back as the guest they
    now are.
    """
    session_id = get_session_id(session)
    if session_id is not None:
        gateway.send_on_commit(VisitorSignedOut(author_id=author_id_for(session_id)))


def delete_visitor_settings(*, session_ids: list[uuid.UUID]) -> int:
    """Delete settings rows; their open tabs fall back to the guest name. Return the count."""
    with transaction.atomic():
        rows = list(
            VisitorSettings.objects.select_for_update()
            .filter(session_id__in=session_ids)
            .values_list("session_id", "username")
        )
        VisitorSettings.objects.filter(session_id__in=[sid for sid, _ in rows]).delete()
        for session_id, username in rows:
            _announce_name(session_id=session_id, old=username, username=guest_name_for(author_id_for(session_id)))
    return len(rows)


def stale_cutoff(*, days: int | None = None) -> timezone.datetime:
    """Return the moment before which unread settings are stale."""
    if days is None:
        days = settings.CHAT_STALE_SETTINGS_DAYS
    return timezone.now() - timedelta(days=days)


def purge_stale_settings(*, days: int | None = None) -> int:
    """Delete the settings not read for ``days`` (default ``CHAT_STALE_SETTINGS_DAYS``).

    Their browsers have not been seen for that long, so no tab is told.
    Returns the number of rows deleted.
    """
    if days is not None and days < 1:
        raise ValueError("days must be at least 1")
    deleted, _ = VisitorSettings.objects.filter(read_at__lt=stale_cutoff(days=days)).delete()
    return deleted


@dataclass(frozen=True)
class Post:
    """A chat message to store: who sends it, where, and the client's id for it."""

    identity: Identity
    room: str
    text: str
    client_id: str | None

    def validated(self) -> "Post":
        return Post(
            self.identity,
            validators.check_room(self.room),
            validators.check_text(self.text),
            validators.check_client_id(self.client_id),
        )


@dataclass(frozen=True)
class Posted:
    """A stored message, and whether this call stored it (False: a resend)."""

    message: Message
    created: bool


def post_message(*, identity: Identity, room: str, text: str, client_id: str | None) -> Posted:
    """Store a chat message and broadcast it to the room.

    A ``client_id`` this identity already used returns the stored message
    (``created=False``) and broadcasts nothing.
    """
    [posted] = post_messages([Post(identity, room, text, client_id)])
    return posted


def post_messages(posts: list[Post]) -> list[Posted]:
    """Store chat messages in one transaction and broadcast each; return them in order.

    However many messages (and rooms) there are, a room costs two queries
    (its row lock and its newest id) and all of them one insert: the
    consumers' ``chat.writer`` sends what arrives while one batch is being
    stored as the next batch. A ``client_id`` its identity already used (or
    that comes twice in ``posts``) returns the stored message with
    ``created=False`` and broadcasts nothing.
    """
    posts = [post.validated() for post in posts]
    stored: dict[tuple[str, str], Message] = {}  # resends, by (author_id, client_id)
    while True:
        try:
            return _store(posts, stored)
        except IntegrityError:
            # Some client_id is stored already (a resend; maybe just now, by
            # another process): look those up and store the rest. A round
            # that finds none new re-raises, and there are finitely many to
            # find, so this ends.
            keys = [_resend_key(post) for post in posts]
            found = _stored_resends([key for key in keys if key is not None and key not in stored])
            if not found:
                raise
            stored.update(found)


def _resend_key(post: Post) -> tuple[str, str] | None:
    return None if post.client_id is None else (post.identity.author_id, post.client_id)


def _stored_resends(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Message]:
    if not keys:
        return {}
    query = Q()
    for author_id, client_id in keys:
        query |= Q(author_id=author_id, client_id=client_id)
    return {(m.author_id, m.client_id): m for m in Message.objects.filter(query) if m.client_id is not None}


def _store(posts: list[Post], stored: dict[tuple[str, str], Message]) -> list[Posted]:
    """One transaction: lock each room, read its newest id, insert every new message at once."""
    new: list[Message] = []
    firsts: dict[tuple[str, str], Message] = {}  # a client_id sent twice in this batch: the first
    results: list[Message | tuple[str, str]] = []
    for post in posts:
        key = _resend_key(post)
        if key is not None and (key in stored or key in firsts):
            results.append(key)  # answered with the stored message, or this batch's first
        else:
            message = Message(
                room_id=post.room,
                author_id=post.identity.author_id,
                username=post.identity.username,
                verified=post.identity.verified,
                text=post.text,
                client_id=post.client_id,
            )
            new.append(message)
            results.append(message)
            if key is not None:
                firsts[key] = message
    with transaction.atomic():
        prev_ids: dict[str, int | None] = {}
        # Rooms locked in name order, so two batches never wait on each other's rooms.
        for room in sorted({message.room_id for message in new}):
            # Holding the room's row lock while the ids are drawn makes ids
            # commit in order within a room, so `resume after N` never skips
            # a message that committed late.
            Room.objects.select_for_update().get_or_create(name=room)
            # Read after the lock (a fresh snapshot): the room's newest id,
            # which the first event carries as `prev_id`, so a hub that has
            # not delivered that one knows it missed it.
            prev_ids[room] = selectors.last_message_id(room=room)
        if new:
            Message.objects.bulk_create(new)  # ids drawn in list order
        if new:
            rooms = {message.room_id for message in new}
            transaction.on_commit(lambda: newest_page.changed(rooms))
        for message in new:
            gateway.send_on_commit(
                MessageStored(
                    room=message.room_id,
                    message_id=message.pk,
                    prev_id=prev_ids[message.room_id],
                    frame=protocol.chat_frame(message),
                )
            )
            prev_ids[message.room_id] = message.pk
    return [
        Posted(result, created=True)
        if isinstance(result, Message)
        else Posted(stored.get(result) or firsts[result], created=False)
        for result in results
    ]
