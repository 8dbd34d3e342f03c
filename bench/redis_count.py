"""Count the Redis commands one server process sends per operation (docs/scaling.md).

    .venv/bin/python -m bench.redis_count [--port 6397]

Starts a private redis-server on 127.0.0.1:PORT (never the machine's shared
one), one project process on a fresh SQLite file, and ``redis-cli MONITOR``;
then plays a short scenario (two browsers, three tabs, eleven messages,
closes), marking each phase with an ``ECHO``, and prints per phase the
commands the server sent (``EVALSHA`` by script), those run inside the Lua
scripts, the ``PUBLISH`` payload sizes, and Redis's ``INFO commandstats``.
Everything it starts is stopped at the end. MONITOR slows Redis: the
per-call times are upper bounds.
"""

import argparse
import ast
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from http.cookies import SimpleCookie
from pathlib import Path

import websockets

from bench.servers import Target, start_project

RPORT = 6397
D = ""


procs = []  # everything this script started, stopped at the end
servers: list[Target] = []


def start(cmd, log, **kw):
    """Start ``cmd`` with its output in the file ``log``; the child keeps its own copy of the file."""
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, **kw)
    procs.append(p)
    return p


def main():
    start(
        ["redis-server", "--port", str(RPORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        D + "/redis.log",
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.5)
    # The project as the benchmark starts it (production settings, migrated, static files collected).
    server = start_project(
        log_dir=Path(D),
        base_env={
            **os.environ,
            "DATABASE_URL": f"sqlite:///{D}/db.sqlite3",
            "REDIS_URL": f"redis://127.0.0.1:{RPORT}/0",
        },
        extra_env={"CHAT_RATE_BURST": "1000", "CHAT_RATE_PER_SECOND": "1000"},
    )
    servers.append(server)
    start(["redis-cli", "-p", str(RPORT), "monitor"], D + "/monitor.txt")
    time.sleep(0.3)
    asyncio.run(scenario(server.base, server.port))
    time.sleep(0.3)


def mark(name):
    subprocess.run(["redis-cli", "-p", str(RPORT), "ECHO", "PHASE:" + name], stdout=subprocess.DEVNULL, check=True)


def page(base, room):
    with urllib.request.urlopen(f"{base}/chat/{room}/", timeout=5) as r:
        return SimpleCookie(r.headers["Set-Cookie"])["sessionid"].value


async def recv(ws, kind, timeout=5):
    end = time.monotonic() + timeout
    while True:
        f = json.loads(await asyncio.wait_for(ws.recv(), end - time.monotonic()))
        if f["type"] == kind:
            return f


async def scenario(base, port):
    room = "count"

    def connect(session):
        return websockets.connect(
            f"ws://127.0.0.1:{port}/ws/chat/{room}/",
            origin=base,
            additional_headers={"Cookie": f"sessionid={session}"},
            max_size=None,
        )

    mark("page-new-browser")
    s1 = page(base, room)
    mark("page-returning")
    page(base, room)
    mark("connect-first-tab-of-room-on-process")
    a = await connect(s1)
    await recv(a, "welcome")
    await recv(a, "presence")
    await asyncio.sleep(0.5)
    mark("idle-1-tab-3s")
    await asyncio.sleep(3.0)
    s2 = page(base, room)
    mark("connect-second-browser-same-room")
    b = await connect(s2)
    await recv(b, "welcome")
    await recv(b, "presence")
    await asyncio.sleep(0.6)
    mark("connect-second-tab-same-browser")
    c = await connect(s2)
    await recv(c, "welcome")
    await recv(c, "presence")
    await asyncio.sleep(0.6)
    mark("chat-1-message")
    await a.send(json.dumps({"type": "chat", "text": "x" * 100, "client_id": "c1"}))
    for ws in (a, b, c):
        await recv(ws, "chat")
    await asyncio.sleep(0.3)
    mark("chat-10-messages")
    for n in range(10):
        await a.send(json.dumps({"type": "chat", "text": "y" * 100, "client_id": f"d{n}"}))
    for ws in (a, b, c):
        for _ in range(10):
            await recv(ws, "chat")
    await asyncio.sleep(0.3)
    mark("close-tab-c")
    await c.close()
    await asyncio.sleep(0.8)
    mark("close-tab-b-last-of-browser")
    await b.close()
    await asyncio.sleep(0.8)
    mark("close-tab-a-last-of-room")
    await a.close()
    await asyncio.sleep(0.8)
    mark("end")
    stats = subprocess.run(["redis-cli", "-p", str(RPORT), "INFO", "commandstats"], capture_output=True, text=True)
    Path(D + "/commandstats.txt").write_text(stats.stdout)


LINE = re.compile(r"^(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$")
TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')


def report() -> None:
    phase, phases = "start", defaultdict(list)
    with open(D + "/monitor.txt") as monitor:
        for line in monitor:
            m = LINE.match(line.strip())
            if not m:
                continue
            args = [ast.literal_eval('b"' + t + '"') for t in TOKEN.findall(m.group(4))]
            if args and args[0].upper() == b"ECHO" and args[1].startswith(b"PHASE:"):
                phase = args[1][6:].decode()
                continue
            phases[phase].append((m.group(3), args))
    for name, cmds in phases.items():
        sent = [args for client, args in cmds if client != "lua"]
        inner = Counter(args[0].decode().upper() for client, args in cmds if client == "lua")
        names = Counter(
            args[0].decode().upper() + (f"({args[1][:8].decode()})" if args[0].upper() == b"EVALSHA" else "")
            for args in sent
        )
        published = [len(args[2]) for args in sent if args[0].upper() == b"PUBLISH"]
        print(f"== {name}: {len(sent)} commands, {sum(inner.values())} inside scripts")
        print("   sent:", dict(names))
        print("   in scripts:", dict(inner))
        if published:
            print("   PUBLISH payload bytes:", published)
    print(Path(D + "/commandstats.txt").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=RPORT, help="port of the private Redis to start")
    RPORT = parser.parse_args().port
    D = tempfile.mkdtemp(prefix="redis-count-")
    try:
        main()
        report()
    finally:
        for server in servers:
            server.stop()
        for p in reversed(procs):  # only what this script started
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(D, ignore_errors=True)
