"""Readers flooding `resume`: how much slower does a bystander's chat get?

A room is seeded with ``--messages`` long messages (2,000 characters). Then a
bystander in another room sends a chat message every 0.2 s and times its
echo: first for ``--seconds`` with nothing else going on, then for as long
again while ``--readers`` browsers (each its own identity: the per-identity
read limit binds each) send ``resume`` from 0 as fast as their sockets are
answered. Printed: the bystander's echo p50 and p95 in both phases and their
ratio (issue 14's target: p50 within 2x of idle), and the readers' answers
and refusals.

    python -m bench.readflood --url http://127.0.0.1:8000

Seeding uses ``manage.py shell`` with the environment's DATABASE_URL, so
run it against a server on the same database.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import websockets

ROOT = Path(__file__).resolve().parent.parent
SEED = """
import uuid
from chat import services
from chat.identity import Identity, author_id_for
sid = uuid.uuid4()
who = Identity(sid, author_id_for(sid), "Archivist", False)
services.post_messages([services.Post(who, {room!r}, "x" * 2000, None) for _ in range({count})])
"""


def session(base: str, room: str) -> str:
    """A page view: the new browser's session cookie."""
    with urllib.request.urlopen(f"{base}/chat/{room}/", timeout=10) as response:
        return response.headers["Set-Cookie"].split(";")[0]


async def connect(base: str, room: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"ws://{urlsplit(base).netloc}/ws/chat/{room}/",
        origin=base,
        additional_headers={"Cookie": session(base, room)},
        max_size=None,
    )
    while json.loads(await ws.recv())["type"] != "welcome":
        pass
    return ws


async def bystander(ws: websockets.ClientConnection, seconds: float) -> list[float]:
    """Send a message every 0.2 s for ``seconds``; return each echo's delay in ms."""
    delays: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        client_id = f"b{time.monotonic_ns()}"
        sent = time.monotonic()
        await ws.send(json.dumps({"type": "chat", "text": f"ping {n}", "client_id": client_id}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("client_id") == client_id:
                delays.append((time.monotonic() - sent) * 1000)
                break
        await asyncio.sleep(0.2)
    return delays


async def reader(ws: websockets.ClientConnection, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Ask for everything from the start, again and again, as fast as the answers come."""
    while not stop.is_set():
        await ws.send(json.dumps({"type": "resume", "after": 0}))
        frame = json.loads(await ws.recv())
        while frame["type"] not in ("history", "error"):
            frame = json.loads(await ws.recv())
        counts[frame["type"]] += 1


async def run(base: str, readers: int, seconds: float) -> dict:
    watcher = await connect(base, "bystander")
    idle = await bystander(watcher, seconds)
    flooders = [await connect(base, "archive") for _ in range(readers)]
    stop, counts = asyncio.Event(), {"history": 0, "error": 0}
    tasks = [asyncio.create_task(reader(ws, stop, counts)) for ws in flooders]
    started = time.monotonic()
    loaded = await bystander(watcher, seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    for ws in (watcher, *flooders):
        await ws.close()

    def summary(delays: list[float]) -> dict:
        return {
            "echoes": len(delays),
            "p50_ms": round(statistics.median(delays), 1),
            "p95_ms": round(statistics.quantiles(delays, n=20)[-1], 1),
        }

    result = {
        "readers": readers,
        "seconds": seconds,
        "idle": summary(idle),
        "flooded": summary(loaded),
        "resume_answered_per_s": round(counts["history"] / elapsed, 1),
        "resume_refused_per_s": round(counts["error"] / elapsed, 1),
    }
    result["p50_ratio"] = round(result["flooded"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    code = SEED.format(room="archive", count=args.messages)
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, check=True, timeout=120)
    print(json.dumps(asyncio.run(run(args.url, args.readers, args.seconds))))


if __name__ == "__main__":
    main()
