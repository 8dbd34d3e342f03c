"""Writes: resolve a visitor, rename, post a message, delete and purge.

Every service validates with ``chat.validators`` before it writes, uses the
database's own guarantees (unique constraints, upserts, row locks) instead of
read-then-write, and queues its events with ``send_event_on_commit``. The
consumer, the views, the admin and the management command all call these.
"""

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat import events, protocol, selectors, validators
from chat.identity import Identity, author_id_for, get_session_id, guest_name_for
from chat.models import Message, Room, VisitorSettings

# read_at only has to be good to the day for the stale-settings purge, so a
# connect writes it at most once a day rather than on every connect.
READ_AT_RESOLUTION = timedelta(days=1)


def resolve_identity(*, session: SessionBase, verified: bool) -> Identity | None:
    """Return the identity of a session's browser, or None if it has no ``session_id``."""
    session_id = get_session_id(session)
    if session_id is None:
        return None
    author_id = author_id_for(session_id)
    row = (
        VisitorSettings.objects.filter(session_id=session_id)
        .only("username", "read_at")
        .first()
    )
    if row is None:
        return Identity(session_id, author_id, guest_name_for(author_id), verified)
    now = timezone.now()
    if now - row.read_at >= READ_AT_RESOLUTION:
        VisitorSettings.objects.filter(pk=row.pk).update(read_at=now)
    return Identity(session_id, author_id, row.username, verified)


def _announce_name(*, session_id: uuid.UUID, old: str, username: str) -> None:
    events.send_event_on_commit(
        events.author_group(author_id_for(session_id)),
        {
            "type": "identity.changed",
            "change_id": uuid.uuid4().hex,
            "old": old,
            "username": username,
        },
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
                    session_id=session_id, username=username, read_at=now, created_at=now, updated_at=now
                )
            ],
            update_conflicts=True,
            unique_fields=["session_id"],
            update_fields=["username", "read_at", "updated_at"],
        )
        _announce_name(session_id=session_id, old=previous, username=username)
    return username


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
            _announce_name(
                session_id=session_id, old=username, username=guest_name_for(author_id_for(session_id))
            )
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
class Posted:
    """A stored message, and whether this call stored it (False: a resend)."""

    message: Message
    created: bool


def post_message(*, identity: Identity, room: str, text: str, client_id: str | None) -> Posted:
    """Store a chat message and broadcast it to the room.

    A ``client_id`` this identity already used returns the stored message
    (``created=False``) and broadcasts nothing.
    """
    room = validators.check_room(room)
    text = validators.check_text(text)
    client_id = validators.check_client_id(client_id)
    try:
        with transaction.atomic():
            # Holding the room's row lock while the id is drawn makes ids
            # commit in order within a room, so `resume after N` never skips
            # a message that committed late.
            Room.objects.select_for_update().get_or_create(name=room)
            # Read after the lock (a fresh snapshot): the room's newest id,
            # which the event carries as `prev_id`, so a hub that has not
            # delivered that one knows it missed it.
            prev_id = selectors.last_message_id(room=room)
            message = Message.objects.create(
                room_id=room,
                author_id=identity.author_id,
                username=identity.username,
                verified=identity.verified,
                text=text,
                client_id=client_id,
            )
            events.send_event_on_commit(
                events.room_group(room),
                events.room_message(
                    room,
                    message_id=message.pk,
                    prev_id=prev_id,
                    frame=protocol.chat_frame(message),
                ),
            )
    except IntegrityError:
        if client_id is None:
            raise
        existing = Message.objects.get(author_id=identity.author_id, client_id=client_id)
        return Posted(existing, created=False)
    return Posted(message, created=True)


def delete_messages(*, ids: list[int]) -> int:
    """Delete messages by id; return the count. Open pages drop them on reload."""
    deleted, _ = Message.objects.filter(id__in=ids).delete()
    return deleted
