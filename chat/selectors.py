"""Reads: the messages of a room and the settings of a browser."""

from chat.models import Message

PAGE_SIZE = 50


def latest_messages(*, room: str, limit: int = PAGE_SIZE) -> list[Message]:
    """Return the newest ``limit`` messages of ``room``, oldest first."""
    newest = list(Message.objects.filter(room_id=room).order_by("-id")[:limit])
    newest.reverse()
    return newest


def messages_before(*, room: str, before: int | None, limit: int) -> tuple[list[Message], bool]:
    """Return the newest ``limit`` messages with id < ``before``, oldest first, and whether older ones exist."""
    query = Message.objects.filter(room_id=room).order_by("-id")
    if before is not None:
        query = query.filter(id__lt=before)
    page = list(query[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return page, has_more


def messages_after(*, room: str, after: int, limit: int) -> tuple[list[Message], bool]:
    """Return up to ``limit`` messages with id > ``after``, oldest first, and whether more follow."""
    page = list(Message.objects.filter(room_id=room, id__gt=after).order_by("id")[: limit + 1])
    return page[:limit], len(page) > limit


def last_message_id(*, room: str) -> int | None:
    """Return the id of the newest message of ``room``, or None for an empty room."""
    return (
        Message.objects.filter(room_id=room).order_by("-id").values_list("id", flat=True).first()
    )
