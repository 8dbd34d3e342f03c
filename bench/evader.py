"""A blocked visitor who clears cookies: how many identities and messages does one outside address get?

A scripted evader from one address that is not loopback loops for
``--seconds``: it drops its cookies and loads the room page (a new
identity), opens the socket with that cookie and the page's ``Origin``,
sends the burst of chat messages one identity may send at once
(``CHAT_RATE_BURST``, 10) and waits for their echoes, then acts as if staff
had blocked it: it abandons the identity and starts over. A page view
refused with 429 is tried again after ``--pause`` seconds (the script does
not trust ``Retry-After``). The server runs as behind nginx (``BEHIND_PROXY=1``,
daphne ``--proxy-headers``) and the evader sends ``X-Forwarded-For: 203.0.113.7``
as nginx would, so the server sees one outside address. An honest reader,
a browser on loopback (exempt), sits in the room and counts the messages it
receives; the room's rows are counted in the database at the end.

Two phases in one run, each on a fresh server process and room: the limit
on new identities at its defaults (a burst of 20, then one a minute per
network), and the limit off (``CHAT_NEW_IDENTITY_RATE_BURST=0``).

    python -m bench.evader [--seconds 60] [--port 18150]

On ``DATABASE_URL`` and ``REDIS_URL`` of the environment (each run's Redis
keys under a prefix of its own, ``bench.servers.project_env``). Prints the
figures and writes ``bench/results/evader-<timestamp>.json``.
docs/performance.md, "A blocked visitor who clears cookies", has runs.
"""

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from websockets import ConnectionClosed, InvalidStatus
from websockets.asyncio.client import ClientConnection

from bench.clients import Config, open_socket, page_cookie, welcome
from bench.report import save
from bench.servers import ROOT, Target, start_project

EVADER_ADDRESS = "203.0.113.7"  # TEST-NET-3: outside, and nobody's
SEND_BURST = 10  # CHAT_RATE_BURST: what one identity may send at once
PHASES = {
    "limit on (defaults)": {},
    "limit off (burst 0)": {"CHAT_NEW_IDENTITY_RATE_BURST": "0"},
}


async def new_identity(cfg: Config) -> tuple[int, str | None, int | None]:
    """A page view with no cookie from the evader's address: status, the session cookie, ``Retry-After``."""
    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
    try:
        writer.write(
            f"GET /chat/{cfg.room}/ HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nAccept: text/html\r\n"
            f"X-Forwarded-For: {EVADER_ADDRESS}\r\nConnection: close\r\n\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        await reader.read()
    finally:
        writer.close()
    status = int(head.split()[1])
    cookie = re.search(r"(?im)^set-cookie: (sessionid=[^;]+)", head)
    retry_after = re.search(r"(?im)^retry-after: (\d+)", head)
    return status, cookie.group(1) if cookie else None, int(retry_after.group(1)) if retry_after else None


async def evader_socket(cfg: Config, cookie: str) -> ClientConnection:
    """The room's socket with the new identity's cookie, through the 'proxy' (the forwarded address)."""
    return await open_socket(cfg, cookie, headers={"X-Forwarded-For": EVADER_ADDRESS})


async def send_burst(ws: ClientConnection, tally: Counter[str]) -> None:
    """Send the burst and wait (10 s at most) for each message's echo or refusal."""
    pending = {uuid.uuid4().hex for _ in range(SEND_BURST)}
    for n, client_id in enumerate(pending):
        await ws.send(json.dumps({"type": "chat", "text": f"evader {n}", "client_id": client_id}))
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame.get("client_id") not in pending:
            continue
        pending.discard(frame["client_id"])
        tally["messages acknowledged" if frame["type"] == "chat" else f"error {frame.get('code')}"] += 1
    tally["messages unanswered"] += len(pending)


async def evade(cfg: Config, seconds: float, pause: float) -> dict[str, Any]:
    """The evader's loop: a new identity, its burst, abandoned; for ``seconds``."""
    tally: Counter[str] = Counter()
    retry_afters: list[int] = []
    started = time.monotonic()
    first_refusal: float | None = None
    while time.monotonic() - started < seconds:
        status, cookie, retry_after = await new_identity(cfg)
        if status == 429:
            tally["pages refused (429)"] += 1
            first_refusal = first_refusal or time.monotonic() - started
            if retry_after is not None:
                retry_afters.append(retry_after)
            await asyncio.sleep(pause)
            continue
        if status != 200 or cookie is None:
            tally[f"page HTTP {status}"] += 1
            await asyncio.sleep(pause)
            continue
        tally["identities obtained"] += 1
        try:
            ws = await evader_socket(cfg, cookie)
        except InvalidStatus as refused:
            tally[f"socket refused HTTP {refused.response.status_code}"] += 1
            continue
        try:
            await welcome(ws)
            await send_burst(ws, tally)
        except (TimeoutError, ConnectionClosed) as exc:
            tally[f"socket lost: {type(exc).__name__}"] += 1
        finally:
            await ws.close()  # "blocked": the identity is abandoned
    took = time.monotonic() - started
    return {
        **dict(tally),
        "identities per minute": round(tally["identities obtained"] / took * 60, 1),
        "seconds": round(took, 1),
        "first refusal after s": None if first_refusal is None else round(first_refusal, 2),
        "retry_after s (min, max)": [min(retry_afters), max(retry_afters)] if retry_afters else None,
    }


async def read_honestly(cfg: Config, seen: Counter[str], ready: asyncio.Event) -> None:
    """A browser on loopback in the room: counts the chat frames it receives."""
    ws = await open_socket(cfg, await page_cookie(cfg))
    try:
        await welcome(ws)
        ready.set()
        async for raw in ws:
            if json.loads(raw).get("type") == "chat":
                seen["messages"] += 1
    except ConnectionClosed:
        pass
    finally:
        await ws.close()


def rows_in(target: Target, room: str) -> int:
    """The room's stored messages, counted in the server's database."""
    assert target.env is not None
    code = f"from chat.models import Message; print(Message.objects.filter(room_id={room!r}).count())"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=target.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(done.stdout.split()[-1])


async def phase(target: Target, seconds: float, pause: float) -> dict[str, Any]:
    cfg = Config("project", target.host, target.port, f"evader-{uuid.uuid4().hex[:8]}")
    seen: Counter[str] = Counter()
    ready = asyncio.Event()
    reader = asyncio.create_task(read_honestly(cfg, seen, ready))
    await asyncio.wait_for(ready.wait(), 30)
    result = await evade(cfg, seconds, pause)
    await asyncio.sleep(2)  # the last echoes reach the reader
    reader.cancel()
    result["messages seen by the reader"] = seen["messages"]
    result["messages stored (rows)"] = await asyncio.to_thread(rows_in, target, cfg.room)
    result["room"] = cfg.room
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the evader runs, per phase")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds before trying again after a 429")
    parser.add_argument("--port", type=int, default=None, help="the servers' ports: this one, then the next")
    parser.add_argument("--note", default="", help="a remark stored with the results (e.g. what else ran)")
    parser.add_argument("--no-save", action="store_true", help="print the figures only")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-evader-"))
    result: dict[str, Any] = {
        "scenario": "evader",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": args.seconds,
        "pause": args.pause,
        "evader address": EVADER_ADDRESS,
        "note": args.note,
        "phases": {},
    }
    for n, (name, extra) in enumerate(PHASES.items()):
        target = start_project(
            log_dir=logs,
            extra_env={"BEHIND_PROXY": "1", **extra},
            args=["--proxy-headers"],
            port=None if args.port is None else args.port + n,
            migrate=n == 0,
        )
        try:
            result.setdefault("server", target.settings)
            print(f"{name}: server pid {target.pid} on {target.base}", flush=True)
            result["phases"][name] = figures = asyncio.run(phase(target, args.seconds, args.pause))
            print(f"  {json.dumps(figures)}", flush=True)
        finally:
            target.stop()
    on, off = (result["phases"][name]["messages stored (rows)"] for name in PHASES)
    result["stored off / on"] = round(off / on, 1) if on else None
    print(f"messages stored, limit off / on: {result['stored off / on']}", flush=True)
    if not args.no_save:
        print(f"results: {save(result, 'evader')}", flush=True)


if __name__ == "__main__":
    main()
