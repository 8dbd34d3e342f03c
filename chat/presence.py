"""Who is in a room: one entry per open tab, shared by every server process.

Each tab's entry expires ``CHAT_PRESENCE_TTL`` seconds after its last
heartbeat, so a server process that dies leaves no ghosts: the next join,
leave or heartbeat in that room prunes the expired entries. Every change bumps
the room's version, so a socket is never sent a snapshot older than one it
has. Only ``snapshot`` reads the room's list; the changes just say whether
(or, for a join, at which version) the room changed. The room hub reads the
list once per burst of changes, and once for all the tabs joining at the same
moment, so a crowd joining costs no list read per join.

Without ``REDIS_URL`` the store is a dict in this process.
"""

import bisect
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from redis.asyncio import Redis

from chat import redis_client


@dataclass(frozen=True)
class Tab:
    """One open tab: whose it is and what the room should show for it."""

    author_id: str
    username: str
    verified: bool


@dataclass(frozen=True)
class PresenceUser:
    """One person in a room, with the number of tabs they have open there."""

    author_id: str
    username: str
    verified: bool
    tabs: int


@dataclass(frozen=True)
class Snapshot:
    """A room's people after a change, the change's version, and the tabs (connections) counted."""

    version: int
    users: list[PresenceUser]
    conns: frozenset[str]


def aggregate(tabs: Iterable[Tab]) -> list[PresenceUser]:
    """Fold tabs into people, sorted by name (case-insensitive), then author_id."""
    people: dict[str, PresenceUser] = {}
    for tab in tabs:
        known = people.get(tab.author_id)
        people[tab.author_id] = PresenceUser(
            author_id=tab.author_id,
            username=tab.username,
            verified=tab.verified or (known.verified if known else False),
            tabs=(known.tabs if known else 0) + 1,
        )
    return sorted(people.values(), key=_order)


def _order(user: PresenceUser) -> tuple[str, str]:
    return (user.username.casefold(), user.author_id)


def with_tab(users: list[PresenceUser], tab: Tab) -> list[PresenceUser]:
    """Return ``users`` (sorted, as ``aggregate`` gives) with one more tab counted."""
    for index, user in enumerate(users):
        if user.author_id == tab.author_id:
            counted = PresenceUser(user.author_id, user.username, user.verified or tab.verified, user.tabs + 1)
            return [*users[:index], counted, *users[index + 1:]]
    added = PresenceUser(tab.author_id, tab.username, tab.verified, 1)
    position = bisect.bisect(users, _order(added), key=_order)
    return [*users[:position], added, *users[position:]]


class PresenceStore(Protocol):
    async def join(self, *, room: str, conn: str, tab: Tab) -> int:
        """Add a tab to ``room``; return the room's new version."""

    async def leave(self, *, room: str, conn: str) -> bool:
        """Remove a tab; False when it was not there (already expired)."""

    async def rename(self, *, room: str, author_id: str, username: str) -> bool:
        """Show every tab of ``author_id`` in ``room`` under a new name; False if it has none."""

    async def heartbeat(self, *, room: str, conn: str, tab: Tab) -> bool:
        """Keep a tab alive and prune expired ones; True if the room changed."""

    async def snapshot(self, *, room: str) -> Snapshot:
        """The room's people now (expired tabs pruned)."""

    async def claim(self, key: str) -> bool:
        """Return True for the first caller only (within a minute) of ``key``."""


class LocalPresence:
    """Presence for a single server process."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Tab]] = {}
        self._versions: dict[str, int] = {}
        self._claims: dict[str, float] = {}

    def _bump(self, room: str) -> int:
        self._versions[room] = self._versions.get(room, 0) + 1
        return self._versions[room]

    async def join(self, *, room: str, conn: str, tab: Tab) -> int:
        self._rooms.setdefault(room, {})[conn] = tab
        return self._bump(room)

    async def leave(self, *, room: str, conn: str) -> bool:
        tabs = self._rooms.get(room, {})
        if tabs.pop(conn, None) is None:
            return False
        if not tabs:
            self._rooms.pop(room, None)
        return True

    async def rename(self, *, room: str, author_id: str, username: str) -> bool:
        tabs = self._rooms.get(room, {})
        mine = [conn for conn, tab in tabs.items() if tab.author_id == author_id]
        for conn in mine:
            tabs[conn] = Tab(author_id, username, tabs[conn].verified)
        return bool(mine)

    async def heartbeat(self, *, room: str, conn: str, tab: Tab) -> bool:
        return False  # entries die with the process that holds them

    async def snapshot(self, *, room: str) -> Snapshot:
        tabs = self._rooms.get(room, {})
        return Snapshot(self._bump(room), aggregate(tabs.values()), frozenset(tabs))

    async def claim(self, key: str) -> bool:
        now = time.monotonic()
        self._claims = {k: t for k, t in self._claims.items() if t > now}
        if key in self._claims:
            return False
        self._claims[key] = now + 60
        return True


# Shared by every script below: KEYS = tabs hash, expiry zset, version counter;
# ARGV[1] = time to live in ms. Prunes expired tabs first. A changed room
# answers {version, tabs} when the script sets with_list, else {version}.
_PRELUDE = """
local tabs, expiry, version = KEYS[1], KEYS[2], KEYS[3]
local ttl = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local changed = false
local with_list = false
local dead = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
for _, conn in ipairs(dead) do
  redis.call('HDEL', tabs, conn)
  redis.call('ZREM', expiry, conn)
  changed = true
end
"""
_POSTLUDE = """
redis.call('PEXPIRE', tabs, ttl * 2)
redis.call('PEXPIRE', expiry, ttl * 2)
redis.call('PEXPIRE', version, ttl * 2)
if changed then
  -- Versions follow Redis's clock, so they keep growing even if the keys
  -- are lost (a Redis restart) while consumers remember an old version.
  local v = math.max(now * 1000, tonumber(redis.call('GET', version) or '0') + 1)
  redis.call('SET', version, string.format('%d', v), 'PX', ttl * 2)
  if with_list then return {v, redis.call('HGETALL', tabs)} end
  return {v}
end
return false
"""
_JOIN = """
redis.call('HSET', tabs, ARGV[2], ARGV[3])
redis.call('ZADD', expiry, now + ttl, ARGV[2])
changed = true
"""
_LEAVE = """
if redis.call('HDEL', tabs, ARGV[2]) > 0 then changed = true end
redis.call('ZREM', expiry, ARGV[2])
"""
_HEARTBEAT = """
if redis.call('ZADD', expiry, now + ttl, ARGV[2]) == 1 then
  -- it had expired and been pruned: it is back
  redis.call('HSET', tabs, ARGV[2], ARGV[3])
  changed = true
end
"""
_SNAPSHOT = """
changed = true
with_list = true
"""
_RENAME = """
local all = redis.call('HGETALL', tabs)
for i = 1, #all, 2 do
  local tab = cjson.decode(all[i + 1])
  if tab[1] == ARGV[2] then
    tab[2] = ARGV[3]
    redis.call('HSET', tabs, all[i], cjson.encode(tab))
    changed = true
  end
end
"""


def _encode(tab: Tab) -> str:
    return json.dumps([tab.author_id, tab.username, tab.verified], ensure_ascii=False)


def _decode(raw: str) -> Tab:
    author_id, username, verified = json.loads(raw)
    return Tab(author_id, username, bool(verified))


class RedisPresence:
    """Presence shared through Redis by every server process."""

    def __init__(self, client: Redis) -> None:
        self._join = client.register_script(_PRELUDE + _JOIN + _POSTLUDE)
        self._leave = client.register_script(_PRELUDE + _LEAVE + _POSTLUDE)
        self._heartbeat = client.register_script(_PRELUDE + _HEARTBEAT + _POSTLUDE)
        self._rename = client.register_script(_PRELUDE + _RENAME + _POSTLUDE)
        self._snapshot = client.register_script(_PRELUDE + _SNAPSHOT + _POSTLUDE)
        self._client = client

    @staticmethod
    def _keys(room: str) -> list[str]:
        return [redis_client.key("presence", room, part) for part in ("tabs", "expiry", "version")]

    @staticmethod
    def _ttl_ms() -> int:
        return int(settings.CHAT_PRESENCE_TTL * 1000)

    async def join(self, *, room: str, conn: str, tab: Tab) -> int:
        (version,) = await self._join(self._keys(room), [self._ttl_ms(), conn, _encode(tab)])
        return int(version)  # a join always changes the room

    async def leave(self, *, room: str, conn: str) -> bool:
        return bool(await self._leave(self._keys(room), [self._ttl_ms(), conn]))

    async def rename(self, *, room: str, author_id: str, username: str) -> bool:
        return bool(await self._rename(self._keys(room), [self._ttl_ms(), author_id, username]))

    async def heartbeat(self, *, room: str, conn: str, tab: Tab) -> bool:
        return bool(await self._heartbeat(self._keys(room), [self._ttl_ms(), conn, _encode(tab)]))

    async def snapshot(self, *, room: str) -> Snapshot:
        version, flat = await self._snapshot(self._keys(room), [self._ttl_ms()])
        conns, raw_tabs = flat[0::2], flat[1::2]  # HGETALL: conn, tab, conn, tab, ...
        return Snapshot(int(version), aggregate(_decode(raw) for raw in raw_tabs), frozenset(conns))

    async def claim(self, key: str) -> bool:
        return bool(await self._client.set(redis_client.key("claim", key), "1", nx=True, px=60_000))


_local = LocalPresence()


def get_presence() -> PresenceStore:
    """Return the presence store for this configuration."""
    return redis_client.bound(RedisPresence) if settings.REDIS_URL else _local
