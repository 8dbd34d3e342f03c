"""Reads: the messages of a room, and the settings and block of a browser."""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from chat import newest_page, protocol
from chat.models import Block, Message, VisitorSettings
from chat.newest_page import CachedMessage

# The first render's page: the same as a `history` frame's default.
PAGE_SIZE = protocol.HISTORY_DEFAULT_LIMIT


def latest_messages(*, room: str, limit: int = PAGE_SIZE) -> list[CachedMessage]:
    """Return the newest ``limit`` messages of ``room``, oldest first (from the cache: ``newest_page``)."""
    return newest_page.newest(room=room, limit=limit)[0]


def messages_before(*, room: str, before: int | None, limit: int) -> tuple[list[Message] | list[CachedMessage], bool]:
    """Return the newest ``limit`` messages with id < ``before``, oldest first, and whether older ones exist.

    Without ``before`` (the room's newest page) they come from the cache.
    """
    if before is None:
        return newest_page.newest(room=room, limit=limit)
    query = Message.objects.filter(room_id=room, id__lt=before).shown().order_by("-id")
    page = list(query[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return page, has_more


def messages_after(*, room: str, after: int, limit: int) -> tuple[list[Message], bool]:
    """Return up to ``limit`` messages with id > ``after``, oldest first, and whether more follow."""
    page = list(Message.objects.filter(room_id=room, id__gt=after).shown().order_by("id")[: limit + 1])
    return page[:limit], len(page) > limit


@dataclass(frozen=True)
class Resumed:
    """The answer to `resume`: what came after its id, and what of the rest was deleted lately."""

    messages: list[Message]
    has_more: bool
    deleted: list[int]


def resume(*, room: str, after: int) -> Resumed:
    """Return the messages of ``room`` after ``after`` and the ids up to it deleted lately (two queries).

    The deleted ids are those of the last ``RESUME_DELETED_DAYS`` (at most
    ``RESUME_DELETED_MAX``, newest first): a tab that was away while staff
    deleted them drops them too.
    """
    messages, has_more = messages_after(room=room, after=after, limit=protocol.RESUME_MAX)
    since = timezone.now() - timedelta(days=protocol.RESUME_DELETED_DAYS)
    deleted = Message.objects.filter(room_id=room, id__lte=after, deleted_at__gte=since).order_by("-id")
    return Resumed(messages, has_more, list(deleted.values_list("id", flat=True)[: protocol.RESUME_DELETED_MAX]))


def last_message_id(*, room: str) -> int | None:
    """Return the id of the newest message of ``room``, or None for an empty room.

    A deleted message counts: ids are the room's order, shown or not.
    """
    return Message.objects.filter(room_id=room).order_by("-id").values_list("id", flat=True).first()


@dataclass(frozen=True)
class SocketFacts:
    """What a connecting socket reads: its browser's chosen name, whether it is blocked, the room's newest id."""

    username: str | None  # None: the browser has no settings row (it shows its guest name)
    read_before: bool  # the row was last read before the moment asked about
    blocked: bool  # staff blocked this browser (chat.moderation)
    last_id: int | None


def socket_facts(*, session_id: uuid.UUID, author_id: str, room: str, read_since: datetime) -> SocketFacts:
    """Return a browser's settings, whether it is blocked, and ``room``'s newest message id, in one query.

    A connect reads both; the ORM has no query that returns the newest id
    whether or not the settings row exists, so this is one small SQL
    statement (the room's newest id comes from the ``(room, id)`` index).
    """
    settings_table = VisitorSettings._meta.db_table
    messages_table = Message._meta.db_table
    blocks_table = Block._meta.db_table
    session_field = VisitorSettings._meta.get_field("session_id")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.username, CASE WHEN s.read_at < %s THEN 1 ELSE 0 END,"  # noqa: S608 - table names only
            f" EXISTS (SELECT 1 FROM {blocks_table} b WHERE b.author_id = %s),"
            f" (SELECT MAX(m.id) FROM {messages_table} m WHERE m.room = %s)"
            f" FROM (SELECT 1 AS one) AS one LEFT JOIN {settings_table} s ON s.session_id = %s",
            [
                connection.ops.adapt_datetimefield_value(read_since),
                author_id,
                room,
                session_field.get_db_prep_value(session_id, connection),
            ],
        )
        username, read_before, blocked, last_id = cursor.fetchone()
    return SocketFacts(username, bool(read_before), bool(blocked), last_id)


def blocked_among(author_ids: Iterable[str]) -> set[str]:
    """Return which of ``author_ids`` are blocked."""
    return set(Block.objects.filter(author_id__in=list(author_ids)).values_list("author_id", flat=True))


def known_authors(author_ids: Iterable[str]) -> set[str]:
    """Return which of ``author_ids`` the chat knows: they wrote a message or have settings (one query)."""
    ids = list(author_ids)
    wrote = Message.objects.filter(author_id__in=ids).values_list("author_id", flat=True)
    named = VisitorSettings.objects.filter(author_id__in=ids).values_list("author_id", flat=True)
    return set(wrote.union(named))
