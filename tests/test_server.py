"""End to end: real daphne processes (``python -m chatsite.server``), real sockets.

These check what only the server shows: close codes for oversize, invalid
UTF-8 and binary frames, the 403 for a foreign origin, a client that stops
reading, and, with Redis, a room idle past redis-py's old 5 s read timeout,
hundreds of sockets closing at once, and two processes serving one room.
"""

import asyncio
import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
import websockets
from channels.db import database_sync_to_async
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from twisted.internet import abstract
from twisted.internet.testing import MemoryReactor

from chat.realtime.tab import PREPARED, prepare
from chatsite.server import GC_YOUNG_THRESHOLD, MAX_CLIENT_MESSAGE_BYTES, ChatWebSocketProtocol, queued_bytes
from tests.servers import PLAIN_DAPHNE, People, Server, closed_with, drain, manage, recv, until_people

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]


# --- Started without chatsite.server -------------------------------------------------


def startup_warnings(server: Server) -> list[str]:
    """The WARNING lines the server logged about how it was started (before it answered /healthz)."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if " WARNING " in line and "chatsite.server" in line]


def test_plain_daphne_warns_once_at_startup_naming_the_right_command(server_env, tmp_path):
    plain = Server(server_env, tmp_path / "plain.log", program=PLAIN_DAPHNE)
    try:
        warnings = startup_warnings(plain)
    finally:
        plain.stop()
    assert len(warnings) == 1, warnings
    for what in ("1009", "1007", "16 KiB", "CHAT_SEND_BUFFER_LIMIT", "python -m chatsite.server", "make run"):
        assert what in warnings[0], what


def test_chatsite_server_starts_without_that_warning(server):
    assert startup_warnings(server) == []


def test_the_server_freezes_what_start_up_loaded_and_collects_young_objects_less_often(server_env):
    """``python -m chatsite.server``'s own start-up, up to where daphne would start serving."""
    script = (
        "import gc, sys, daphne.server; from chatsite import server\n"
        "def report(self):\n"  # in place of Server.run: the reactor never starts
        "    print(gc.get_freeze_count(), gc.get_threshold()[0])\n"
        "daphne.server.Server.run = report\n"
        "sys.argv = ['chatsite.server', '-b', '127.0.0.1', '-p', '0', 'chatsite.asgi:application']\n"
        "server.main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=server_env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    frozen, young_threshold = map(int, out)
    # Frozen after the application was loaded: Django, Channels and the chat's
    # modules too (daphne and Twisted alone are fewer than 50,000).
    assert frozen > 90_000
    assert young_threshold == GC_YOUNG_THRESHOLD > 700  # Python's default is 700


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
        assert len(json.dumps(page)) > MAX_CLIENT_MESSAGE_BYTES
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
async def test_hundreds_of_sockets_closing_at_once_leave_no_group_members(server_env, tmp_path):
    # redis-py 8's 100-connection pool cap failed these group removals.
    # One browser's 300 tabs: past the default cap on sockets per identity.
    server_env = {**server_env, "CHAT_MAX_SOCKETS_PER_IDENTITY": "1000"}
    server = Server(server_env, tmp_path / "daphne.log")
    try:
        await _hundreds_closing(server, server_env)
    finally:
        server.stop()


async def _hundreds_closing(server: Server, server_env: dict[str, str]) -> None:
    room = "crowd"
    session = server.browser(room)
    sockets = []
    for _ in range(300):
        ws = await server.ws(session, room=room)
        sockets.append(ws)
    welcomes = await asyncio.gather(*(recv(ws, "welcome", timeout=30) for ws in sockets))
    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = server_env["CHANNEL_LAYER_PREFIX"]
    assert len({welcome["author_id"] for welcome in welcomes}) == 1
    groups = ["chat.identities", f"chat.room.{room}"]

    def members(group: str) -> int:
        if settings.REDIS_CHANNEL_LAYER == "pubsub":  # one subscription per process
            return client.pubsub_numsub(f"{prefix}__group__{group}")[0][1]
        return client.zcard(f"{prefix}:group:{group}")

    # The identities group and the room's group each hold one channel per
    # server process (its hub, chat.fanout), whatever the number of tabs.
    assert tuple(members(group) for group in groups) == (1, 1)
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
            people = People()
            await until_people(g, people, lambda users: sorted(u["tabs"] for u in users) == [1, 2])
            assert people.count == 2
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
                await (a if n % 2 else a_on_two).send(
                    json.dumps({"type": "chat", "text": f"n{n}", "client_id": f"x{n}"})
                )
            frames = await drain(a) + await drain(a_on_two)
            limited = {f["client_id"] for f in frames if f["type"] == "error" and f["code"] == "rate_limited"}
            stored = {f["client_id"] for f in frames if f["type"] == "chat" and f["client_id"]}
            assert len(limited) == 3 and len(stored) == 9 and not limited & stored
    finally:
        one.stop()
        two.stop()


@pytest.mark.postgres
@pytest.mark.redis
async def test_one_client_id_sent_from_five_tabs_at_once_is_stored_once(server_env, tmp_path):
    # A browser re-sends its pending messages on every welcome, from each tab.
    # Each process runs services in one database thread, so only two
    # processes make the inserts really race on PostgreSQL.
    from chat.models import Message

    server_env = {**server_env, "CHAT_RATE_BURST": "1000", "CHAT_RATE_PER_SECOND": "1000"}
    one, two = Server(server_env, tmp_path / "one.log"), Server(server_env, tmp_path / "two.log")
    try:
        room = "dups"
        ada, grace = one.browser(), two.browser()
        tabs = [await (one if n % 2 else two).ws(ada, room=room) for n in range(5)]
        watchers = [await one.ws(grace, room=room), await two.ws(grace, room=room)]
        for ws in tabs + watchers:
            await recv(ws, "welcome")
        for ws in tabs + watchers:
            await drain(ws, quiet=0.5)
        for attempt in range(5):  # the first one also races to create the room's row
            client_id = f"dup-{attempt}"
            frame = json.dumps({"type": "chat", "text": f"once {attempt}", "client_id": client_id})
            await asyncio.gather(*(ws.send(frame) for ws in tabs))
            got = await asyncio.gather(*(drain(ws, quiet=1.0) for ws in tabs + watchers))
            chats = [[f for f in frames if f["type"] == "chat" and f["client_id"] == client_id] for frames in got]
            errors = [f for frames in got for f in frames if f["type"] == "error"]
            assert not errors, errors
            stored = await database_sync_to_async(
                lambda client_id=client_id: list(
                    Message.objects.filter(client_id=client_id).values_list("id", flat=True)
                )
            )()
            assert len(stored) == 1, stored
            # Every tab is answered with the one stored message (its room echo
            # and, for the tabs whose insert lost, the direct answer).
            assert all(frames and {f["id"] for f in frames} == set(stored) for frames in chats[:5]), chats[:5]
            # The room hears of it once, on either process.
            assert [len(frames) for frames in chats[5:]] == [1, 1], chats[5:]
        for ws in tabs + watchers:
            await ws.close()
    finally:
        one.stop()
        two.stop()


# --- A client that stops reading ------------------------------------------------


class Kernel(abstract.FileDescriptor):
    """Twisted's write buffering over a socket that takes ``takes`` bytes per write."""

    def __init__(self, takes: int) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = True
        self.takes = takes

    def writeSomeData(self, data: bytes) -> int:  # noqa: N802 - twisted's name
        return min(len(data), self.takes)


class Wrapper:
    """A protocol wrapper (as TLS is): the bytes wait in the transport under it."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


def test_queued_bytes_follows_twisted_buffers():
    kernel = Kernel(takes=30)
    assert queued_bytes(kernel) == 0
    kernel.write(b"a" * 100)  # waits in _tempDataBuffer
    assert queued_bytes(kernel) == 100
    kernel.doWrite()  # joined into dataBuffer, 30 sent: offset 30
    assert queued_bytes(kernel) == 70
    kernel.write(b"b" * 50)  # dataBuffer[offset:] + _tempDataBuffer
    assert queued_bytes(kernel) == 120
    kernel.doWrite()
    assert queued_bytes(kernel) == 90
    assert queued_bytes(Wrapper(kernel)) == 90
    kernel.takes = 1000
    kernel.doWrite()
    assert queued_bytes(kernel) == 0
    assert queued_bytes(object()) == 0  # not a twisted socket: no bound rather than a wrong one


def test_a_frame_bigger_than_the_limit_goes_out_and_the_limit_counts_from_its_end(settings, monkeypatch, caplog):
    settings.CHAT_SEND_BUFFER_LIMIT = 1000
    kernel = Kernel(takes=0)  # a client that reads nothing
    kernel.aborted = False
    kernel.abortConnection = lambda: setattr(kernel, "aborted", True)
    # autobahn's sendMessage, reduced to the write it ends in.
    monkeypatch.setattr(
        WebSocketProtocol,
        "sendMessage",
        lambda self, payload, isBinary=False: self.transport.write(payload),  # noqa: N803 - autobahn's name
    )
    protocol = ChatWebSocketProtocol()
    protocol.transport, protocol.client_addr, protocol.maxMessagePayloadSize = (
        kernel,
        ["10.0.0.7", 5050],
        MAX_CLIENT_MESSAGE_BYTES,
    )
    protocol.request = type("Request", (), {"path": "/ws/chat/lobby/"})()

    protocol.sendMessage(b"r" * 5000)  # a big resume page on an empty queue: out whole
    protocol.sendMessage(b"l" * 900)  # live frames queue behind it up to the limit
    assert (queued_bytes(kernel), kernel.aborted) == (5900, False)
    protocol.sendMessage(b"l" * 200)  # 5900 waiting: still under 1000 + 5000
    assert (queued_bytes(kernel), kernel.aborted) == (6100, False)
    protocol.sendMessage(b"dropped")  # 6100 > 6000: dropped, connection aborted
    assert (queued_bytes(kernel), kernel.aborted) == (6100, True)
    assert "slow reader dropped peer=10.0.0.7:5050 path=/ws/chat/lobby/ queued=6100 bytes limit=1000" in caplog.text
    protocol.sendMessage(b"after")  # nothing more is written, nothing more is logged
    assert queued_bytes(kernel) == 6100 and caplog.text.count("slow reader") == 1


def test_once_drained_the_limit_counts_from_the_last_small_frame(settings, monkeypatch):
    settings.CHAT_SEND_BUFFER_LIMIT = 1000
    kernel = Kernel(takes=0)
    kernel.abortConnection = lambda: setattr(kernel, "aborted", True)
    monkeypatch.setattr(
        WebSocketProtocol,
        "sendMessage",
        lambda self, payload, isBinary=False: self.transport.write(payload),  # noqa: N803 - autobahn's name
    )
    protocol = ChatWebSocketProtocol()
    protocol.transport, protocol.client_addr, protocol.maxMessagePayloadSize = kernel, None, MAX_CLIENT_MESSAGE_BYTES
    protocol.request = type("Request", (), {"path": "/ws/chat/lobby/"})()
    protocol.sendMessage(b"r" * 5000)
    kernel.takes = 10**6
    kernel.doWrite()  # the client read it all
    protocol.sendMessage(b"s" * 10)
    for _ in range(101):  # 1010 bytes queued behind a 10-byte frame
        protocol.sendMessage(b"l" * 10)
    assert not hasattr(kernel, "aborted")
    protocol.sendMessage(b"l" * 10)  # 1020 > 1000 + 10
    assert kernel.aborted


def test_a_room_frame_prepared_once_is_written_as_one_unmasked_text_frame(settings):
    settings.CHAT_SEND_BUFFER_LIMIT = 1000
    kernel = Kernel(takes=0)
    kernel.abortConnection = lambda: setattr(kernel, "aborted", True)
    protocol = ChatWebSocketProtocol()
    protocol.transport, protocol.client_addr, protocol.maxMessagePayloadSize = kernel, None, MAX_CLIENT_MESSAGE_BYTES
    protocol.request = type("Request", (), {"path": "/ws/chat/lobby/"})()
    protocol.state, protocol._perMessageCompress, protocol.send_queue, protocol.logOctets = (
        protocol.STATE_OPEN,
        None,
        [],
        False,
    )
    protocol.trafficStats = type("Stats", (), {"outgoingOctetsWireLevel": 0})()
    frame = json.dumps({"type": "chat", "text": "ü" * 200})
    protocol.handle_reply({"type": "websocket.send", "text": frame, PREPARED: prepare(frame)})
    payload = frame.encode()
    # RFC 6455 §5.2: FIN + text opcode, no mask, a 16-bit length, the UTF-8 payload.
    expected = bytes([0x81, 126]) + struct.pack("!H", len(payload)) + payload
    assert b"".join(kernel._tempDataBuffer) == expected
    # The bound on what waits for a client that does not read holds for prepared frames too.
    for _ in range(3):
        protocol.handle_reply({"type": "websocket.send", "text": frame, PREPARED: prepare(frame)})
    assert kernel.aborted and queued_bytes(kernel) == 2 * len(expected)


class StalledClient:
    """A websocket client that completes the handshake and then never reads.

    Its receive buffer is made small before connecting, so what the server
    sends soon waits in the server's own buffers.
    """

    def __init__(self, server: Server, session: str, room: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws/chat/{room}/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {server.base}\r\nCookie: sessionid={session}\r\n\r\n".encode()
        )
        response = b""
        while not response.endswith(b"\r\n\r\n"):  # the response head only, byte by byte
            response += self.sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101"), response
        self.sock.setblocking(False)
        self.peer = "{}:{}".format(*self.sock.getsockname())

    async def send(self, frame: dict) -> bool:
        """Send a masked text frame; False once the server has dropped the connection."""
        payload = json.dumps(frame).encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        head = struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask
        data = head + bytes(b ^ mask[n % 4] for n, b in enumerate(payload))
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(self.sock, data), 10)
        except OSError:
            return False
        return True

    async def read_to_end(self, timeout: float) -> int | None:
        """Read what is left until EOF or reset; return the byte count, None if still open after ``timeout``."""
        loop, total = asyncio.get_running_loop(), 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), max(0.01, deadline - time.monotonic()))
            except (ConnectionResetError, BrokenPipeError):
                return total
            except TimeoutError:
                return None
            if not chunk:
                return total
            total += len(chunk)

    def close(self) -> None:
        self.sock.close()


SEED_LONG_MESSAGES = """
from chat.models import Message, Room
Room.objects.get_or_create(name="slow")
Message.objects.bulk_create(
    Message(room_id="slow", author_id="f" * 20, username="seed", text=f"seed-{n:03d} " + "s" * 1990)
    for n in range(100)
)
"""


async def test_a_client_that_stops_reading_is_dropped_and_the_room_goes_on(server_env, tmp_path):
    limit = 65536
    env = {
        **server_env,
        "CHAT_SEND_BUFFER_LIMIT": str(limit),
        "CHAT_RATE_BURST": "1000",
        "CHAT_RATE_PER_SECOND": "1000",
    }
    manage(env, "shell", "-c", SEED_LONG_MESSAGES)
    server = Server(env, tmp_path / "daphne.log")
    stalled = None
    try:
        room = "slow"
        async with (
            server.ws(server.browser(room), room=room) as listener,
            server.ws(server.browser(room), room=room) as talker,
        ):
            await recv(listener, "welcome")
            await recv(talker, "welcome")
            stalled = StalledClient(server, server.browser(room), room)
            sent_at: dict[str, float] = {}
            delays: dict[str, float] = {}
            people = People()  # the room, as the listener shows it

            async def listen() -> None:
                async for raw in listener:
                    frame = json.loads(raw)
                    if frame["type"] == "chat" and frame["text"].startswith("probe-"):
                        name = frame["text"].split()[0]
                        delays[name] = time.monotonic() - sent_at[name]
                    else:
                        people.apply(frame)

            async def probe(count: int) -> None:
                for _ in range(count):
                    name = f"probe-{len(sent_at):03d}"
                    sent_at[name] = time.monotonic()
                    # Long texts: the stalled client is in the room too.
                    await talker.send(json.dumps({"type": "chat", "text": f"{name} " + "p" * 1900}))
                    await asyncio.sleep(0.2)

            listening = asyncio.create_task(listen())
            probing = asyncio.create_task(probe(10_000))
            # Each history page (100 long messages) is about 200 KiB for a
            # client that reads none of it.
            dropped_within = None
            started = time.monotonic()
            for n in range(400):
                if not await stalled.send({"type": "history", "limit": 100}):
                    break
                await asyncio.sleep(0.05)
                if n % 5 == 0 and "slow reader dropped" in server.log_path.read_text(errors="replace"):
                    break
            dropped_within = time.monotonic() - started
            probing.cancel()
            # The stalled socket ends soon (EOF or reset), not at daphne's
            # ping timeout (20 s + 30 s without a pong).
            leftover = await stalled.read_to_end(timeout=15)
            await probe(5)  # the room goes on after the drop
            deadline = time.monotonic() + 10
            while (set(delays) != set(sent_at) or people.count != 2) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            listening.cancel()

        log = server.log_path.read_text(errors="replace")
        assert leftover is not None, "the stalled socket was still open 15 s after the history flood"
        dropped = re.findall(r"slow reader dropped peer=(\S+) path=(\S+) queued=(\d+) bytes limit=(\d+)", log)
        assert dropped, f"no drop logged after {dropped_within:.1f} s:\n{log[-3000:]}"
        peer, path, queued, logged_limit = dropped[0]
        assert (peer, path, logged_limit) == (stalled.peer, f"/ws/chat/{room}/", str(limit))
        assert int(queued) > limit
        assert leftover < 16 * 1024 * 1024  # what the kernels held, not everything the server was asked for
        # The consumer saw the disconnect and cleaned up: the room shows two people.
        assert re.search(rf"disconnected room={room} author=\w+ code=1006", log), log[-3000:]
        assert "disconnect cleanup failed" not in log  # it left the hub, its group and presence
        assert people.count == 2, people.users
        # Every probe reached the listener promptly, before and after the drop.
        assert set(delays) == set(sent_at) and len(sent_at) >= 6
        assert max(delays.values()) < 2, sorted(delays.values())[-5:]
        # No message text in the log.
        assert "ssssssssss" not in log and "pppppppppp" not in log
        assert server.process.poll() is None
        with urllib.request.urlopen(f"{server.base}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        if stalled is not None:
            stalled.close()
        server.stop()
