"""Every event the chat broadcasts, declared once.

An event is a frozen dataclass. It crosses the channel layer as a plain
dict (``to_message``, back with ``from_message``) and goes to one group
(``group_of``): a room's events to that room's group, a browser's to the
group every process's hub is in. Events that end in a frame for many
sockets carry it already encoded, so a broadcast is encoded once, not once
per recipient.

Adding an event: declare it here, send it from one service (through
``gateway``), handle it in the hub, and render it in the client.
"""

from dataclasses import asdict, dataclass
from typing import Any

# Every server process's hub is in this group: a browser's events (a rename)
# go to all processes, and each hands them to the tabs of that browser it
# holds. Renames are rare, so this costs less than a group per browser, which
# cost each new browser a subscribe on connect and an unsubscribe on close.
IDENTITY_GROUP = "chat.identities"


def room_group(room: str) -> str:
    """Return the channel-layer group of every process with a tab in ``room``."""
    return f"chat.room.{room}"


@dataclass(frozen=True, slots=True)
class MessageStored:
    """A chat message was stored; ``frame`` is its ``chat`` frame.

    ``prev_id`` is the id of the room's message before it (None: the first),
    so a hub that has not delivered that one knows it missed it (``stream``).
    """

    room: str
    message_id: int
    prev_id: int | None
    frame: str


@dataclass(frozen=True, slots=True)
class VisitorRenamed:
    """A browser has a new name (it renamed itself, or staff changed it)."""

    author_id: str
    change_id: str  # one per rename: each room is told once, across processes
    old: str
    username: str


@dataclass(frozen=True, slots=True)
class VisitorSignedOut:
    """The Django user of a browser signed out: its sockets opened while signed in are verified no more."""

    author_id: str


@dataclass(frozen=True, slots=True)
class MessagesDeleted:
    """Staff deleted messages of a room; ``frame`` is its ``deleted`` frame."""

    room: str
    ids: list[int]
    frame: str


@dataclass(frozen=True, slots=True)
class VisitorBlocked:
    """Staff blocked a browser: its sockets close with 4403."""

    author_id: str


@dataclass(frozen=True, slots=True)
class RoomRenameShown:
    """The ``renamed`` frame for one room, after one of its tabs claimed the rename."""

    room: str
    frame: str


Event = MessageStored | MessagesDeleted | VisitorRenamed | VisitorSignedOut | VisitorBlocked | RoomRenameShown

# The channel layer's "type" of each event (a dict key, so no dots: the
# layer's own handlers are not involved, the hub reads the channel itself).
_TYPES: dict[type[Any], str] = {
    MessageStored: "chat.message_stored",
    MessagesDeleted: "chat.messages_deleted",
    VisitorRenamed: "chat.visitor_renamed",
    VisitorSignedOut: "chat.visitor_signed_out",
    VisitorBlocked: "chat.visitor_blocked",
    RoomRenameShown: "chat.room_rename_shown",
}
_CLASSES = {name: cls for cls, name in _TYPES.items()}


def group_of(event: Event) -> str:
    """Return the group ``event`` is sent to."""
    if isinstance(event, VisitorRenamed | VisitorSignedOut | VisitorBlocked):
        return IDENTITY_GROUP
    return room_group(event.room)


def to_message(event: Event) -> dict[str, Any]:
    """Return the channel-layer message of ``event``."""
    return {"type": _TYPES[type(event)], **asdict(event)}


def from_message(message: dict[str, Any]) -> Event | None:
    """Return the event a channel-layer message carries; None for one of another kind."""
    cls = _CLASSES.get(message.get("type", ""))
    if cls is None:
        return None
    fields = {key: value for key, value in message.items() if key != "type"}
    event: Event = cls(**fields)
    return event
