"""Who is in a room, and how many sockets each browser holds: one store for both.

A tab enters a room in one call (``enter``): its socket is counted against
its identity's cap (``CHAT_MAX_SOCKETS_PER_IDENTITY``, across rooms and
processes), added to the room, and the room's people are read back. With
Redis that is one Lua script, so a connect costs one Redis round trip here.

What the store keeps per room is the tabs (each with an expiry), the people
in the order they joined with their tab counts, and two versions: one that
changes when the count or the listed people change, one when only the
listed people (the first ``LISTED_MAX`` to join) change. A reader passes the
list version it holds and gets the list only when it changed, so reading a
room of 10,000 moves at most 100 entries, and only when they changed.

Each tab's entries expire ``CHAT_PRESENCE_TTL`` seconds after its last
renewal, so a server process that dies leaves no ghosts: any later call in
that room prunes them. Versions follow Redis's clock (microseconds), so they
keep growing even when the keys are lost in a Redis restart.

Without ``REDIS_URL`` the store is a dict in this process.
"""

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from django.conf import settings
from redis.asyncio import Redis

from chat import redis_client
from chat.realtime.people import LISTED_MAX, Person, RoomPeople


class Renewal(NamedTuple):
    """One open tab to keep counted and present."""

    socket_id: str
    author_id: str
    username: str
    verified: bool


class PresenceStore(Protocol):
    async def enter(
        self, *, room: str, socket_id: str, author_id: str, username: str, verified: bool, known_list: int
    ) -> RoomPeople | None:
        """Count the socket and add its tab to ``room``; the room's people, or None when over the cap."""

    async def renew(self, *, room: str, tabs: Sequence[Renewal]) -> None:
        """Keep open sockets of ``room`` counted and present (putting back any that had expired)."""

    async def exit(self, *, room: str, socket_id: str, author_id: str) -> None:
        """Stop counting the socket and remove its tab from ``room``."""

    async def rename(self, *, room: str, author_id: str, username: str, change_id: str) -> bool:
        """Show ``author_id`` under a new name in ``room``; True for the first caller of ``change_id`` only."""

    async def versions(self, rooms: list[str]) -> list[int]:
        """The current version of each room (0: nobody there)."""

    async def read(self, *, room: str, known_list: int) -> RoomPeople:
        """The room's people now (the list only if its version is not ``known_list``)."""


# --- In this process ------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    username: str
    verified: bool
    tabs: int


@dataclass
class _Room:
    tabs: dict[str, str] = field(default_factory=dict)  # socket id -> author id
    people: dict[str, _Entry] = field(default_factory=dict)  # by author id, in the order they joined
    version: int = 0
    list_version: int = 0

    def is_listed(self, author_id: str) -> bool:
        return author_id in itertools.islice(self.people, LISTED_MAX)


class LocalPresence:
    """Presence and socket counts for a single server process (entries die with it)."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._sockets: dict[str, set[str]] = {}  # author id -> its sockets, in any room
        # One clock for every room: a room emptied and joined again never reuses a version.
        self._clock = itertools.count(1)

    def _changed(self, room: _Room, *, listed: bool) -> None:
        room.version = next(self._clock)
        if listed:
            room.list_version = room.version

    async def enter(
        self, *, room: str, socket_id: str, author_id: str, username: str, verified: bool, known_list: int
    ) -> RoomPeople | None:
        sockets = self._sockets.setdefault(author_id, set())
        if len(sockets) >= settings.CHAT_MAX_SOCKETS_PER_IDENTITY:
            return None
        sockets.add(socket_id)
        state = self._rooms.setdefault(room, _Room())
        state.tabs[socket_id] = author_id
        entry = state.people.get(author_id)
        if entry is None:
            state.people[author_id] = _Entry(username, verified, 1)
        else:
            entry.username, entry.verified, entry.tabs = username, verified, entry.tabs + 1
        self._changed(state, listed=state.is_listed(author_id))
        return self._report(state, known_list)

    async def renew(self, *, room: str, tabs: Sequence[Renewal]) -> None:
        pass  # nothing expires in one process

    async def exit(self, *, room: str, socket_id: str, author_id: str) -> None:
        sockets = self._sockets.get(author_id)
        if sockets is not None:
            sockets.discard(socket_id)
            if not sockets:
                del self._sockets[author_id]
        state = self._rooms.get(room)
        if state is None or state.tabs.pop(socket_id, None) is None:
            return
        listed = state.is_listed(author_id)
        entry = state.people[author_id]
        entry.tabs -= 1
        if not entry.tabs:
            del state.people[author_id]
        self._changed(state, listed=listed)
        if not state.tabs:
            del self._rooms[room]

    async def rename(self, *, room: str, author_id: str, username: str, change_id: str) -> bool:
        # One process: its hub already asks one tab per room, so every call is the first.
        state = self._rooms.get(room)
        entry = state.people.get(author_id) if state else None
        if state is not None and entry is not None:
            entry.username = username
            self._changed(state, listed=state.is_listed(author_id))
        return True

    async def versions(self, rooms: list[str]) -> list[int]:
        return [state.version if (state := self._rooms.get(room)) else 0 for room in rooms]

    async def read(self, *, room: str, known_list: int) -> RoomPeople:
        return self._report(self._rooms.get(room) or _Room(), known_list)

    @staticmethod
    def _report(room: _Room, known_list: int) -> RoomPeople:
        listed = None
        if room.list_version != known_list:
            listed = tuple(
                Person(author_id, entry.username, entry.verified, entry.tabs)
                for author_id, entry in itertools.islice(room.people.items(), LISTED_MAX)
            )
        return RoomPeople(room.version, len(room.people), room.list_version, listed)


# --- In Redis, shared by every process ------------------------------------------------
# Every script starts with _PRELUDE and ends with _EPILOGUE. KEYS[1..7] are
# the room's (see RedisPresence._keys), KEYS[8] what the script needs
# besides; ARGV[1] is the time to live in ms. The prelude prunes expired
# tabs; a script's body sets `result`.
_PRELUDE = """
local TABS, EXPIRY, PEOPLE, COUNTS, PROFILES, VERSION, LIST_VERSION = unpack(KEYS, 1, 7)
local LISTED_MAX = tonumber(ARGV[#ARGV])
local ttl = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local changed, relisted, result = false, false, false

local function is_listed(author)
  local rank = redis.call('ZRANK', PEOPLE, author)
  return rank ~= false and rank < LISTED_MAX
end
local function add_tab(socket, author, profile)
  redis.call('HSET', TABS, socket, author)
  redis.call('ZADD', EXPIRY, now + ttl, socket)
  if redis.call('HINCRBY', COUNTS, author, 1) == 1 then
    redis.call('ZADD', PEOPLE, now, author)
    changed = true
  end
  redis.call('HSET', PROFILES, author, profile)
  if is_listed(author) then relisted = true end
end
local function drop_tab(socket)
  local author = redis.call('HGET', TABS, socket)
  redis.call('HDEL', TABS, socket)
  redis.call('ZREM', EXPIRY, socket)
  if not author then return end
  if is_listed(author) then relisted = true end
  if redis.call('HINCRBY', COUNTS, author, -1) <= 0 then
    redis.call('HDEL', COUNTS, author)
    redis.call('HDEL', PROFILES, author)
    redis.call('ZREM', PEOPLE, author)
    changed = true
  end
end
local function report(known_list)
  local list_version = redis.call('GET', LIST_VERSION) or '0'
  local answer = {redis.call('GET', VERSION) or '0', redis.call('ZCARD', PEOPLE), list_version}
  if list_version == known_list then return answer end
  local listed = {}
  for _, author in ipairs(redis.call('ZRANGE', PEOPLE, 0, LISTED_MAX - 1)) do
    listed[#listed + 1] = author
    listed[#listed + 1] = redis.call('HGET', PROFILES, author)
    listed[#listed + 1] = redis.call('HGET', COUNTS, author)
  end
  answer[4] = listed
  return answer
end

for _, socket in ipairs(redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now)) do
  drop_tab(socket)
end
"""
_EPILOGUE = """
local function bump(key)
  local v = math.max(now * 1000, tonumber(redis.call('GET', key) or '0') + 1)
  redis.call('SET', key, string.format('%d', v))
end
if relisted then bump(LIST_VERSION); changed = true end
if changed then bump(VERSION) end
for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
if type(result) == 'function' then return result() end
return result
"""
# KEYS[8]: the identity's sockets (zset: socket id -> expiry). ARGV: ttl,
# socket id, author id, profile, cap, known list version.
_ENTER = """
local sockets, socket = KEYS[8], ARGV[2]
redis.call('ZREMRANGEBYSCORE', sockets, '-inf', now)
if redis.call('ZCARD', sockets) < tonumber(ARGV[5]) then
  redis.call('ZADD', sockets, now + ttl, socket)
  redis.call('PEXPIRE', sockets, ttl)
  add_tab(socket, ARGV[3], ARGV[4])
  result = function() return report(ARGV[6]) end
end
"""
# ARGV: ttl, the prefix of the identities' socket keys, then socket id,
# author id and profile of each tab renewed (one script for many tabs: a
# room of 10,000 here is 20 scripts a pass, not 10,000).
_RENEW = """
for i = 3, #ARGV - 1, 3 do
  local socket, author = ARGV[i], ARGV[i + 1]
  local sockets = ARGV[2] .. author
  redis.call('ZADD', sockets, now + ttl, socket)
  redis.call('PEXPIRE', sockets, ttl)
  if redis.call('ZADD', EXPIRY, now + ttl, socket) == 1 then
    add_tab(socket, author, ARGV[i + 2])  -- it had expired and been pruned: it is back
  end
end
"""
# KEYS[8]: the identity's sockets. ARGV: ttl, socket id.
_EXIT = """
redis.call('ZREM', KEYS[8], ARGV[2])
drop_tab(ARGV[2])
"""
# KEYS[8]: the change's claim for this room. ARGV: ttl, author id, username.
_RENAME = """
if redis.call('SET', KEYS[8], '1', 'NX', 'PX', 60000) then
  result = 1
  local profile = redis.call('HGET', PROFILES, ARGV[2])
  if profile then
    local entry = cjson.decode(profile)
    entry[1] = ARGV[3]
    redis.call('HSET', PROFILES, ARGV[2], cjson.encode(entry))
    if is_listed(ARGV[2]) then relisted = true end
  end
end
"""
# ARGV: ttl, known list version.
_READ = """
result = function() return report(ARGV[2]) end
"""


def _profile(username: str, verified: bool) -> str:
    return json.dumps([username, verified], ensure_ascii=False)


def _room_people(reply: list[object]) -> RoomPeople:
    version, count, list_version = (int(value) for value in reply[:3])  # type: ignore[call-overload]
    listed = None
    if len(reply) > 3:
        flat = reply[3]
        assert isinstance(flat, list)
        people = []
        for index in range(0, len(flat), 3):
            username, verified = json.loads(flat[index + 1])
            people.append(Person(flat[index], username, bool(verified), int(flat[index + 2])))
        listed = tuple(people)
    return RoomPeople(version, count, list_version, listed)


class RedisPresence:
    """Presence and socket counts in Redis, shared by every server process."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._enter, self._renew, self._exit, self._rename, self._read = (
            client.register_script(_PRELUDE + body + _EPILOGUE) for body in (_ENTER, _RENEW, _EXIT, _RENAME, _READ)
        )

    @staticmethod
    def _keys(room: str) -> list[str]:
        parts = ("tabs", "expiry", "people", "counts", "profiles", "version", "list_version")
        return [redis_client.key("presence", room, part) for part in parts]

    @staticmethod
    def _sockets(author_id: str) -> str:
        return redis_client.key("sockets", author_id)

    @staticmethod
    def _ttl_ms() -> int:
        return int(settings.CHAT_PRESENCE_TTL * 1000)

    async def enter(
        self, *, room: str, socket_id: str, author_id: str, username: str, verified: bool, known_list: int
    ) -> RoomPeople | None:
        reply = await self._enter(
            [*self._keys(room), self._sockets(author_id)],
            [
                self._ttl_ms(),
                socket_id,
                author_id,
                _profile(username, verified),
                settings.CHAT_MAX_SOCKETS_PER_IDENTITY,
                str(known_list),
                LISTED_MAX,
            ],
        )
        return _room_people(reply) if reply else None

    async def renew(self, *, room: str, tabs: Sequence[Renewal]) -> None:
        if not tabs:
            return
        entries = [
            part for tab in tabs for part in (tab.socket_id, tab.author_id, _profile(tab.username, tab.verified))
        ]
        await self._renew(self._keys(room), [self._ttl_ms(), self._sockets(""), *entries, LISTED_MAX])

    async def exit(self, *, room: str, socket_id: str, author_id: str) -> None:
        await self._exit([*self._keys(room), self._sockets(author_id)], [self._ttl_ms(), socket_id, LISTED_MAX])

    async def rename(self, *, room: str, author_id: str, username: str, change_id: str) -> bool:
        claim = redis_client.key("claim", "rename", change_id, room)
        return bool(await self._rename([*self._keys(room), claim], [self._ttl_ms(), author_id, username, LISTED_MAX]))

    async def versions(self, rooms: list[str]) -> list[int]:
        if not rooms:
            return []
        found = await self._client.mget([redis_client.key("presence", room, "version") for room in rooms])
        return [int(version) if version else 0 for version in found]

    async def read(self, *, room: str, known_list: int) -> RoomPeople:
        return _room_people(await self._read(self._keys(room), [self._ttl_ms(), str(known_list), LISTED_MAX]))


_local = LocalPresence()


def get_presence() -> PresenceStore:
    """Return the presence store for this configuration."""
    return redis_client.bound(RedisPresence) if settings.REDIS_URL else _local
