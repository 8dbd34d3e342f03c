"""The presence store: who is in a room, the list and the count, the socket cap, expiry in Redis."""

import asyncio

import pytest

from chat.realtime.people import LISTED_MAX, Person
from chat.realtime.presence_store import LocalPresence, RedisPresence, Renewal
from chat.redis_client import get_redis

ADA, GRACE = "a" * 20, "g" * 20


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request, settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 3
    return LocalPresence() if request.param == "local" else RedisPresence(get_redis())


async def enter(
    store,
    socket_id: str,
    author_id: str = ADA,
    *,
    room: str = "r",
    name: str = "Ada",
    verified: bool = False,
    known_list: int = -1,
):
    return await store.enter(
        room=room, socket_id=socket_id, author_id=author_id, username=name, verified=verified, known_list=known_list
    )


async def test_people_are_listed_in_the_order_they_came_with_their_tabs(store):
    await enter(store, "a1")
    await enter(store, "g1", GRACE, name="Grace", verified=True)
    people = await enter(store, "a2")
    assert people.count == 2
    assert people.listed == (Person(ADA, "Ada", False, 2), Person(GRACE, "Grace", True, 1))
    await store.exit(room="r", socket_id="a1", author_id=ADA)
    await store.exit(room="r", socket_id="a1", author_id=ADA)  # twice: harmless
    now = await store.read(room="r", known_list=-1)
    assert now.count == 2 and now.listed == (Person(ADA, "Ada", False, 1), Person(GRACE, "Grace", True, 1))
    await store.exit(room="r", socket_id="a2", author_id=ADA)
    gone = await store.read(room="r", known_list=-1)
    assert gone.count == 1 and [p.author_id for p in gone.listed] == [GRACE]


async def test_a_big_room_lists_the_first_hundred_and_counts_everyone(store, settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 1
    authors = [f"author{n:04d}" for n in range(LISTED_MAX + 20)]
    for n, author in enumerate(authors):
        people = await enter(store, f"s{n}", author, name=f"n{n}")
    assert people.count == LISTED_MAX + 20
    first = await store.read(room="r", known_list=-1)
    assert [p.author_id for p in first.listed] == authors[:LISTED_MAX]
    # Someone past the list leaving changes the count, not the list.
    await store.exit(room="r", socket_id=f"s{LISTED_MAX + 5}", author_id=authors[LISTED_MAX + 5])
    later = await store.read(room="r", known_list=first.list_version)
    assert later.count == LISTED_MAX + 19 and later.version > first.version
    assert later.list_version == first.list_version and later.listed is None  # not sent again
    # Someone on the list leaving lets the next one in.
    await store.exit(room="r", socket_id="s0", author_id=authors[0])
    moved = await store.read(room="r", known_list=first.list_version)
    assert moved.list_version != first.list_version
    assert [p.author_id for p in moved.listed] == authors[1 : LISTED_MAX + 1]


async def test_versions_say_which_rooms_changed(store):
    assert await store.versions(["r", "quiet"]) == [0, 0]
    await enter(store, "a1")
    first, quiet = await store.versions(["r", "quiet"])
    assert first > 0 and quiet == 0
    await enter(store, "a2")  # Ada's second tab: her entry on the list changes
    assert (await store.versions(["r"]))[0] > first


async def test_a_rename_is_claimed_once_per_room_and_shows_on_the_list(store):
    await enter(store, "a1")
    await enter(store, "a2", room="other")
    before = await store.read(room="r", known_list=-1)
    assert await store.rename(room="r", author_id=ADA, username="Ada L.", change_id="c1") is True
    renamed = await store.read(room="r", known_list=before.list_version)
    assert renamed.listed == (Person(ADA, "Ada L.", False, 1),)
    if isinstance(store, RedisPresence):  # across processes only one tab per room tells the room
        assert await store.rename(room="r", author_id=ADA, username="Ada L.", change_id="c1") is False
    assert await store.rename(room="other", author_id=ADA, username="Ada L.", change_id="c1") is True


async def test_sockets_over_the_cap_are_refused_per_identity_across_rooms(store):
    assert [await enter(store, f"c{n}", room=f"r{n}") is not None for n in range(4)] == [True, True, True, False]
    assert await enter(store, "g0", GRACE) is not None  # another identity has its own count
    await store.exit(room="r1", socket_id="c1", author_id=ADA)
    assert await enter(store, "c4") is not None  # a closed socket frees its place
    assert await enter(store, "c5") is None


async def test_the_cap_is_read_at_each_connect(store, settings):
    for n in range(3):
        await enter(store, f"c{n}")
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 4
    assert await enter(store, "c3") is not None


@pytest.mark.redis
async def test_a_dead_processes_tabs_expire_and_a_late_renewal_brings_one_back(settings):
    settings.CHAT_PRESENCE_TTL = 0.3
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 2
    store = RedisPresence(get_redis())
    await enter(store, "dead", GRACE, name="Grace")
    await enter(store, "alive")
    await asyncio.sleep(0.4)
    # Both expired; the renewal prunes them and puts its own tab back.
    await store.renew(room="r", tabs=[Renewal("alive", ADA, "Ada", False)])
    people = await store.read(room="r", known_list=-1)
    assert people.count == 1 and people.listed == (Person(ADA, "Ada", False, 1),)
    # The dead tab's socket no longer counts against Grace's cap.
    assert await enter(store, "g2", GRACE) is not None and await enter(store, "g3", GRACE) is not None


@pytest.mark.redis
async def test_renewals_keep_a_socket_counted_past_the_ttl(settings):
    settings.CHAT_PRESENCE_TTL = 1.0
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 2
    store = RedisPresence(get_redis())
    await enter(store, "dead", room="r1")
    await enter(store, "alive", room="r2")
    for _ in range(3):
        await asyncio.sleep(0.4)
        await store.renew(room="r2", tabs=[Renewal("alive", ADA, "Ada", False)])
    assert await enter(store, "new", room="r3") is not None  # "dead" stopped counting
    assert await enter(store, "one-more", room="r3") is None  # "alive" still counts


@pytest.mark.redis
async def test_two_processes_share_one_count(settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 2
    first, second = RedisPresence(get_redis()), RedisPresence(get_redis())
    results = await asyncio.gather(*(enter(first if n % 2 else second, f"c{n}") for n in range(10)))
    assert sorted(result is not None for result in results) == [False] * 8 + [True] * 2
    people = await first.read(room="r", known_list=-1)
    assert people.count == 1 and people.listed[0].tabs == 2


@pytest.mark.redis
async def test_one_renewal_keeps_many_tabs_of_a_room_and_brings_back_the_expired(settings):
    settings.CHAT_PRESENCE_TTL = 0.5
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 1
    store = RedisPresence(get_redis())
    authors = [f"author{n:04d}" for n in range(300)]
    for n, author in enumerate(authors):
        await enter(store, f"s{n}", author, name=f"n{n}")
    await asyncio.sleep(0.6)  # every entry has expired (no renewal came)
    await store.renew(room="r", tabs=[Renewal(f"s{n}", author, f"n{n}", False) for n, author in enumerate(authors)])
    people = await store.read(room="r", known_list=-1)
    assert people.count == 300 and {p.tabs for p in people.listed} == {1}
    # Their sockets count against their caps again.
    assert await enter(store, "another", authors[0]) is None
