"""A spammer behind one address, through nginx: how much does the chat store?

Each of ``--sessions`` sessions is a new page view (a new identity), then a
socket, then long messages sent as fast as the socket takes them, for
``--seconds`` (at ``--frames-per-second``: by default the per-socket frame
budget, so that every frame is read and answered); all from the one address
``--source``. Stored is what the
server acknowledged (a message's echo to its sender is its acknowledgement).
The bound is what the documented limits allow in the time the run took:
sessions at most nginx's page burst + 1 + its rate × the time spent making
them (deploy/nginx.conf), messages at most, per session, the send burst + the
send rate × the time its socket sent (CHAT_RATE_BURST, CHAT_RATE_PER_SECOND).

    python -m bench.spam --url http://127.0.0.1:8080 --source 127.0.0.2

Run it against a chat behind deploy/nginx.conf, from an address that is not
exempt (loopback 127.0.0.1 is; 127.0.0.2 is not). docs/performance.md,
"A spammer behind one address", has a run.
"""

import argparse
import asyncio
import json
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import websockets

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
TEXT = "spam " * 400  # 2,000 characters, the most a message may hold


def page_limit() -> tuple[float, int]:
    """deploy/nginx.conf's page rate (per second) and burst."""
    conf = NGINX_CONF.read_text()
    rate = int(re.search(r"zone=pages:\S+ rate=(\d+)r/s;", conf).group(1))
    burst = int(re.search(r"location / \{[^}]*limit_req zone=pages burst=(\d+)", conf).group(1))
    return rate, burst


async def new_session(host: str, port: int, room: str, source: str) -> str | None:
    """A page view from ``source``: the session cookie, or None if refused (429)."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(f"GET /chat/{room}/ HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        await reader.read()
    finally:
        writer.close()
    status = int(head.split()[1])
    if status == 429:
        return None
    assert status == 200, f"page view: HTTP {status}"
    return re.search(r"(?im)^set-cookie: (sessionid=[^;]+)", head).group(1)


async def spam(url: str, room: str, source: str, cookie: str, seconds: float, pace: float, tally: defaultdict) -> None:
    """One identity's socket: send ``pace`` messages a second for ``seconds``, count the acknowledgements."""
    split = urlsplit(url)
    try:
        ws = await websockets.connect(
            f"ws://{split.netloc}/ws/chat/{room}/",
            origin=url,
            additional_headers={"Cookie": cookie},
            compression=None,
            proxy=None,
            max_size=None,
            ping_interval=None,
            local_addr=(source, 0),
        )
    except websockets.InvalidStatus as refused:
        tally[f"socket refused {refused.response.status_code}"] += 1
        return
    tally["sockets"] += 1
    mine: set[str] = set()
    started = last_frame = time.monotonic()

    async def send() -> None:
        sent = 0
        while time.monotonic() - started < seconds:
            client_id = uuid.uuid4().hex
            mine.add(client_id)
            await ws.send(json.dumps({"type": "chat", "text": TEXT, "client_id": client_id}))
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / pace - time.monotonic()))

    async def receive() -> None:
        nonlocal last_frame
        async for raw in ws:
            last_frame = time.monotonic()
            frame = json.loads(raw)
            if frame["type"] == "chat" and frame.get("client_id") in mine:
                tally["stored"] += 1
            elif frame["type"] == "error":
                tally[f"error {frame['code']}"] += 1

    receiving = asyncio.ensure_future(receive())
    try:
        await send()
        # The last answers: until the socket has been quiet for 2 s (a busy
        # server is behind; 60 s at most).
        while time.monotonic() - last_frame < 2 and time.monotonic() - started < seconds + 60:
            await asyncio.sleep(0.5)
    except websockets.ConnectionClosed as closed:
        tally[f"socket closed {closed.rcvd.code if closed.rcvd else 1006}"] += 1
    finally:
        receiving.cancel()
        await ws.close()
        # The bound counts the whole time the socket was open: a frame sent
        # early may be processed late, with the bucket refilled meanwhile.
        tally["socket seconds"] += time.monotonic() - started


async def run(url: str, source: str, sessions: int, seconds: float, pace: float, burst: int, per_second: float) -> dict:
    split = urlsplit(url)
    room = f"spam-{uuid.uuid4().hex[:8]}"
    tally: defaultdict = defaultdict(int, {"sockets": 0, "stored": 0, "socket seconds": 0.0})
    started = time.monotonic()
    cookies = await asyncio.gather(*(new_session(split.hostname, split.port, room, source) for _ in range(sessions)))
    making = time.monotonic() - started
    made = [cookie for cookie in cookies if cookie]
    await asyncio.gather(*(spam(url, room, source, cookie, seconds, pace, tally) for cookie in made))
    rate, page_burst = page_limit()
    return {
        "room": room,
        "source": source,
        "sessions asked": sessions,
        "sessions made": len(made),
        "page views refused (429)": sessions - len(made),
        "seconds making sessions": round(making, 2),
        "sessions allowed at most": int(page_burst + 1 + rate * making),
        **{name: (round(value, 1) if isinstance(value, float) else value) for name, value in tally.items()},
        "stored allowed at most": int(tally["sockets"] * burst + per_second * tally["socket seconds"]),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="nginx in front of the chat, e.g. http://127.0.0.1:8080")
    parser.add_argument("--source", default="127.0.0.2", help="the one client address (not exempt in nginx)")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10, help="how long each socket sends")
    parser.add_argument("--frames-per-second", type=float, default=10, help="per socket (CHAT_FRAME_RATE_PER_SECOND)")
    parser.add_argument("--burst", type=int, default=10, help="the server's CHAT_RATE_BURST")
    parser.add_argument("--per-second", type=float, default=1.0, help="the server's CHAT_RATE_PER_SECOND")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.url, args.source, args.sessions, args.seconds, args.frames_per_second, args.burst, args.per_second)
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
