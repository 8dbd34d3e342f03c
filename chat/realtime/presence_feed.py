"""One room's presence as this process's tabs are shown it: a snapshot, then diffs.

A tab gets the room's people once, right after its ``welcome`` (a
``presence`` snapshot: the count and at most ``LISTED_MAX`` listed people).
After that it gets ``presence_diff`` frames: who joined or left the list, and
the new count, at most one per ``PRESENCE_INTERVAL`` (changes in between are
merged) and none when nothing it shows changed.

The feed remembers, for each tab, which list and count it was last shown,
and keeps the lists some tab still shows. On each pass (the room hub calls
``due`` a few times a second) the tabs that are behind are grouped by the
list they show: each group gets one frame, encoded once, however many tabs
are in it. So presence costs a tab one small frame a second at most, and
the server one diff per distinct list shown, not one per tab.
"""

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from chat import protocol
from chat.realtime.people import Person, RoomPeople, diff

# The contract: at most one presence frame per tab per second.
PRESENCE_INTERVAL = 1.0

TabT = TypeVar("TabT", bound=Hashable)


@dataclass(slots=True)
class Shown:
    """What one tab was last shown, and when it was last sent a presence frame."""

    list_version: int
    count: int
    sent_at: float


class PresenceFeed(Generic[TabT]):
    """The presence of one room, for the tabs of this process in it."""

    def __init__(self, room: str) -> None:
        self.room = room
        # The newest report of the room known here.
        self.version = -1
        self.count = 0
        self.list_version = -1
        self._lists: dict[int, tuple[Person, ...]] = {}
        self._encoded: dict[int, str] = {}  # list version -> its people as JSON
        self._shown: dict[TabT, Shown] = {}

    def has_list(self, list_version: int) -> bool:
        return list_version in self._lists

    def learn(self, people: RoomPeople) -> None:
        """Take a report of the room (from a tab entering, or a read)."""
        if people.listed is not None:
            self._lists.setdefault(people.list_version, people.listed)
        if people.version > self.version and people.list_version in self._lists:
            self.version, self.count, self.list_version = people.version, people.count, people.list_version

    def snapshot(self, tab: TabT, people: RoomPeople, now: float) -> str:
        """The ``presence`` frame for a tab that has just entered; ``people`` is what its entry read.

        ``people.listed`` may be None only if the feed has that list.
        """
        self.learn(people)
        self._shown[tab] = Shown(people.list_version, people.count, now)
        return protocol.presence_frame(
            room=self.room, count=people.count, people_json=self._people_json(people.list_version)
        )

    def forget(self, tab: TabT) -> None:
        self._shown.pop(tab, None)

    def due(self, now: float) -> list[tuple[list[TabT], str]]:
        """The frames to send now, each with the tabs it goes to (and the feed notes them sent)."""
        behind: dict[int, list[TabT]] = {}
        for tab, shown in self._shown.items():
            if shown.list_version == self.list_version and shown.count == self.count:
                continue
            if now - shown.sent_at >= PRESENCE_INTERVAL:
                behind.setdefault(shown.list_version, []).append(tab)
        sends: list[tuple[list[TabT], str]] = []
        for list_version, tabs in behind.items():
            before = self._lists.get(list_version)
            if before is None:  # not kept: the tab starts over from a snapshot
                frame = protocol.presence_frame(
                    room=self.room, count=self.count, people_json=self._people_json(self.list_version)
                )
                changes = None
            else:
                changes = diff(before, self._lists[self.list_version], count=self.count)
                frame = protocol.presence_diff_frame(room=self.room, changes=changes)
            recipients: list[TabT] = []
            for tab in tabs:
                shown = self._shown[tab]
                if changes is not None and not changes and shown.count == self.count:
                    shown.list_version = self.list_version  # nothing it shows changed: nothing to send
                    continue
                shown.list_version, shown.count, shown.sent_at = self.list_version, self.count, now
                recipients.append(tab)
            if recipients:
                sends.append((recipients, frame))
        self._keep_shown_lists()
        return sends

    def _people_json(self, list_version: int) -> str:
        encoded = self._encoded.get(list_version)
        if encoded is None:
            encoded = self._encoded[list_version] = protocol.encode_people(self._lists[list_version])
        return encoded

    def _keep_shown_lists(self) -> None:
        if len(self._lists) <= 2:
            return
        wanted = {self.list_version} | {shown.list_version for shown in self._shown.values()}
        for list_version in [version for version in self._lists if version not in wanted]:
            del self._lists[list_version]
            self._encoded.pop(list_version, None)
