"""Abuse through the real consumer: hostile texts and names, and floods of
messages, renames and sockets from one identity.

With REDIS_URL set, the rate limits and the socket count live in Redis, as in
production with several server processes.
"""

import asyncio
import json
import logging
import time

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, VisitorSettings
from tests.tabs import TIMEOUT, Tab, new_browser, open_tab

pytestmark = pytest.mark.django_db(transaction=True)

BURST, RATE = 10, 1.0


@pytest.fixture
def default_limits(settings):
    settings.CHAT_RATE_BURST = BURST
    settings.CHAT_RATE_PER_SECOND = RATE
    return settings


# --- Hostile texts and names ----------------------------------------------------

HOSTILE_TEXTS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)"><a href="javascript:alert(1)">click</a>',
    "javascript:alert(document.cookie)",
    "\u202eevil.exe\u202c reversed",  # right-to-left override
    "zero\u200bwidth\ufeffbom\u2060joiner",
    "\u2066isolate\u2069 and \u200fmarks\u200e",
    "line\u2028separator",
    "tab\tand\nnew line",
    "&lt;already escaped&gt; &amp;",
]


async def test_hostile_texts_are_stored_and_sent_as_given_after_trimming():
    tab, other = await open_tab(await new_browser()), await open_tab(await new_browser())
    for t in (tab, other):
        await t.quiet()
    for n, text in enumerate(HOSTILE_TEXTS):
        await tab.send({"type": "chat", "text": f"  {text} \n", "client_id": f"h{n}"})
        echo = await tab.recv_type("chat")
        assert echo["text"] == text and echo["client_id"] == f"h{n}"
        assert (await other.recv_type("chat"))["text"] == text
    stored = await database_sync_to_async(lambda: list(Message.objects.order_by("pk").values_list("text", flat=True)))()
    assert stored == HOSTILE_TEXTS
    for t in (tab, other):
        await t.close()


@pytest.mark.parametrize(
    "name",
    [
        "\u202eAdmin",  # right-to-left override
        "Ad\u202dmin",  # left-to-right override
        "\u2067Admin\u2069",  # right-to-left isolate
        "Ad\u200bmin",  # zero-width space
        "\ufeffAdmin",  # byte order mark (zero-width no-break space)
        "Ad\u200emin",  # left-to-right mark
        "Ad\u00admin",  # soft hyphen
        "Ad\x00min",
        "Ad\x1b[31mmin",  # terminal escape
        "Ad\x7fmin",
        "Ad\u2028min",
    ],
)
async def test_invisible_and_control_characters_in_names_are_refused(name):
    key = await new_browser()
    tab = await open_tab(key)
    await tab.send({"type": "rename", "username": "Ada"})
    await tab.recv_type("identity")
    await tab.quiet()
    await tab.send({"type": "rename", "username": name})
    error = await tab.recv_type("error")
    assert error["code"] == "invalid_username"
    assert await tab.silent()  # no identity, renamed or presence change
    rows = await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))()
    assert rows == ["Ada"]
    await tab.close()


@pytest.mark.parametrize(
    "name",
    [
        "\u3164",  # HANGUL FILLER
        "\u3164 \u3164\u3164",
        "\u115f\u1160",  # Hangul choseong and jungseong fillers
        "\uffa0",  # halfwidth Hangul filler
        "\u2800\u2800",  # braille pattern blank
        "\u0301",  # a lone combining acute accent
        "\u20dd\u0489",  # enclosing marks (Me)
        "\u0903",  # a spacing mark alone (Mc)
        "\u3164\u0301",  # a filler carrying a mark
    ],
)
async def test_names_with_nothing_visible_are_refused(name):
    tab = await open_tab(await new_browser())
    await tab.send({"type": "rename", "username": "Ada"})
    await tab.recv_type("identity")
    await tab.quiet()
    await tab.send({"type": "rename", "username": name})
    error = await tab.recv_type("error")
    assert error["code"] == "invalid_username"
    assert await tab.silent()
    rows = await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))()
    assert rows == ["Ada"]
    await still_alive(tab)
    await tab.close()


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 5000 + "]" * 5000,
        '{"type": "chat", "text": "hi", "client_id": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}",
    ],
)
async def test_deeply_nested_json_gets_bad_json_and_the_socket_stays_open(frame, caplog):
    caplog.set_level(logging.INFO)
    tab = await open_tab(await new_browser())
    await tab.quiet()
    await tab.send(frame)
    error = await tab.recv()
    assert (error["type"], error["code"]) == ("error", "bad_json")
    await still_alive(tab)
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    stored = await database_sync_to_async(Message.objects.count)()
    assert stored == 0
    await tab.close()


@pytest.mark.parametrize(
    "name", ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "javascript:alert(1)", '"><b>x</b>', "&amp;"]
)
async def test_html_looking_names_are_just_names(name):
    tab, other = await open_tab(await new_browser()), await open_tab(await new_browser())
    await other.quiet()
    await tab.send({"type": "rename", "username": name})
    assert await tab.recv_type("identity") == {"type": "identity", "username": name}
    assert (await other.recv_type("renamed"))["username"] == name
    await tab.send({"type": "chat", "text": "hi"})
    assert (await other.recv_type("chat"))["username"] == name
    for t in (tab, other):
        await t.close()


# --- Floods ------------------------------------------------------------------------


async def answers(tab: Tab, client_ids: set[str]) -> dict[str, dict]:
    """Read ``tab``'s frames until each of ``client_ids`` is answered (echo or error)."""
    found: dict[str, dict] = {}
    while not client_ids <= found.keys():
        frame = await tab.recv()
        if frame.get("client_id") in client_ids and frame["type"] in {"chat", "error"}:
            assert frame["client_id"] not in found, f"answered twice: {frame}"
            found[frame["client_id"]] = frame
    return found


async def still_alive(tab: Tab) -> None:
    await tab.send({"type": "ping"})
    await tab.recv_type("pong")


async def test_a_chat_flood_over_ten_tabs_is_cut_to_the_token_bucket(default_limits):
    ada, grace = await new_browser(), await new_browser()
    tabs = [await open_tab(ada) for _ in range(10)]
    watcher = await open_tab(grace)
    for tab in (*tabs, watcher):
        await tab.quiet()

    started = time.monotonic()
    sent: list[set[str]] = [set() for _ in tabs]
    for n in range(200):
        await tabs[n % 10].send({"type": "chat", "text": f"flood {n}", "client_id": f"f{n}"})
        sent[n % 10].add(f"f{n}")
        if n % 40 == 0:  # Grace chats in the middle of it
            await watcher.send({"type": "chat", "text": f"grace {n}", "client_id": f"g{n}"})
    replies: dict[str, dict] = {}
    for tab, mine in zip(tabs, sent, strict=True):
        replies |= await answers(tab, mine)
    elapsed = time.monotonic() - started

    accepted = {cid for cid, frame in replies.items() if frame["type"] == "chat"}
    refused = [frame for frame in replies.values() if frame["type"] == "error"]
    assert len(accepted) + len(refused) == 200
    assert all(f["code"] == "rate_limited" and f["retry_after"] > 0 for f in refused)
    assert BURST <= len(accepted) <= BURST + RATE * elapsed + 1

    # Grace was not limited, and saw every stored message, hers and Ada's.
    graces = {f"g{n}" for n in range(0, 200, 40)}
    seen: dict[str, int] = {}
    while not (graces | accepted) <= set(seen):
        frame = await watcher.recv()
        assert frame["type"] != "error", frame
        if frame["type"] == "chat":
            seen[frame["client_id"]] = frame["id"]
    stored = await database_sync_to_async(lambda: dict(Message.objects.values_list("client_id", "pk")))()
    assert stored == seen  # nothing stored that was refused, nothing shown that was not stored
    for tab in (*tabs, watcher):
        await still_alive(tab)
        await tab.close()


async def two_tabs_of_one_browser() -> tuple[Tab, Tab]:
    """Two open tabs of one new browser, quiet (their presence frames read)."""
    key = await new_browser()
    tabs = await open_tab(key), await open_tab(key)
    for tab in tabs:
        await tab.quiet()
    return tabs


async def test_a_rename_flood_is_throttled_by_its_own_bucket(default_limits):
    default_limits.CHAT_FRAME_RATE_BURST = 1000  # 51 frames from one socket: not the limit under test
    tab, other_tab = await two_tabs_of_one_browser()

    started = time.monotonic()
    for n in range(50):
        await tab.send({"type": "rename", "username": f"name {n}"})
    named: list[str] = []
    refused = []
    while len(named) + len(refused) < 50:
        frame = await tab.recv()
        if frame["type"] == "identity":
            named.append(frame["username"])
        elif frame["type"] == "error":
            refused.append(frame)
    elapsed = time.monotonic() - started

    assert all(f["code"] == "rate_limited" and f["retry_after"] > 0 for f in refused)
    assert BURST <= len(named) <= BURST + RATE * elapsed + 1
    # One settings row, holding the last accepted name; the other tab shows it too.
    rows = await database_sync_to_async(lambda: list(VisitorSettings.objects.values_list("username", flat=True)))()
    last = max(named, key=lambda name: int(name.split()[1]))
    assert rows == [last]
    shown = None
    while shown != last:
        shown = (await other_tab.recv_type("identity"))["username"]
    # Chat has a bucket of its own: still allowed.
    await tab.send({"type": "chat", "text": "still here", "client_id": "c"})
    assert (await tab.recv_type("chat"))["username"] == last
    await tab.close()
    await other_tab.close()


async def refused_with_4429(tab: Tab) -> bool:
    """Open ``tab``; True if it was closed for too many connections, False if welcomed."""
    connected, _ = await tab.comm.connect(timeout=TIMEOUT)
    assert connected  # accepted, then closed: the client waits and retries
    first = await tab.comm.receive_output(timeout=TIMEOUT)
    if first["type"] == "websocket.close":
        assert first == {"type": "websocket.close", "code": 4429, "reason": "too many connections"}
        return True
    assert first["type"] == "websocket.send"
    return False


def tabs_of(people: list[dict]) -> dict[str, int]:
    return {user["author_id"]: user["tabs"] for user in people}


async def test_sockets_over_the_cap_are_closed_with_4429_others_unaffected(settings):
    settings.CHAT_MAX_SOCKETS_PER_IDENTITY = 3
    ada, grace = await new_browser(), await new_browser()
    mine = [Tab(ada, room) for room in ("lobby", "other", "lobby")]  # the cap spans rooms
    ada_id = (await mine[0].open())["author_id"]
    for tab in mine[1:]:
        await tab.open()
    grace_tab = Tab(grace)
    await grace_tab.open()
    assert tabs_of((await grace_tab.recv_type("presence"))["users"])[ada_id] == 2
    await grace_tab.quiet()

    extra = Tab(ada)
    assert await refused_with_4429(extra)
    await extra.close()
    await grace_tab.watch(1.5)  # the refused socket never showed up in the room
    assert tabs_of(grace_tab.people.users)[ada_id] == 2

    await mine[0].close()
    await grace_tab.until_people(lambda people: tabs_of(people)[ada_id] == 1)
    again = Tab(ada)
    assert not await refused_with_4429(again)  # the closed socket's place is free
    for tab in (again, *mine[1:], grace_tab):
        await still_alive(tab)
        await tab.close()


async def test_a_hundred_sockets_from_one_identity_stop_at_the_default_cap(settings):
    assert settings.CHAT_MAX_SOCKETS_PER_IDENTITY == 20
    ada, grace = await new_browser(), await new_browser()
    grace_before = await open_tab(grace)
    tabs = [Tab(ada) for _ in range(100)]
    refused = [await refused_with_4429(tab) for tab in tabs]
    assert refused.count(False) == 20 and refused.count(True) == 80
    # Grace is not limited by Ada's sockets, and the room shows Ada's 20 tabs.
    grace_after = Tab(grace)
    welcome = await grace_after.open()
    people = tabs_of((await grace_after.recv_type("presence"))["users"])
    assert people.pop(welcome["author_id"]) == 2
    assert list(people.values()) == [20]
    for tab in (grace_before, grace_after):
        await still_alive(tab)
    for tab in (*tabs, grace_before, grace_after):
        await tab.close()


# --- Reads and frames -----------------------------------------------------------------


async def test_reads_are_limited_per_identity_across_tabs_at_the_defaults(settings):
    assert (settings.CHAT_READ_RATE_BURST, settings.CHAT_READ_RATE_PER_SECOND) == (10, 2.0)
    ada, grace = await new_browser(), await new_browser()
    tabs = [await open_tab(ada), await open_tab(ada, room="other")]
    watcher = await open_tab(grace)
    for tab in (*tabs, watcher):
        await tab.quiet()

    started = time.monotonic()
    for n in range(40):  # 20 a tab: within each socket's frame budget
        kind = {"type": "history"} if n % 2 else {"type": "resume", "after": 0}
        await tabs[n % 2].send({**kind, "client_id": f"r{n}"})
    answered, refused = 0, []
    for tab in tabs:
        for _ in range(20):
            frame = await tab.recv()
            while frame["type"] in ("presence", "presence_diff"):
                frame = await tab.recv()
            if frame["type"] == "history":
                answered += 1
            else:
                refused.append(frame)
    elapsed = time.monotonic() - started

    assert 10 <= answered <= 10 + 2.0 * elapsed + 1
    assert len(refused) == 40 - answered
    assert all(f["type"] == "error" and f["code"] == "rate_limited" and f["retry_after"] > 0 for f in refused)
    assert all(f["client_id"].startswith("r") for f in refused)
    for tab in tabs:
        assert await tab.only_presence()  # a refused read does nothing else
    # Grace reads as she likes; Ada's sockets are open and chat still works.
    await watcher.send({"type": "history"})
    assert (await watcher.recv_type("history"))["has_more"] is False
    await tabs[0].send({"type": "chat", "text": "still here", "client_id": "c"})
    assert (await tabs[0].recv_type("chat"))["client_id"] == "c"
    for tab in (*tabs, watcher):
        await still_alive(tab)
        await tab.close()


async def test_a_refused_read_can_be_sent_again_after_retry_after(settings):
    settings.CHAT_READ_RATE_BURST, settings.CHAT_READ_RATE_PER_SECOND = 1, 5.0
    tab = await open_tab(await new_browser())
    await tab.quiet()
    await tab.send({"type": "resume", "after": 0, "client_id": "first"})
    await tab.send({"type": "resume", "after": 0, "client_id": "second"})
    assert (await tab.recv())["type"] == "history"
    error = await tab.recv()
    assert (error["code"], error["client_id"]) == ("rate_limited", "second")
    assert 0 < error["retry_after"] <= 0.2
    await asyncio.sleep(error["retry_after"])
    await tab.send({"type": "resume", "after": 0, "client_id": "second"})
    assert (await tab.recv())["type"] == "history"
    await tab.close()


async def test_a_socket_gets_a_burst_of_30_frames_then_10_a_second(settings):
    assert (settings.CHAT_FRAME_RATE_BURST, settings.CHAT_FRAME_RATE_PER_SECOND) == (30, 10.0)
    tab, other_tab = await two_tabs_of_one_browser()

    started = time.monotonic()
    for _ in range(100):
        await tab.send({"type": "ping"})
    replies = [await tab.recv() for _ in range(100)]
    elapsed = time.monotonic() - started
    pongs = [f for f in replies if f["type"] == "pong"]
    refused = [f for f in replies if f["type"] == "error"]
    assert 30 <= len(pongs) <= 30 + 10.0 * elapsed + 1
    assert len(refused) == 100 - len(pongs)
    assert all(f["code"] == "rate_limited" and f["retry_after"] > 0 and "client_id" not in f for f in refused)
    # The budget is the socket's: another tab of the same browser is not limited.
    await still_alive(other_tab)
    for t in (tab, other_tab):
        await t.close()


async def test_a_socket_that_keeps_sending_past_its_budget_is_closed_with_1008(settings):
    assert settings.CHAT_FRAME_FLOOD_CLOSE == 100
    flooding, other_tab = await two_tabs_of_one_browser()
    for _ in range(200):  # as fast as it can, never waiting its retry_after
        await flooding.send({"type": "ping"})
    kinds: list[str] = []
    while True:
        message = await flooding.comm.receive_output(timeout=TIMEOUT)
        if message["type"] == "websocket.close":
            break
        kinds.append(json.loads(message["text"])["type"])
    assert message["code"] == 1008
    # The burst answered, then the 100 refusals in a row a flood gets before the close
    # (a token refilled meanwhile may answer one more ping and start the count again).
    assert kinds[:30] == ["pong"] * 30 and kinds[-100:] == ["error"] * 100
    await still_alive(other_tab)  # the browser's other socket is not touched
    await other_tab.close()


async def test_a_chat_over_the_frame_budget_is_refused_with_its_client_id_and_not_stored(settings):
    settings.CHAT_FRAME_RATE_BURST, settings.CHAT_FRAME_RATE_PER_SECOND = 5, 0.01
    settings.CHAT_RATE_BURST = 100
    tab = await open_tab(await new_browser())
    await tab.quiet()
    for n in range(8):
        await tab.send({"type": "chat", "text": f"m{n}", "client_id": f"c{n}"})
    replies = await answers(tab, {f"c{n}" for n in range(8)})
    assert {cid for cid, f in replies.items() if f["type"] == "chat"} == {f"c{n}" for n in range(5)}
    for n in range(5, 8):
        assert replies[f"c{n}"]["code"] == "rate_limited" and replies[f"c{n}"]["retry_after"] > 0
    # Bad frames count too, and over the budget are answered rate_limited, not bad_json.
    await tab.send("not json")
    assert (await tab.recv())["code"] == "rate_limited"
    stored = await database_sync_to_async(lambda: sorted(Message.objects.values_list("client_id", flat=True)))()
    assert stored == [f"c{n}" for n in range(5)]
    await tab.close()
