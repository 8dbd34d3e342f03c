"""Moderation (contract §5): staff delete messages and block browsers.

The admin (``chat.admin``) and ``manage.py moderate`` call these services
and nothing else. Each one writes, records who did what in the admin's
history (``LogEntry``, with ``via`` saying where), and queues its event for
every open tab with ``gateway.send_on_commit``, as the other services do.

A deleted message is deleted softly: its row keeps its id (ids stay the
room's gapless order for ``resume``, and a resent ``client_id`` finds the
row instead of storing the message again) but it is shown nowhere any more
(its readers ask for ``Message.objects.shown()``). A block is a ``Block`` row for
the browser's public ``author_id``: a connect reads it in the query it
already makes (``selectors.socket_facts``), and the ``VisitorBlocked``
event closes the browser's open sockets on every process.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from chat import newest_page, protocol
from chat.models import Block, Message
from chat.realtime import gateway
from chat.realtime.events import MessagesDeleted, VisitorBlocked

# Deleted message ids, by room.
Deleted = dict[str, list[int]]
# Ids per UPDATE of a deletion: under SQLite's (32,766) and PostgreSQL's (65,535) limits on parameters.
IDS_PER_STATEMENT = 10_000


def delete_messages(*, ids: Iterable[int], by: AbstractBaseUser, via: str) -> Deleted:
    """Delete the messages with these ids (those not deleted already); return what was deleted, by room."""
    ids = sorted(set(ids))
    chunks = [ids[start : start + IDS_PER_STATEMENT] for start in range(0, len(ids), IDS_PER_STATEMENT)]
    return _delete([(f"id IN ({', '.join(['%s'] * len(chunk))})", chunk) for chunk in chunks], by=by, via=via)


def delete_written_by(*, author_id: str, room: str | None, by: AbstractBaseUser, via: str) -> Deleted:
    """Delete everything ``author_id`` wrote in ``room`` (None: in every room); return it, by room."""
    if room is None:
        return _delete([("author_id = %s", [author_id])], by=by, via=via)
    return _delete([("author_id = %s AND room = %s", [author_id, room])], by=by, via=via)


def _delete(matches: list[tuple[str, Sequence[object]]], *, by: AbstractBaseUser, via: str) -> Deleted:
    """Mark the messages each ``(where, params)`` matches deleted; one ``deleted`` frame per room.

    The ORM's ``update`` cannot say which rows it changed, so each match is
    one ``UPDATE … RETURNING`` (PostgreSQL, and SQLite since 3.35); the
    history's entries are one more insert.
    """
    table = Message._meta.db_table
    stamp = [connection.ops.adapt_datetimefield_value(timezone.now()), by.pk]
    with transaction.atomic(), connection.cursor() as cursor:
        rows: list[tuple[int, str, str, str]] = []
        for where, params in matches:
            cursor.execute(
                f"UPDATE {table} SET deleted_at = %s, deleted_by_id = %s"  # noqa: S608 - table and columns only
                f" WHERE {where} AND deleted_at IS NULL RETURNING id, room, username, text",
                [*stamp, *params],
            )
            rows += cursor.fetchall()
        if not rows:
            return {}
        rows.sort()
        deleted: Deleted = defaultdict(list)
        for message_id, room, _username, _text in rows:
            deleted[room].append(message_id)
        LogEntry.objects.log_actions(
            by.pk,
            [Message(id=message_id, username=username, text=text) for message_id, _room, username, text in rows],
            DELETION,
            f"Deleted ({via}).",
        )
        for room, room_ids in deleted.items():
            gateway.send_on_commit(MessagesDeleted(room, room_ids, protocol.deleted_frame(room=room, ids=room_ids)))
        rooms = list(deleted)
        transaction.on_commit(lambda: newest_page.changed(rooms))
    return dict(deleted)


def block(*, author_ids: Iterable[str], by: AbstractBaseUser, via: str) -> list[str]:
    """Block these browsers: their sockets close with 4403 on every process. Return those not blocked before.

    Every one given is told to close, the ones blocked before too: a socket
    that missed the first event (Redis was away) is closed now.
    """
    author_ids = sorted(set(author_ids))
    try:
        return _block(author_ids, by=by, via=via)
    except IntegrityError:  # another moderator blocked one of them meanwhile: this round sees its row
        return _block(author_ids, by=by, via=via)


def _block(author_ids: list[str], *, by: AbstractBaseUser, via: str) -> list[str]:
    with transaction.atomic():
        known = set(Block.objects.filter(author_id__in=author_ids).values_list("author_id", flat=True))
        new = Block.objects.bulk_create(
            [Block(author_id=author_id, created_by_id=by.pk) for author_id in author_ids if author_id not in known]
        )
        if new:
            LogEntry.objects.log_actions(by.pk, new, ADDITION, f"Blocked ({via}).")
        for author_id in author_ids:
            gateway.send_on_commit(VisitorBlocked(author_id))
    return [created.author_id for created in new]


def unblock(*, author_ids: Iterable[str], by: AbstractBaseUser, via: str) -> list[str]:
    """Unblock these browsers (their next socket is accepted); return those that were blocked."""
    with transaction.atomic():
        blocks = list(Block.objects.select_for_update().filter(author_id__in=set(author_ids)).order_by("author_id"))
        if blocks:
            LogEntry.objects.log_actions(by.pk, blocks, DELETION, f"Unblocked ({via}).")
            Block.objects.filter(pk__in=[b.pk for b in blocks]).delete()
    return [b.author_id for b in blocks]
