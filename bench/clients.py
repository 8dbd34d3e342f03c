"""The load client: chat clients that connect like a browser, spread over worker processes.

A project client is its own browser: it loads the room page (a session
cookie), opens the websocket with that cookie and the page's ``Origin``, and
is ready at ``welcome``. A baseline client opens the tutorial chat's bare
websocket. Clients count the chat frames they receive and their one-way
latency from the send time in the text (``bench:<tag>:<sender>:<seq>:<ns>``:
client and server share one clock, the machine's).

``Pool`` runs a ``Worker`` in each of a few processes, so one busy client
process does not limit the server; the pool sends each worker a command and
gathers their answers. A worker may serve several servers of one room
(``Config`` each): client i goes to server i % servers, and what arrives is
counted per server and per message, so that a message sent through one
process can be seen reaching the clients of the other.

Presence (``presence`` snapshots and ``presence_diff`` frames, PROTOCOL.md
§3) is not chat: a ``Tally`` counts it among the other frames and it never
enters a latency; ``bench.bigroom`` measures its bytes.
"""

import asyncio
import json
import multiprocessing
import resource
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from websockets import ConnectionClosed, InvalidStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from bench.report import bucket

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Where the clients go and how they speak: ``project`` (the contract) or ``baseline`` (tutorial)."""

    kind: str
    host: str
    port: int
    room: str
    open_timeout: float = 30.0

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"


def server_of(index: int, servers: int) -> int:
    """Which of ``servers`` servers client ``index`` goes to: round-robin (senders split as evenly)."""
    return index % servers


async def page_cookie(cfg: Config) -> str:
    """Load the room page like a browser; return its cookies as a ``Cookie`` header."""
    reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
    try:
        writer.write(
            f"GET /chat/{cfg.room}/ HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nAccept: text/html\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # the page itself, until the server closes
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if status != 200:
        raise ConnectionError(f"page load: HTTP {status}")
    return "; ".join(
        line.split(":", 1)[1].split(";", 1)[0].strip() for line in lines[1:] if line.lower().startswith("set-cookie:")
    )


async def open_socket(cfg: Config, cookie: str | None, headers: dict[str, str] | None = None) -> ClientConnection:
    """Open the room's websocket (no compression, no keep-alive pings: neither is measured), with extra ``headers``."""
    return await connect(
        f"ws://{cfg.host}:{cfg.port}/ws/chat/{cfg.room}/",
        origin=Origin(cfg.origin),
        additional_headers={**(headers or {}), **({"Cookie": cookie} if cookie else {})} or None,
        compression=None,
        proxy=None,
        max_size=None,
        ping_interval=None,
        open_timeout=cfg.open_timeout,
        close_timeout=2,
    )


async def welcome(ws: ClientConnection) -> dict[str, Any]:
    """Wait for the project's ``welcome`` frame (the first it sends)."""
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "welcome":
            return frame


async def abort_unless(ws: ClientConnection, ready: Awaitable[T]) -> T:
    """Await ``ready`` (e.g. the welcome); if it fails or times out, drop the socket."""
    try:
        return await ready
    except BaseException:
        ws.transport.abort()
        raise


def chat_frame(kind: str, text: str) -> str:
    """A chat message as each server wants it."""
    if kind == "baseline":
        return json.dumps({"message": text})
    return json.dumps({"type": "chat", "text": text, "client_id": uuid.uuid4().hex})


def describe(exc: BaseException) -> str:
    """A failure's cause, short enough to count by."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {str(exc)[:60]}"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Tally:
    """What a worker's clients (of one server) received in the current step."""

    def __init__(self) -> None:
        self.reset("")

    def reset(self, tag: str) -> None:
        self.prefix = f"bench:{tag}:"
        self.delivered = self.stale = self.other = 0
        self.errors: Counter[str] = Counter()
        self.hist: Counter[int] = Counter()  # latency bucket (µs) -> deliveries
        self.messages: Counter[str] = Counter()  # "<sender>:<seq>" -> deliveries
        self.max_us = 0

    def frame(self, kind: str, raw: str | bytes, now_ns: int) -> None:
        self.message(kind, json.loads(raw), now_ns)

    def message(self, kind: str, message: dict[str, Any], now_ns: int) -> None:
        """Count one frame already parsed (chat frames by their latency; presence and the rest as other)."""
        if kind == "baseline":
            text = message.get("message")
        elif message.get("type") == "chat":
            text = message.get("text")
        else:
            if message.get("type") == "error":
                self.errors[message.get("code", "?")] += 1
            self.other += 1
            return
        if not isinstance(text, str) or not text.startswith(self.prefix):
            self.stale += 1  # an earlier step's late delivery
            return
        message_key, sent_ns = text[len(self.prefix) :].rsplit(":", 1)
        latency_us = (now_ns - int(sent_ns)) // 1000
        self.max_us = max(self.max_us, latency_us)
        self.hist[bucket(latency_us)] += 1
        self.messages[message_key] += 1
        self.delivered += 1


class Client:
    """One browser (project) or one bare socket (baseline), counting what arrives into a ``Tally``."""

    def __init__(self, cfg: Config, tally: Tally) -> None:
        self.cfg, self.tally = cfg, tally
        self.ws: ClientConnection | None = None
        self.reading: asyncio.Task[None] | None = None

    async def open(self) -> None:
        cookie = await page_cookie(self.cfg) if self.cfg.kind == "project" else None
        self.ws = await open_socket(self.cfg, cookie)
        if self.cfg.kind == "project":
            await abort_unless(self.ws, welcome(self.ws))
        self.reading = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.tally.frame(self.cfg.kind, raw, time.time_ns())
        except ConnectionClosed:
            pass

    @property
    def open_now(self) -> bool:
        return self.reading is not None and not self.reading.done()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            if self.reading is not None:
                await self.reading


class Worker:
    """The clients of one process: ``ids`` (global indexes; the lowest ``senders`` ones send).

    With several ``cfgs`` (servers of one room), client i goes to ``cfgs[i % len(cfgs)]``.
    """

    def __init__(self, cfgs: Config | Sequence[Config], ids: list[int], concurrency: int) -> None:
        self.cfgs = (cfgs,) if isinstance(cfgs, Config) else tuple(cfgs)
        self.cfg = self.cfgs[0]  # what all of them share: kind, room, timeout
        self.ids, self.concurrency = ids, concurrency
        self.tallies = [Tally() for _ in self.cfgs]  # one per server
        self.clients: dict[int, Any] = {}  # the clients that became ready
        self.commands: dict[str, Callable[..., Any]] = {"connect": self.connect, "step": self.step, "close": self.close}

    def server_of(self, index: int) -> int:
        """Which of ``cfgs`` client ``index`` talks to."""
        return server_of(index, len(self.cfgs))

    def cfg_of(self, index: int) -> Config:
        return self.cfgs[self.server_of(index)]

    def make_client(self, index: int) -> Any:
        """A client with ``open()`` and ``close()``; subclasses make their own kind."""
        return Client(self.cfg_of(index), self.tallies[self.server_of(index)])

    async def connect(self, start_at: float, deadline: float | None = None) -> dict[str, Any]:
        """Open every client, ``concurrency`` at a time; time each one from page load to ready.

        A client whose turn comes after ``deadline`` (wall clock) is not opened (a failure:
        ``join deadline passed``), so that a server that cannot keep up bounds the run.
        """
        await asyncio.sleep(max(0.0, start_at - time.time()))
        limit = asyncio.Semaphore(self.concurrency)
        ready_ms: list[float] = []
        failures: Counter[str] = Counter()

        async def one(index: int) -> None:
            async with limit:
                if deadline is not None and time.time() > deadline:
                    failures["join deadline passed"] += 1
                    return
                client, started = self.make_client(index), time.perf_counter()
                try:
                    await asyncio.wait_for(client.open(), self.cfg.open_timeout)
                except Exception as exc:  # every failure is counted by cause
                    failures[describe(exc)] += 1
                    return
                ready_ms.append((time.perf_counter() - started) * 1000)
                self.clients[index] = client

        await asyncio.gather(*(one(i) for i in self.ids))
        return {
            "ready_ms": ready_ms,
            "failures": dict(failures),
            "end": time.time(),
            "ready_by_server": [sum(self.server_of(i) == s for i in self.clients) for s in range(len(self.cfgs))],
        }

    async def step(
        self, tag: str, rate: float, senders: int, start_at: float, duration: float, drain: float
    ) -> dict[str, Any]:
        """Send at ``rate`` messages/s in all (sender i at start + i/rate + n*senders/rate), then drain."""
        loop = asyncio.get_running_loop()
        for tally in self.tallies:
            tally.reset(tag)
        t0 = loop.time() + (start_at - time.time())
        window: dict[str, float] = {}  # this process's CPU seconds at the start and the end of sending
        loop.call_at(t0, lambda: window.__setitem__("start", cpu_seconds()))
        loop.call_at(t0 + duration, lambda: window.__setitem__("end", cpu_seconds()))

        async def send(index: int, client: Client) -> tuple[int, int, float]:
            sent = failed = 0
            late = 0.0
            n = 0
            # A fixed schedule: a late send shifts none of the next ones.
            while (due := t0 + index / rate + n * senders / rate) < t0 + duration:
                await asyncio.sleep(due - loop.time())
                late = max(late, loop.time() - due)
                try:
                    assert client.ws is not None
                    await client.ws.send(chat_frame(self.cfg.kind, f"bench:{tag}:{index}:{n}:{time.time_ns()}"))
                    sent += 1
                except ConnectionClosed:
                    failed += 1
                n += 1
            return sent, failed, late

        sending = [i for i in self.clients if i < senders]
        results = await asyncio.gather(*(send(i, self.clients[i]) for i in sending))
        await asyncio.sleep(max(0.0, t0 + duration + drain - loop.time()))
        tallies = self.tallies
        hist: Counter[int] = sum((Counter(t.hist) for t in tallies), Counter())
        return {
            "sent": sum(r[0] for r in results),
            "send_failures": sum(r[1] for r in results),
            "late_max_ms": max([r[2] for r in results] or [0.0]) * 1000,
            "delivered": sum(t.delivered for t in tallies),
            "hist": dict(hist),
            "max_us": max(t.max_us for t in tallies),
            "stale": sum(t.stale for t in tallies),
            "other": sum(t.other for t in tallies),
            "errors": dict(sum((t.errors for t in tallies), Counter())),
            "closed": sum(not c.open_now for c in self.clients.values()),
            "cpu_util": (window["end"] - window["start"]) / duration,
            # Per server: its clients here, what its senders here sent, and what its clients here received.
            "by_server": [
                {
                    "clients": sum(self.server_of(i) == s for i in self.clients),
                    "senders": sum(self.server_of(i) == s for i in sending),
                    "sent": sum(r[0] for i, r in zip(sending, results, strict=True) if self.server_of(i) == s),
                    "delivered": t.delivered,
                    "messages": dict(t.messages),
                }
                for s, t in enumerate(tallies)
            ],
        }

    async def close(self) -> dict[str, Any]:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(client: Client) -> None:
            async with limit:
                await client.close()

        await asyncio.gather(*(one(c) for c in self.clients.values()), return_exceptions=True)
        return {"closed": len(self.clients)}


def _serve(pipe: Connection, make_worker: Callable[[], Any]) -> None:
    """A worker process: run the commands the pool sends until ``close``."""

    async def main() -> None:
        worker = make_worker()
        loop = asyncio.get_running_loop()
        while True:
            command, kwargs = await loop.run_in_executor(None, pipe.recv)
            try:
                answer = await worker.commands[command](**kwargs)
            except Exception:  # the pool raises it in the main process
                answer = {"error": traceback.format_exc()}
            pipe.send(answer)
            if command == "close":
                return

    asyncio.run(main())


class Pool:
    """``procs`` worker processes; client i belongs to worker i % procs."""

    def __init__(
        self, make_worker: Callable[[list[int], int], Any], clients: int, procs: int, concurrency: int
    ) -> None:
        procs = max(1, min(procs, clients))
        share = max(1, -(-concurrency // procs))  # each worker's part of the concurrency, rounded up
        context = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for w in range(procs):
            ids = list(range(w, clients, procs))
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(theirs, lambda ids=ids: make_worker(ids, share)), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def send(self, command: str, **kwargs: Any) -> None:
        for pipe in self.pipes:
            pipe.send((command, kwargs))

    def ready(self, timeout: float) -> bool:
        """True once every worker has answered (waiting at most ``timeout`` s for each)."""
        return all(pipe.poll(timeout) for pipe in self.pipes)

    def collect(self) -> list[dict[str, Any]]:
        answers = [pipe.recv() for pipe in self.pipes]
        for answer in answers:
            if "error" in answer:
                raise RuntimeError("a client worker failed:\n" + answer["error"])
        return answers

    def call(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.send(command, **kwargs)
        return self.collect()

    def close(self) -> None:
        """Close every client and end the workers (those still alive)."""
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            try:
                if process.is_alive():
                    pipe.send(("close", {}))
                    if pipe.poll(60):
                        pipe.recv()
            except (EOFError, OSError):
                pass
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def raise_open_files_limit() -> None:
    """Thousands of sockets need as many file descriptors: raise the soft limit to the hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
