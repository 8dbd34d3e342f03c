"""The chat as people use it: a real Chromium on the real page, against real daphne.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, or ``CHROMIUM``).
The server is started as ``make run`` starts it, on SQLite and the in-memory
layer locally and on PostgreSQL and Redis in CI. Each browser context is one
browser (its own cookies); each page is one tab. Screenshots of the main
states land in ``artifacts/screenshots/``.
"""

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import CHROMIUM
from tests.servers import ROOT, Server, manage, recv

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# Flags for a root user on a machine with no GPU and a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

expect.set_options(timeout=5_000)


@pytest.fixture
def chromium() -> Iterator[Browser]:
    # Per test, not per module: while Playwright's sync API is active its event
    # loop counts as running in this thread, and Django refuses database work
    # then (the test database's setup and flush run outside this fixture).
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_browser(chromium: Browser, server: Server) -> Iterator[Callable[..., BrowserContext]]:
    """Open a browser of its own (cookies, storage) against ``server``."""
    contexts: list[BrowserContext] = []

    def open_browser(**options) -> BrowserContext:
        context = chromium.new_context(base_url=server.base, **options)
        contexts.append(context)
        return context

    yield open_browser
    for context in contexts:
        context.close()


def open_room(context: BrowserContext, room: str = "lobby") -> Page:
    page = context.new_page()
    page.goto(f"/chat/{room}/")
    expect(status(page)).to_have_text("connected")
    return page


def status(page: Page):
    return page.get_by_test_id("connection-status")


def name_field(page: Page):
    return page.get_by_test_id("username-input")


def rename(page: Page, name: str) -> None:
    name_field(page).fill(name)
    expect(page.locator("#name-state")).to_have_text("saved")


def say(page: Page, text: str) -> None:
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("send-button").click()


def shown(page: Page) -> list[tuple[str, str]]:
    """(author, text) of every stored message on the page, top to bottom."""
    return [
        (item.get_by_test_id("message-author").inner_text(), item.get_by_test_id("message-text").text_content())
        for item in page.get_by_test_id("message").all()
    ]


def shown_ids(page: Page) -> list[int]:
    return [int(item.get_attribute("data-message-id")) for item in page.get_by_test_id("message").all()]


def people(page: Page):
    return page.get_by_test_id("presence-user")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")


def post_messages(server_env: dict[str, str], room: str, texts: list[str], author: str = "Archivist") -> None:
    """Store messages from someone who is not in any browser here, through the service."""
    code = (
        "import json, uuid; from chat import services; from chat.identity import Identity, author_id_for\n"
        "sid = uuid.uuid4()\n"
        f"who = Identity(session_id=sid, author_id=author_id_for(sid), username={author!r}, verified=False)\n"
        f"for text in json.loads({json.dumps(texts)!r}):\n"
        f"    services.post_message(identity=who, room={room!r}, text=text, client_id=None)\n"
    )
    manage(server_env, "shell", "-c", code)


# 1. First render -------------------------------------------------------------------


def test_first_render_without_javascript_shows_name_and_messages(new_browser):
    ada = new_browser()
    page = open_room(ada)
    rename(page, "Ada")
    say(page, "first words")
    expect(page.get_by_test_id("message-text")).to_have_text(["first words"])

    # The same browser with JavaScript off: only the server's render is left.
    static = new_browser(storage_state=ada.storage_state(), java_script_enabled=False).new_page()
    static.goto("/chat/lobby/")
    expect(name_field(static)).to_have_value("Ada")
    assert shown(static) == [("Ada", "first words")]
    expect(status(static)).not_to_have_text("connected")
    screenshot(static, "first-render-no-js")


# 2. Two tabs of one browser --------------------------------------------------------


def test_a_name_typed_in_one_tab_shows_in_the_other_within_a_second(new_browser):
    browser = new_browser()
    one, two = open_room(browser), open_room(browser)
    expect(people(one)).to_have_count(1)
    expect(people(one)).to_contain_text(["2 tabs"])
    expect(people(two)).to_contain_text(["2 tabs"])

    name_field(one).select_text()
    name_field(one).press_sequentially("Ada Lovelace", delay=30)
    expect(name_field(two)).to_have_value("Ada Lovelace", timeout=1_000)
    expect(people(two)).to_have_text(["Ada Lovelace2 tabs"])
    expect(one.locator("#name-state")).to_have_text("saved")
    screenshot(two, "two-tabs-renamed")


def test_a_name_saved_with_enter_is_on_the_message_sent_right_after(new_browser):
    page = open_room(new_browser())
    name_field(page).fill("Ada")
    name_field(page).press("Enter")
    say(page, "right after the rename")  # well within the typing debounce
    expect(page.get_by_test_id("message")).to_have_count(1)
    assert shown(page) == [("Ada", "right after the rename")]
    expect(page.locator("#name-state")).to_have_text("saved")

    page.reload()
    expect(status(page)).to_have_text("connected")
    expect(name_field(page)).to_have_value("Ada")
    assert shown(page) == [("Ada", "right after the rename")]


def test_a_name_is_saved_when_the_field_loses_focus(new_browser):
    page = open_room(new_browser())
    name_field(page).fill("Grace")
    name_field(page).blur()
    page.reload()  # at once: the typing debounce would not have fired yet
    expect(name_field(page)).to_have_value("Grace")


# 3. Two browsers -------------------------------------------------------------------


def test_two_browsers_chat_both_ways_and_see_each_other_come_and_go(new_browser):
    ada, grace = open_room(new_browser()), open_room(new_browser())
    rename(ada, "Ada")
    rename(grace, "Grace")
    for page in (ada, grace):
        expect(people(page)).to_have_text(["Ada", "Grace"])  # sorted by name

    say(ada, "Hello from Ada")
    expect(grace.get_by_test_id("message")).to_have_count(1)
    say(grace, "Hi Ada, Grace here")
    for page in (ada, grace):
        expect(page.get_by_test_id("message")).to_have_count(2)
        assert shown(page) == [("Ada", "Hello from Ada"), ("Grace", "Hi Ada, Grace here")]
    # Own messages look different from others'.
    assert ada.locator(".message.own [data-testid=message-text]").all_text_contents() == ["Hello from Ada"]
    assert grace.locator(".message.own [data-testid=message-text]").all_text_contents() == ["Hi Ada, Grace here"]
    screenshot(ada, "two-browsers")

    grace.close()
    expect(people(ada)).to_have_text(["Ada"])


class Crowd:
    """Sockets of many other browsers, held open from a thread of their own.

    Playwright's sync API owns this thread's event loop; the crowd's
    websockets run on another.
    """

    def __init__(self, server: Server, size: int, room: str = "lobby") -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        sessions = [server.browser(room) for _ in range(size)]
        self.sockets: list[Any] = self.run(self._open(server, sessions, room))

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(60)

    @staticmethod
    async def _open(server: Server, sessions: list[str], room: str) -> list[Any]:
        sockets = []
        for session in sessions:
            ws = await server.ws(session, room)
            await recv(ws, "welcome")
            sockets.append(ws)
        return sockets

    def leave(self, count: int) -> None:
        """Close the first ``count`` sockets (the first people to come: the listed ones)."""
        leaving, self.sockets = self.sockets[:count], self.sockets[count:]

        async def close_all() -> None:
            await asyncio.gather(*(ws.close() for ws in leaving))

        self.run(close_all())

    def close(self) -> None:
        self.leave(len(self.sockets))
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_room_bigger_than_the_list_shows_the_count_and_how_many_more(new_browser, server):
    crowd = Crowd(server, 105)
    try:
        page = open_room(new_browser())
        # 106 people: the first 100 to come are listed, the rest are counted.
        expect(page.get_by_test_id("presence-count")).to_have_text("106")
        expect(people(page)).to_have_count(100)
        expect(page.get_by_test_id("presence-more")).to_have_text("and 6 more")
        screenshot(page, "big-room")
        crowd.leave(10)  # ten listed people go: the list takes the next ones in
        expect(page.get_by_test_id("presence-count")).to_have_text("96")
        expect(people(page)).to_have_count(96)
        expect(page.get_by_test_id("presence-more")).to_be_hidden()
        expect(page.locator("[data-testid=presence-user].me")).to_have_count(1)
    finally:
        crowd.close()


# 4. Reload, browser restart, cleared cookies --------------------------------------


def test_identity_survives_reload_and_restart_and_ends_with_the_cookies(new_browser):
    browser = new_browser()
    page = open_room(browser)
    guest = name_field(page).input_value()
    assert guest.startswith("guest-")
    rename(page, "Ada")
    say(page, "remember me")
    expect(page.get_by_test_id("message")).to_have_count(1)

    page.reload()
    expect(name_field(page)).to_have_value("Ada")
    assert shown(page) == [("Ada", "remember me")]
    expect(status(page)).to_have_text("connected")

    # A browser restart: a new browser from the saved cookies.
    saved = browser.storage_state()
    browser.close()
    restarted = open_room(new_browser(storage_state=saved))
    expect(name_field(restarted)).to_have_value("Ada")
    expect(restarted.locator(".message.own")).to_have_count(1)

    # Cleared cookies: a new guest, and the old messages are someone else's.
    restarted.context.clear_cookies()
    restarted.reload()
    expect(status(restarted)).to_have_text("connected")
    new_name = name_field(restarted).input_value()
    assert new_name.startswith("guest-") and new_name != guest
    assert shown(restarted) == [("Ada", "remember me")]
    expect(restarted.locator(".message.own")).to_have_count(0)


# 5. Server restart -----------------------------------------------------------------


def test_server_restart_reconnects_and_delivers_everything_once(new_browser, server, server_env, tmp_path):
    ada, grace = open_room(new_browser()), open_room(new_browser())
    rename(ada, "Ada")
    rename(grace, "Grace")
    say(grace, "before")
    expect(ada.get_by_test_id("message")).to_have_count(1)

    server.stop()
    for page in (ada, grace):
        expect(status(page)).to_have_text("reconnecting")
    screenshot(ada, "reconnecting")
    say(ada, "typed while offline")
    expect(ada.get_by_test_id("message-pending")).to_have_count(1)
    post_messages(server_env, "lobby", ["missed 1", "missed 2", "missed 3"])

    restarted = Server(server_env, tmp_path / "restarted.log", port=server.port)
    try:
        for page in (ada, grace):
            expect(status(page)).to_have_text("connected", timeout=30_000)
        say(grace, "after")
        expected = ["before", "missed 1", "missed 2", "missed 3", "typed while offline", "after"]
        for page in (ada, grace):
            expect(page.get_by_test_id("message")).to_have_count(6)
            texts = [text for _, text in shown(page)]
            # Each exactly once; ids ascend down the page; the missed ones in order.
            assert sorted(texts) == sorted(expected)
            assert shown_ids(page) == sorted(set(shown_ids(page)))
            assert [t for t in texts if t.startswith("missed")] == ["missed 1", "missed 2", "missed 3"]
        expect(ada.get_by_test_id("message-pending")).to_have_count(0)
        # What is stored, as a reload shows it: the offline message once.
        ada.reload()
        expect(ada.get_by_test_id("message")).to_have_count(6)
        assert [t for _, t in shown(ada)].count("typed while offline") == 1
    finally:
        restarted.stop()


# 6. Hostile text -------------------------------------------------------------------

HOSTILE_NAME = "<img src=x onerror=pwn()>"
HOSTILE_TEXT = (
    '<script>pwn()</script><img src=x onerror="pwn()"><a href="javascript:pwn()">click</a>'
    " \u202eevil reversed\u202c <b>bold?</b>"
)


def test_html_script_and_bidi_show_as_plain_text(new_browser):
    browser = new_browser()
    browser.add_init_script("window.pwn = () => { document.title = 'PWNED'; window.pwned = true; };")
    page = open_room(browser)
    rename(page, HOSTILE_NAME)
    say(page, HOSTILE_TEXT)
    expect(page.get_by_test_id("message")).to_have_count(1)

    def check(page: Page) -> None:
        assert shown(page) == [(HOSTILE_NAME, HOSTILE_TEXT)]
        expect(people(page)).to_have_text([HOSTILE_NAME])
        assert page.locator("main img, main script, main a, main b").count() == 0
        assert page.evaluate("window.pwned") is None
        # A bidi override cannot spill out of the text into the rest of the line.
        text = page.get_by_test_id("message-text").first
        assert text.evaluate("el => getComputedStyle(el).unicodeBidi") == "isolate"

    check(page)  # rendered by the client
    page.reload()
    expect(status(page)).to_have_text("connected")
    check(page)  # rendered by the server
    screenshot(page, "hostile-text")

    # A bidi override in a name is refused, and the name stays as it was.
    name_field(page).fill("\u202eeve")
    expect(page.locator("#name-state")).to_contain_text("name")
    page.reload()
    expect(name_field(page)).to_have_value(HOSTILE_NAME)


def test_a_tab_over_the_socket_cap_says_so_and_waits_before_retrying(chromium, server_env, tmp_path):
    capped = Server({**server_env, "CHAT_MAX_SOCKETS_PER_IDENTITY": "1"}, tmp_path / "capped.log")
    try:
        browser = chromium.new_context(base_url=capped.base)
        first = open_room(browser)
        second = browser.new_page()
        sockets = []
        second.on("websocket", lambda socket: sockets.append(socket))
        second.goto("/chat/lobby/")
        expect(status(second)).to_have_text("too many tabs open")
        # Not the usual quick reconnects: one attempt, then a long wait.
        second.wait_for_timeout(3_000)
        assert len(sockets) == 1
        expect(status(second)).to_have_text("too many tabs open")
        expect(status(first)).to_have_text("connected")
        browser.close()
    finally:
        capped.stop()


# 7. Staff ----------------------------------------------------------------------------


def signed_in_staff(new_browser: Callable[..., BrowserContext], server_env: dict[str, str], path: str) -> Page:
    """A staff member's browser, signed in to the admin at ``path``."""
    manage(
        {**server_env, "DJANGO_SUPERUSER_PASSWORD": "staff-pass-123"},
        "createsuperuser",
        "--noinput",
        "--username",
        "staff",
        "--email",
        "staff@example.com",
    )
    staff = new_browser(viewport={"width": 1280, "height": 720}).new_page()
    staff.goto(f"/admin/login/?next={path}")
    staff.fill("#id_username", "staff")
    staff.fill("#id_password", "staff-pass-123")
    staff.click("input[type=submit]")
    return staff


def test_a_name_edited_in_the_admin_changes_live_in_the_visitors_tab(new_browser, server_env):
    visitor = open_room(new_browser())
    rename(visitor, "Vera Visitor")

    staff = signed_in_staff(new_browser, server_env, "/admin/chat/visitorsettings/")
    staff.fill("#searchbar", "Vera Visitor")
    staff.keyboard.press("Enter")
    staff.locator("#result_list a", has_text="Vera Visitor").click()
    staff.fill("#id_username", "Vera (edited by staff)")
    staff.click("input[name=_save]")
    expect(staff.locator(".messagelist")).to_contain_text("changed successfully")

    expect(name_field(visitor)).to_have_value("Vera (edited by staff)")
    expect(people(visitor)).to_have_text(["Vera (edited by staff)"])


def test_a_message_deleted_in_the_admin_disappears_from_two_tabs_and_stays_gone(new_browser, server_env):
    ada, bo = new_browser(), new_browser()
    writer, reader, second_tab = open_room(ada), open_room(bo), open_room(bo)
    rename(writer, "Spammer")
    for text in ("buy cheap pills", "a fair question"):
        say(writer, text)
    for page in (writer, reader, second_tab):
        expect(page.get_by_test_id("message-text")).to_have_text(["buy cheap pills", "a fair question"])

    staff = signed_in_staff(new_browser, server_env, "/admin/chat/message/")
    staff.fill("#searchbar", "pills")
    staff.keyboard.press("Enter")
    staff.locator("#result_list input.action-select").first.check()
    staff.select_option("select[name=action]", "delete_selected")
    screenshot(staff, "admin-delete-selected")
    staff.click("button[name=index]")
    staff.click("input[type=submit]")  # "Yes, I'm sure"
    expect(staff.locator(".messagelist")).to_contain_text("Deleted 1 message(s) (rooms: lobby).")

    for page in (writer, reader, second_tab):
        expect(page.get_by_test_id("message-text")).to_have_text(["a fair question"], timeout=1_000)
    reader.reload()
    expect(reader.get_by_test_id("message-text")).to_have_text(["a fair question"])
    staff.goto("/admin/chat/message/?deleted=yes")
    expect(staff.locator("#result_list tbody tr")).to_have_count(1)
    screenshot(staff, "admin-deleted-messages")


def test_a_blocked_browser_is_told_so_and_does_not_reconnect(new_browser, server_env):
    troll_browser = new_browser()
    troll = open_room(troll_browser)
    rename(troll, "Troll")
    bystander = open_room(new_browser())
    sockets: list = []
    troll.on("websocket", lambda socket: sockets.append(socket))

    staff = signed_in_staff(new_browser, server_env, "/admin/chat/visitorsettings/")
    staff.locator("#result_list tr", has_text="Troll").locator("input.action-select").check()
    staff.select_option("select[name=action]", "block")
    screenshot(staff, "admin-block")
    staff.click("button[name=index]")
    expect(staff.locator(".messagelist")).to_contain_text("Blocked 1 browser(s)")

    expect(status(troll)).to_have_text("blocked", timeout=1_000)
    expect(troll.locator(".notice")).to_have_text(["A moderator has blocked this browser: you cannot chat here."])
    expect(troll.get_by_test_id("send-button")).to_be_disabled()
    troll.wait_for_timeout(3_000)
    assert sockets == []  # no reconnect loop
    expect(status(troll)).to_have_text("blocked")
    expect(status(bystander)).to_have_text("connected")
    # A reload opens one socket, which is closed again: still blocked, still no loop.
    troll.reload()
    expect(status(troll)).to_have_text("blocked")
    troll.wait_for_timeout(2_000)
    assert len(sockets) == 1
    screenshot(troll, "blocked-page")

    staff.goto("/admin/chat/visitorsettings/?blocked=yes")
    staff.locator("#result_list tr", has_text="Troll").locator("input.action-select").check()
    staff.select_option("select[name=action]", "unblock")
    staff.click("button[name=index]")
    troll.reload()
    expect(status(troll)).to_have_text("connected")


# 8. Long history ---------------------------------------------------------------------


def test_scrolling_up_loads_older_messages_without_gaps_or_duplicates(new_browser, server_env):
    texts = [f"m{n:03}" for n in range(1, 131)]
    post_messages(server_env, "archive", texts)
    page = open_room(new_browser(), "archive")
    expect(page.get_by_test_id("message")).to_have_count(50)
    assert [t for _, t in shown(page)] == texts[-50:]

    messages = page.get_by_test_id("messages")
    for count in (100, 130):
        messages.evaluate("el => { el.scrollTop = 0; }")
        expect(page.get_by_test_id("message")).to_have_count(count)
    assert [t for _, t in shown(page)] == texts
    ids = shown_ids(page)
    assert ids == sorted(set(ids))
    expect(page.locator("#older")).to_be_hidden()


@pytest.fixture
def one_read_a_second(server_env: dict[str, str]) -> None:
    server_env |= {"CHAT_READ_RATE_BURST": "1", "CHAT_READ_RATE_PER_SECOND": "1"}


def test_a_read_refused_by_the_rate_limit_is_asked_again_after_the_wait(one_read_a_second, new_browser, server_env):
    texts = [f"m{n:03}" for n in range(1, 131)]
    post_messages(server_env, "archive", texts)
    page = new_browser().new_page()
    refused: list[str] = []
    on_frame = lambda text: refused.append(text) if "rate_limited" in text else None  # noqa: E731
    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    page.goto("/chat/archive/")
    expect(status(page)).to_have_text("connected")
    expect(page.get_by_test_id("message")).to_have_count(50)

    messages = page.get_by_test_id("messages")
    for count in (100, 130):  # the second page comes at once: over the limit
        messages.evaluate("el => { el.scrollTop = 0; }")
        expect(page.get_by_test_id("message")).to_have_count(count)
    assert [t for _, t in shown(page)] == texts
    assert refused  # it was refused, and asked again
    expect(page.locator("#older")).to_be_hidden()


# Accessible --------------------------------------------------------------------------


def test_the_message_list_is_a_live_log_and_a_refused_message_says_why_in_words(new_browser):
    page = open_room(new_browser())
    # A screen reader announces what is added to the conversation.
    expect(page.get_by_role("log")).to_have_attribute("data-testid", "messages")

    say(page, "pasted from a terminal \u0007")  # a control character: the server refuses it
    refused = page.get_by_test_id("message-pending")
    expect(refused).to_contain_text(re.compile(r"not sent: .*control character"))
    expect(refused.get_by_text("not sent:")).to_be_visible()
    expect(page.get_by_role("log").get_by_text("not sent:")).to_have_count(1)
    screenshot(page, "message-not-sent")


# Pleasant on a phone -------------------------------------------------------------------


def test_the_page_fits_a_phone_screen(new_browser):
    phone = new_browser(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True)
    page = open_room(phone)
    say(page, "a long line " * 30)
    expect(page.get_by_test_id("message")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for testid in ("username-input", "message-input", "send-button", "connection-status"):
        expect(page.get_by_test_id(testid)).to_be_in_viewport()
    screenshot(page, "phone")


# After a deploy, and a session worth keeping ------------------------------------------

YEAR = 365 * 24 * 3600


def test_a_browser_whose_socket_opened_keeps_its_session(new_browser):
    context = new_browser()
    page = context.new_page()
    with page.expect_response(lambda response: "/socket-opened" in response.url) as answer:
        page.goto("/chat/lobby/")
    assert answer.value.json()["kept"] is True
    expect(status(page)).to_have_text("connected")
    (cookie,) = [c for c in context.cookies() if c["name"] == "sessionid"]
    assert cookie["expires"] - time.time() > YEAR  # 400 days, not the page-only day
    page.reload()  # a page view of a kept session: chat.js asks no more
    expect(status(page)).to_have_text("connected")
    assert page.evaluate("JSON.parse(document.getElementById('chat-config').textContent).session_kept") is True


def test_a_tab_whose_script_a_deploy_replaced_reloads(new_browser):
    """The server names another chat.js than the one running (as after a deploy): the idle tab reloads."""
    context = new_browser()
    page = context.new_page()
    answers = []

    def deployed(route) -> None:
        if answers:  # once: the reloaded page runs "the new script"
            route.continue_()
            return
        answers.append(route.request.url)
        route.fulfill(json={"script": "/static/chat/chat.0123456789ab.js", "kept": True})

    page.route("**/socket-opened*", deployed)
    loads = []
    page.on("load", lambda _: loads.append(1))
    page.goto("/chat/lobby/")
    expect(status(page)).to_have_text("connected")
    page.wait_for_function("document.readyState === 'complete'")
    deadline = time.monotonic() + 10
    while len(loads) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(loads) == 2, "reloaded once, then ran on"
    expect(status(page)).to_have_text("connected")
