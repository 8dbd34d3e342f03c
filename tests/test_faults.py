"""Faults under a running chat: Redis restarted, PostgreSQL stopped, a server killed.

Real daphne processes serve real clients (``tests.clients.ChatClient``, which
reconnects and resumes like the browser client) while a Redis or PostgreSQL
of the test's own is stopped and started, or a server is killed with
SIGKILL. Every test ends by checking what a user would: every stored message
reached every client exactly once, nothing was dropped silently, and the
servers kept running.
"""

import asyncio
import json
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.clients import ChatClient
from tests.conftest import IN_CI
from tests.private_services import PrivatePostgres, PrivateRedis, missing
from tests.servers import Server, manage, recv

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

# Senders here are test clients, not people: let them send as fast as the
# test needs (the rate limit has tests of its own).
FAST = {
    "CHAT_RATE_BURST": "10000",
    "CHAT_RATE_PER_SECOND": "10000",
    "CHAT_FRAME_RATE_BURST": "10000",
    "CHAT_FRAME_RATE_PER_SECOND": "10000",
}


@pytest.fixture(autouse=True)
def _private_services_available() -> None:
    reason = missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true and this test {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    started = PrivateRedis(tmp_path / "redis.log")
    yield started
    started.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    started = PrivatePostgres()
    yield started
    started.destroy()


def health(server: Server) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{server.base}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def health_becomes(server: Server, status: int, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await asyncio.to_thread(health, server)
        if code == status:
            return body
        assert time.monotonic() < deadline, f"/healthz stayed {code} {body}"
        await asyncio.sleep(0.2)


def stored_ids(database_url: str, room: str = "lobby") -> list[int]:
    """The ids of a room's stored messages, read from the servers' database (PostgreSQL or SQLite)."""
    query = "SELECT id FROM chat_message WHERE room = %s ORDER BY id"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute(query.replace("%s", "?"), [room])]
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute(query, [room])]


def assert_each_got_everything_once(clients: list[ChatClient], stored: list[int], since: int) -> None:
    """Each client shows every stored message once, none missing, live ones in id order."""
    expected = [message_id for message_id in stored if message_id > since]
    for client in clients:
        shown = [message_id for message_id in client.shown if message_id > since]
        assert sorted(shown) == expected, f"missing {sorted(set(expected) - set(shown))}"
        live = [message_id for message_id in client.live if message_id > since]
        assert live == sorted(live), "live messages out of order"


async def chatter(clients: list[ChatClient], stop: asyncio.Event, every: float = 0.1) -> int:
    """Each client in turn says something every ``every`` seconds until ``stop``; return how many."""
    said = 0
    while not stop.is_set():
        await clients[said % len(clients)].say(f"message {said}")
        said += 1
        await asyncio.sleep(every)
    return said


async def test_redis_restarted_mid_conversation_loses_nothing(server_env, tmp_path, private_redis):
    env = {**server_env, **FAST, "REDIS_URL": private_redis.url}
    one, two = Server(env, tmp_path / "one.log"), Server(env, tmp_path / "two.log")
    clients = [ChatClient([server], server.browser()) for server in (one, two, one, two)]
    try:
        for client in clients:
            client.start()
        await eventually(lambda: all(c.connected.is_set() for c in clients), 15, "every client connected")
        since = max(c.last_id for c in clients)
        stop = asyncio.Event()
        talking = asyncio.create_task(chatter(clients, stop))
        await asyncio.sleep(1.5)

        private_redis.stop()
        body = await health_becomes(one, 503)
        assert body["channel_layer"] == "error" and body["database"] == "ok"
        stop.set()
        said = await talking
        # Only the clients of server one speak now: stored, and heard at once
        # by server one's sockets, while nothing reaches server two.
        stop = asyncio.Event()
        talking = asyncio.create_task(chatter(clients[::2], stop))
        await asyncio.sleep(2)
        stop.set()
        said += await talking
        private_redis.start()  # empty: Redis keeps nothing on disk here
        await health_becomes(one, 200)
        await health_becomes(two, 200)
        # Nobody speaks after the outage, so nothing reveals a gap: the hubs
        # must catch up by themselves once the layer delivers again.
        await eventually(lambda: all(not c.pending for c in clients), 20, "every message acknowledged")
        await eventually(
            lambda: all(len([i for i in c.shown if i > since]) == said for c in clients),
            20,
            "every client has every message",
        )
        # And the conversation goes on.
        for client in clients:
            await client.say("after the outage")
        said += len(clients)
        await eventually(
            lambda: all(len([i for i in c.shown if i > since]) == said for c in clients),
            20,
            "every client has the messages sent after the outage",
        )
        stored = await asyncio.to_thread(stored_ids, env["DATABASE_URL"])
        # Nothing dropped silently: every message said was stored (once).
        assert len([i for i in stored if i > since]) == said
        assert_each_got_everything_once(clients, stored, since)
        assert one.process.poll() is None and two.process.poll() is None
        # Presence lives in Redis, which came back empty: the tabs put
        # themselves back, so a newcomer sees all four people.
        newcomer = ChatClient([one], one.browser())
        newcomer.start()
        await eventually(lambda: len(newcomer.people.users) == 5, 15, "presence restored after the restart")
        await newcomer.stop()
    finally:
        for client in clients:
            await client.stop()
        one.stop()
        two.stop()


async def test_postgres_stopped_and_started_answers_unavailable_then_works(server_env, tmp_path, private_postgres):
    env = {**server_env, **FAST, "DATABASE_URL": private_postgres.url}
    await asyncio.to_thread(manage, env, "migrate", "-v0")
    server = Server(env, tmp_path / "daphne.log")
    try:
        async with server.ws(server.browser()) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome"

            await asyncio.to_thread(private_postgres.stop)
            await ws.send(json.dumps({"type": "chat", "text": "while the database is down", "client_id": "down-1"}))
            frame = await recv(ws, "error", timeout=30)
            assert (frame["code"], frame["client_id"]) == ("unavailable", "down-1")
            await ws.send(json.dumps({"type": "ping"}))
            await recv(ws, "pong")  # the socket stays usable
            body = await health_becomes(server, 503)
            assert body["database"] == "error"

            await asyncio.to_thread(private_postgres.start)
            await health_becomes(server, 200, timeout=30)
            # The browser re-sends with the same client_id until it is stored.
            deadline = time.monotonic() + 30
            while True:
                await ws.send(json.dumps({"type": "chat", "text": "while the database is down", "client_id": "down-1"}))
                frame = await recv(ws, ("chat", "error"))
                if frame["type"] == "chat":
                    break
                assert frame["code"] == "unavailable" and time.monotonic() < deadline, frame
                await asyncio.sleep(0.5)
            assert frame["client_id"] == "down-1"
            assert await asyncio.to_thread(stored_ids, private_postgres.url) == [frame["id"]]
        assert server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.redis
async def test_a_killed_server_s_clients_resume_on_another_with_no_gap(server_env, tmp_path):
    ttl = 3
    env = {**server_env, **FAST, "CHAT_PRESENCE_TTL": str(ttl)}
    doomed, survivor = Server(env, tmp_path / "doomed.log"), Server(env, tmp_path / "survivor.log")
    movers = [ChatClient([doomed, survivor], doomed.browser()) for _ in range(3)]
    talker = ChatClient([survivor], survivor.browser())
    gone = ChatClient([doomed], doomed.browser())  # a tab whose browser dies with the server
    everyone = [*movers, talker, gone]
    try:
        for client in everyone:
            client.start()
        await eventually(lambda: all(c.connected.is_set() for c in everyone), 15, "every client connected")
        await eventually(lambda: len(talker.people.users) == 5, 10, "five present")
        since = max(c.last_id for c in everyone)
        stop = asyncio.Event()
        talking = asyncio.create_task(chatter([talker, *movers], stop))
        await asyncio.sleep(1)

        os.kill(doomed.process.pid, signal.SIGKILL)
        await gone.stop()
        killed_at = time.monotonic()
        await eventually(lambda: all(c.welcomes >= 2 for c in movers), 15, "the movers reconnected")
        await asyncio.sleep(2)
        stop.set()
        said = await talking

        await eventually(lambda: all(not c.pending for c in [talker, *movers]), 20, "every message acknowledged")
        stored = await asyncio.to_thread(stored_ids, env["DATABASE_URL"])
        assert len([i for i in stored if i > since]) == said
        await eventually(
            lambda: all(len([i for i in c.shown if i > since]) == said for c in [talker, *movers]),
            20,
            "every client has every message",
        )
        assert_each_got_everything_once([talker, *movers], stored, since)

        # Presence forgets the dead process's tabs within the expiry: the
        # browser that died with it is gone, the movers have one tab each.
        await eventually(
            lambda: len(talker.people.users) == 4 and all(u["tabs"] == 1 for u in talker.people.users),
            ttl * 3,
            "the dead tabs expired from presence",
        )
        assert time.monotonic() - killed_at < ttl * 3
        assert survivor.process.poll() is None
    finally:
        for client in everyone:
            await client.stop()
        doomed.stop()
        survivor.stop()


async def test_a_long_catch_up_with_live_messages_meanwhile_skips_nothing(server_env, tmp_path):
    # Over 500 missed messages take two `resume` pages; live messages that
    # arrive between them are newer than the second page. A client that
    # asked for the second page after the newest id it had shown (the
    # browser client did) skipped the rest of the gap.
    env = {**server_env, **FAST}
    server = Server(env, tmp_path / "daphne.log")
    away = ChatClient([server], server.browser())
    talker = ChatClient([server], server.browser())
    try:
        for client in (away, talker):
            client.start()
        await eventually(lambda: away.connected.is_set() and talker.connected.is_set(), 15, "both connected")
        since = away.last_id
        await away.stop()  # the tab is closed for a while
        away.connected.clear()
        for n in range(520):
            await talker.say(f"while away {n}")
        await eventually(lambda: not talker.pending, 30, "the missed messages stored")
        stop = asyncio.Event()
        chatting = asyncio.create_task(chatter([talker], stop, every=0.01))
        away.start()  # back: resumes 520+ messages in two pages while the talk goes on
        await eventually(lambda: away.welcomes >= 2, 15, "the tab reconnected")
        await asyncio.sleep(1)
        stop.set()
        await chatting
        await eventually(lambda: not talker.pending, 20, "every message acknowledged")
        stored = await asyncio.to_thread(stored_ids, env["DATABASE_URL"])
        await eventually(
            lambda: len([i for i in away.shown if i > since]) == len([i for i in stored if i > since]),
            20,
            "the returning tab has every message",
        )
        assert_each_got_everything_once([away], stored, since)
    finally:
        for client in (away, talker):
            await client.stop()
        server.stop()
