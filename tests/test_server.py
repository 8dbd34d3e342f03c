"""End to end: real daphne processes (``python -m chatsite.server``), real sockets.

These check what only the server shows: close codes for oversize, invalid
UTF-8 and binary frames, the 403 for a foreign origin, and, with Redis, a
room idle past redis-py's old 5 s read timeout, hundreds of sockets closing
at once, and two processes serving one room.
"""

import asyncio
import json
import time

import pytest
import redis
import websockets
from django.conf import settings

from tests.servers import Server

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]


async def recv(ws, kind: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


async def closed_with(ws) -> int:
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 5)
    return info.value.rcvd.code if info.value.rcvd else 1006


async def test_oversize_frame_closes_with_1009(server):
    async with server.ws(server.browser()) as ws:
        await recv(ws, "welcome")
        await ws.send(json.dumps({"type": "chat", "text": "x" * 17000}))
        assert await closed_with(ws) == 1009


async def test_invalid_utf8_closes_with_1007(server):
    async with server.ws(server.browser()) as ws:
        await recv(ws, "welcome")
        await ws.send(b'{"type":"chat","text":"\xff\xfe"}', text=True)
        assert await closed_with(ws) == 1007


async def test_binary_frame_closes_with_4003(server):
    async with server.ws(server.browser()) as ws:
        await recv(ws, "welcome")
        await ws.send(b"\x00binary")
        assert await closed_with(ws) == 4003


async def test_no_cookie_closes_with_4401(server):
    async with server.ws(None) as ws:
        assert await closed_with(ws) == 4401


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example"])
async def test_foreign_origin_gets_403(server, origin):
    with pytest.raises(websockets.InvalidStatus) as info:
        async with server.ws(server.browser(), origin=origin):
            pass
    assert info.value.response.status_code == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:{other_port}",  # another port of our host
        "https://127.0.0.1:{port}",  # another scheme (the socket is plain ws://)
        "http://localhost:{port}",  # another allowed host is another origin
    ],
)
async def test_another_origin_of_our_own_host_gets_403_and_is_logged(server, origin):
    origin = origin.format(port=server.port, other_port=server.port + 1)
    session = server.browser()
    with pytest.raises(websockets.InvalidStatus) as info:
        async with server.ws(session, origin=origin):
            pass
    assert info.value.response.status_code == 403
    deadline = time.monotonic() + 5
    while f"origin=['{origin}']" not in (log := server.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, log[-2000:]
        await asyncio.sleep(0.1)
    assert session not in log  # the refusal names the Origin, never the cookie


async def test_origin_behind_a_tls_proxy_is_the_https_page(server_env, tmp_path):
    # daphne --proxy-headers behind a proxy that ends TLS: the page is
    # https://…, the socket reaches daphne as ws:// with X-Forwarded-Proto.
    server = Server({**server_env, "BEHIND_PROXY": "1"}, tmp_path / "proxied.log", args=["--proxy-headers"])
    try:
        forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        page = f"https://127.0.0.1:{server.port}"
        async with server.ws(server.browser(), origin=page, headers=forwarded) as ws:
            await recv(ws, "welcome")
        with pytest.raises(websockets.InvalidStatus) as info:
            async with server.ws(server.browser(), origin=server.base, headers=forwarded):
                pass
        assert info.value.response.status_code == 403
    finally:
        server.stop()


async def test_a_frame_just_under_the_limit_is_answered(server):
    async with server.ws(server.browser()) as ws:
        await recv(ws, "welcome")
        await ws.send(json.dumps({"type": "chat", "text": "x" * 2001, "pad": "p" * 12000}))
        assert (await recv(ws, "error"))["code"] == "text_too_long"


async def test_server_frames_over_the_client_limit_go_out_whole(server):
    # The 16 KiB limit is for client frames; autobahn also applied it to the
    # server's, so a history page of long messages killed the socket.
    async with server.ws(server.browser()) as ws:
        await recv(ws, "welcome")
        for n in range(10):
            await ws.send(json.dumps({"type": "chat", "text": f"{n}" * 2000}))
            await recv(ws, "chat")
        await ws.send(json.dumps({"type": "history", "limit": 50}))
        page = await recv(ws, "history")
        assert [m["text"][0] for m in page["messages"]] == [str(n) for n in range(10)]
        assert len(json.dumps(page)) > 16384
        await ws.send(json.dumps({"type": "ping"}))
        await recv(ws, "pong")


@pytest.mark.redis
async def test_room_idle_longer_than_5_seconds_still_delivers(server):
    # redis-py 8 cut channels-redis's 5 s blocking read with its own 5 s
    # socket timeout, killing consumers in a quiet room.
    async with server.ws(server.browser()) as listener, server.ws(server.browser()) as talker:
        await recv(listener, "welcome")
        await recv(talker, "welcome")
        await asyncio.sleep(7)
        await talker.send(json.dumps({"type": "chat", "text": "after the quiet"}))
        assert (await recv(listener, "chat"))["text"] == "after the quiet"


@pytest.mark.redis
async def test_hundreds_of_sockets_closing_at_once_leave_no_group_members(server, server_env):
    # redis-py 8's 100-connection pool cap failed these group removals.
    room = "crowd"
    session = server.browser(room)
    sockets = []
    for _ in range(300):
        ws = await server.ws(session, room=room)
        sockets.append(ws)
    welcomes = await asyncio.gather(*(recv(ws, "welcome", timeout=30) for ws in sockets))
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = server_env["CHANNEL_LAYER_PREFIX"]
    groups = [f"chat.author.{welcomes[0]['author_id']}", f"chat.room.{room}"]

    def members(group: str) -> int:
        if settings.REDIS_CHANNEL_LAYER == "pubsub":  # one subscription per process
            return client.pubsub_numsub(f"{prefix}__group__{group}")[0][1]
        return client.zcard(f"{prefix}:group:{group}")

    # Each tab is in its browser's group; the room's group holds one channel
    # per server process (chat.fanout), whatever the number of tabs.
    expected = (1, 1) if settings.REDIS_CHANNEL_LAYER == "pubsub" else (300, 1)
    assert tuple(members(group) for group in groups) == expected
    await asyncio.gather(*(ws.close() for ws in sockets))
    tabs_key = f"{server_env['CHAT_REDIS_PREFIX']}:presence:{room}:tabs"

    def left() -> tuple[int, int, int]:
        return *(members(group) for group in groups), client.hlen(tabs_key)

    deadline = time.monotonic() + 20
    while any(left()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert left() == (0, 0, 0)


@pytest.mark.redis
async def test_two_processes_serve_one_room(server_env, tmp_path):
    server_env = {**server_env, "CHAT_RATE_PER_SECOND": "0.001"}
    one, two = Server(server_env, tmp_path / "one.log"), Server(server_env, tmp_path / "two.log")
    try:
        ada, grace = one.browser(), two.browser()
        async with one.ws(ada) as a, two.ws(grace) as g, two.ws(ada) as a_on_two:
            for ws in (a, g, a_on_two):
                await recv(ws, "welcome")
            # Presence: two people, Ada with a tab on each process.
            deadline = time.monotonic() + 5
            while True:
                users = (await recv(g, "presence"))["users"]
                if sorted(u["tabs"] for u in users) == [1, 2] or time.monotonic() > deadline:
                    break
            assert sorted(u["tabs"] for u in users) == [1, 2]
            # Chat both ways.
            await a.send(json.dumps({"type": "chat", "text": "from one"}))
            assert (await recv(g, "chat"))["text"] == "from one"
            assert (await recv(a, "chat"))["text"] == "from one"  # the sender's echo
            await g.send(json.dumps({"type": "chat", "text": "from two"}))
            assert (await recv(a, "chat"))["text"] == "from two"
            # A rename on one process reaches Ada's tab on the other.
            await a.send(json.dumps({"type": "rename", "username": "Ada"}))
            assert (await recv(a_on_two, "identity"))["username"] == "Ada"
            # The rate limit is one bucket for both processes: after "from one",
            # 9 of the burst of 10 are left (refill is slowed to ~0 here).
            for n in range(12):
                await (a if n % 2 else a_on_two).send(json.dumps({"type": "chat", "text": f"n{n}", "client_id": f"x{n}"}))
            frames = await drain(a) + await drain(a_on_two)
            limited = {f["client_id"] for f in frames if f["type"] == "error" and f["code"] == "rate_limited"}
            stored = {f["client_id"] for f in frames if f["type"] == "chat" and f["client_id"]}
            assert len(limited) == 3 and len(stored) == 9 and not limited & stored
    finally:
        one.stop()
        two.stop()


async def drain(ws, quiet: float = 1.5) -> list[dict]:
    """Every frame until the socket has been quiet for ``quiet`` seconds."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
    except asyncio.TimeoutError:
        return frames
