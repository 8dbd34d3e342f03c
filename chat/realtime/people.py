"""A room's people as the presence store reports them, and what changed between two reports.

Plain data, no I/O: the presence store (``presence_store``) produces it, the
presence feed (``presence_feed``) keeps it per room, and ``chat.protocol``
renders it. A room can hold thousands of people; a report lists at most
``LISTED_MAX`` of them (the first to join) and counts the rest, so what a tab
is sent does not grow with the room.
"""

from dataclasses import dataclass

# The contract (PROTOCOL.md §3): a presence snapshot lists at most 100 people.
LISTED_MAX = 100


@dataclass(frozen=True, slots=True)
class Person:
    """One identity in a room, with the number of its tabs there."""

    author_id: str
    username: str
    verified: bool
    tabs: int


@dataclass(frozen=True, slots=True)
class RoomPeople:
    """A room's people at one moment.

    ``version`` changes whenever ``count`` or the listed people change;
    ``list_version`` only when the listed people change. ``listed`` is None
    when the reader said it already holds that ``list_version`` (the store
    then does not send the list again).
    """

    version: int
    count: int
    list_version: int
    listed: tuple[Person, ...] | None


@dataclass(frozen=True, slots=True)
class PeopleDiff:
    """The changes from one listed-people report to another, and the new count."""

    count: int
    joined: tuple[Person, ...]
    left: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.joined or self.left)


def diff(before: tuple[Person, ...], after: tuple[Person, ...], *, count: int) -> PeopleDiff:
    """Return who joined the list (or changed: name, ``verified``, tabs) and who left it."""
    old = {person.author_id: person for person in before}
    new_ids = {person.author_id for person in after}
    joined = tuple(person for person in after if old.get(person.author_id) != person)
    left = tuple(author_id for author_id in old if author_id not in new_ids)
    return PeopleDiff(count=count, joined=joined, left=left)
