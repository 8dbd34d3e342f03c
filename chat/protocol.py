"""The websocket wire protocol, declared once: client frames in, server frames out.

``parse_frame`` turns a text frame into one of the client frame classes, with
every field validated and normalized, or raises ``FrameError`` carrying the
contract's error code. The ``*_frame`` functions build the server's frames as
JSON text. See docs/protocol.md.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from django.core.exceptions import ValidationError

from chat import validators
from chat.realtime.people import PeopleDiff, Person

HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
RESUME_MAX = 500
# A `resume` answer's `deleted`: the ids of messages deleted this recently, at most this many.
RESUME_DELETED_DAYS = 7
RESUME_DELETED_MAX = 1000

ERROR_CODES = frozenset(
    {
        "bad_json",
        "unknown_type",
        "invalid_text",
        "text_too_long",
        "invalid_username",
        "invalid_request",
        "rate_limited",
        "unavailable",
    }
)

# Close codes the server uses.
CLOSE_NO_SESSION = 4401
CLOSE_BINARY_FRAME = 4003
# More sockets than CHAT_MAX_SOCKETS_PER_IDENTITY: the client waits and retries.
CLOSE_TOO_MANY_CONNECTIONS = 4429
# Staff blocked this browser (contract §5): the client stays closed.
CLOSE_BLOCKED = 4403


class FrameError(Exception):
    """A client frame the server rejects; the socket stays open."""

    def __init__(self, code: str, message: str, *, client_id: str | None = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id


# --- Client -> server --------------------------------------------------------


@dataclass(frozen=True)
class Chat:
    text: str
    client_id: str | None


@dataclass(frozen=True)
class Rename:
    username: str


@dataclass(frozen=True)
class History:
    before: int | None
    limit: int
    client_id: str | None = None


@dataclass(frozen=True)
class Resume:
    after: int
    client_id: str | None = None


@dataclass(frozen=True)
class Ping:
    pass


ClientFrame = Chat | Rename | History | Resume | Ping


def client_id_of(frame: ClientFrame) -> str | None:
    """Return the ``client_id`` an error about ``frame`` echoes (None: it has none)."""
    return frame.client_id if isinstance(frame, Chat | History | Resume) else None


def _message_id(data: dict[str, Any], field: str, *, required: bool, client_id: str | None) -> int | None:
    value = data.get(field)
    if value is None and not required:
        return None
    # bool is an int in Python; true is not a message id.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError("invalid_request", f"'{field}' must be a message id (an integer >= 0).", client_id=client_id)
    return value


def _check(check: Any, value: Any, *, client_id: str | None = None) -> Any:
    try:
        return check(value)
    except ValidationError as exc:
        raise FrameError(exc.code or "invalid_request", exc.messages[0], client_id=client_id) from exc


def _read_client_id(data: dict[str, Any]) -> str | None:
    # Our extension: a read may carry a client_id, echoed by an error about
    # it (rate_limited), so the client knows which request to send again.
    # The contract does not define it for reads: an invalid one is ignored.
    try:
        return validators.check_client_id(data.get("client_id"))
    except ValidationError:
        return None


def _parse_chat(data: dict[str, Any]) -> Chat:
    client_id = _check(validators.check_client_id, data.get("client_id"))
    text = _check(validators.check_text, data.get("text"), client_id=client_id)
    return Chat(text=text, client_id=client_id)


def _parse_rename(data: dict[str, Any]) -> Rename:
    return Rename(username=_check(validators.check_username, data.get("username")))


def _parse_history(data: dict[str, Any]) -> History:
    client_id = _read_client_id(data)
    limit = data.get("limit", HISTORY_DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise FrameError(
            "invalid_request", f"'limit' must be an integer from 1 to {HISTORY_MAX_LIMIT}.", client_id=client_id
        )
    before = _message_id(data, "before", required=False, client_id=client_id)
    return History(before=before, limit=limit, client_id=client_id)


def _parse_resume(data: dict[str, Any]) -> Resume:
    client_id = _read_client_id(data)
    after = _message_id(data, "after", required=True, client_id=client_id)
    assert after is not None
    return Resume(after=after, client_id=client_id)


_PARSERS: dict[str, Callable[[dict[str, Any]], ClientFrame]] = {
    "chat": _parse_chat,
    "rename": _parse_rename,
    "history": _parse_history,
    "resume": _parse_resume,
    "ping": lambda data: Ping(),
}


def parse_frame(text: str) -> ClientFrame:
    """Parse and validate one client text frame."""
    try:
        data = json.loads(text)
    except ValueError:
        raise FrameError("bad_json", "A frame must be one JSON object.") from None
    except RecursionError:
        # Arrays or objects nested deeper than the interpreter's recursion
        # limit (5,000 "[" fit in a 16 KiB frame). The C decoder gives up at
        # that depth, so refusing costs no more than parsing a flat frame.
        raise FrameError("bad_json", "A frame must be one JSON object, not nested this deep.") from None
    if not isinstance(data, dict):
        raise FrameError("bad_json", "A frame must be one JSON object.")
    kind = data.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise FrameError("unknown_type", f"Unknown frame type; expected one of {', '.join(_PARSERS)}.")
    return parser(data)


# --- Server -> client --------------------------------------------------------


def _encode(frame: object) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def format_ts(moment: datetime) -> str:
    """Return an ISO 8601 UTC timestamp with milliseconds and a ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoredMessage(Protocol):
    """What a ``chat`` frame shows of a stored message (a ``chat.models.Message``, or a cached one)."""

    @property
    def pk(self) -> Any: ...
    @property
    def room_id(self) -> str: ...
    @property
    def author_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def verified(self) -> bool: ...
    @property
    def text(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def client_id(self) -> str | None: ...


def message_data(message: StoredMessage) -> dict[str, Any]:
    """Return the ``chat`` frame of a stored message, as a dict."""
    return {
        "type": "chat",
        "id": message.pk,
        "room": message.room_id,
        "author_id": message.author_id,
        "username": message.username,
        "verified": message.verified,
        "text": message.text,
        "ts": format_ts(message.created_at),
        "client_id": message.client_id,
    }


def chat_frame(message: StoredMessage) -> str:
    return _encode(message_data(message))


def history_frame(messages: Iterable[StoredMessage], *, has_more: bool, deleted: list[int] | None = None) -> str:
    """The answer to `history`, or to `resume` (which also names the ``deleted`` ids up to its `after`)."""
    frame: dict[str, Any] = {"type": "history", "messages": [message_data(m) for m in messages], "has_more": has_more}
    if deleted is not None:
        frame["deleted"] = deleted
    return _encode(frame)


def deleted_frame(*, room: str, ids: list[int]) -> str:
    return _encode({"type": "deleted", "room": room, "ids": ids})


def welcome_frame(*, room: str, username: str, author_id: str, verified: bool, last_id: int | None) -> str:
    return _encode(
        {
            "type": "welcome",
            "room": room,
            "username": username,
            "author_id": author_id,
            "verified": verified,
            "last_id": last_id,
        }
    )


def identity_frame(*, username: str) -> str:
    return _encode({"type": "identity", "username": username})


def renamed_frame(*, author_id: str, old: str, username: str) -> str:
    return _encode({"type": "renamed", "author_id": author_id, "old": old, "username": username})


def _person(person: Person) -> dict[str, Any]:
    return {
        "author_id": person.author_id,
        "username": person.username,
        "verified": person.verified,
        "tabs": person.tabs,
    }


def encode_people(people: Iterable[Person]) -> str:
    """The JSON array of listed people, encoded once per list and spliced into frames."""
    return _encode([_person(person) for person in people])


def presence_frame(*, room: str, count: int, people_json: str) -> str:
    """A presence snapshot: the room's count and its listed people (``encode_people``)."""
    return f'{{"type":"presence","room":{_encode(room)},"count":{count:d},"users":{people_json}}}'


def presence_diff_frame(*, room: str, changes: PeopleDiff) -> str:
    return _encode(
        {
            "type": "presence_diff",
            "room": room,
            "count": changes.count,
            "joined": [_person(person) for person in changes.joined],
            "left": list(changes.left),
        }
    )


def pong_frame() -> str:
    return _encode({"type": "pong"})


def error_frame(code: str, message: str, *, client_id: str | None = None, retry_after: float | None = None) -> str:
    assert code in ERROR_CODES, code
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if client_id is not None:
        frame["client_id"] = client_id
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return _encode(frame)
