"""The soak: hundreds of browsers chat for minutes while some drop and reconnect.

Every client sends now and then; a fraction of them ("flaky") lose their
socket every few seconds (a clean close or a dropped TCP connection, in
turn) and reconnect with the same cookie, sending ``resume`` after the
newest id they have, as the browser client does. The server's RSS is
sampled every 5 s. At the end every client must have received every
message stored in the room after it first connected: any stored id a
client never saw is a gap (the target is zero).
"""

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from websockets import ConnectionClosed
from websockets.asyncio.client import ClientConnection

from bench.clients import Config, Pool, Worker, abort_unless, chat_frame, describe, open_socket, page_cookie, welcome
from bench.scenarios import Load, connect_all, new_room
from bench.servers import Target, sample

SAMPLE_EVERY = 5.0  # seconds between RSS samples
WARM_UP = 60.0  # growth is measured after the first minute


@dataclass
class Churn:
    """How the soak chats and churns."""

    minutes: float = 3.0
    flaky: float = 0.1  # share of clients that drop and reconnect
    reconnect_every: float = 5.0  # seconds between a flaky client's drops (±50 %)


class SoakClient:
    """One browser tab: chats, reconnects, resumes, and records every message id it receives."""

    def __init__(self, cfg: Config, flaky: bool) -> None:
        self.cfg, self.flaky = cfg, flaky
        self.cookie = ""
        self.ws: ClientConnection | None = None
        self.start_id: int | None = None  # the room's newest id when this client first connected
        self.last_id = 0
        self.seen: dict[int, tuple[str, int]] = {}  # id -> how it first came ("live" or "resume"), on which socket
        self.duplicates: dict[str, int] = {}  # "<first> then <second>" -> count
        self.reconnects = self.sent = self.skipped = 0
        self.errors: dict[str, int] = {}
        self.sending: set[asyncio.Task[None]] = set()  # resume requests in flight (the loop keeps only weak refs)

    async def open(self) -> None:
        """Load the page once (this browser's cookie), then connect."""
        self.cookie = await page_cookie(self.cfg)
        await self.connect()

    async def connect(self) -> None:
        ws = await open_socket(self.cfg, self.cookie)
        last_id = (await abort_unless(ws, welcome(ws)))["last_id"] or 0
        if self.start_id is None:
            self.start_id = self.last_id = last_id
        elif last_id > self.last_id:  # missed some while away: catch up first
            await ws.send(json.dumps({"type": "resume", "after": self.last_id}))
        self.ws = ws

    def summary(self, *, connected_at_end: bool) -> dict[str, Any]:
        """What the run's report keeps of this client."""
        return {
            "flaky": self.flaky,
            "start_id": self.start_id,
            "seen": sorted(self.seen),
            "duplicates": self.duplicates,
            "reconnects": self.reconnects,
            "sent": self.sent,
            "skipped": self.skipped,
            "errors": self.errors,
            "connected_at_end": connected_at_end,
        }

    def receive(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "chat":
            self.record(frame["id"], "live")
        elif kind == "history":
            for message in frame["messages"]:
                self.record(message["id"], "resume")
            if frame["has_more"] and self.ws is not None:
                # As the browser does: the next page follows this one.
                after = frame["messages"][-1]["id"]
                task = asyncio.ensure_future(self.ws.send(json.dumps({"type": "resume", "after": after})))
                self.sending.add(task)
                task.add_done_callback(self.sending.discard)
        elif kind == "error":
            self.errors[frame["code"]] = self.errors.get(frame["code"], 0) + 1

    def record(self, message_id: int, how: str) -> None:
        if message_id in self.seen:
            # Live twice, or across sockets, would break the contract; a resume answer that
            # overlaps live delivery on one socket is expected (the browser skips what it shows).
            first, socket = self.seen[message_id]
            key = f"{first} then {how}, {'same' if socket == self.reconnects else 'new'} socket"
            self.duplicates[key] = self.duplicates.get(key, 0) + 1
        else:
            self.seen[message_id] = (how, self.reconnects)
        self.last_id = max(self.last_id, message_id)

    async def read(self, every: float, drops_until: float) -> None:
        """Read this socket until it closes or (a flaky client, before ``drops_until``) its next drop."""
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        drop_at = loop.time() + every * random.uniform(0.5, 1.5) if self.flaky else None
        deadline = None if drop_at is None or drop_at > drops_until else drop_at
        try:
            while True:
                async with asyncio.timeout_at(deadline):
                    raw = await self.ws.recv()
                self.receive(json.loads(raw))
        except TimeoutError:
            await self.drop()
        except ConnectionClosed:
            pass
        self.ws = None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def drop(self) -> None:
        """Lose the socket: a clean close and a dropped connection in turn."""
        assert self.ws is not None
        if self.reconnects % 2:
            self.ws.transport.abort()
        else:
            await self.ws.close()

    async def live(self, until: float, every: float, drops_until: float) -> None:
        """Stay connected until ``until`` (loop time), reconnecting whenever the socket goes."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            if self.ws is None:
                try:
                    await self.connect()
                    self.reconnects += 1
                except Exception as exc:  # the server refused or was slow: try again
                    self.errors[describe(exc)] = self.errors.get(describe(exc), 0) + 1
                    await asyncio.sleep(0.5)
                    continue
            await self.read(every, drops_until)
            await asyncio.sleep(0.1)  # the browser's first retry comes quickly

    async def chat(self, start: float, stop: float, interval: float) -> None:
        """Send one message every ``interval`` s (from a random phase); skip while disconnected."""
        loop = asyncio.get_running_loop()
        due = start + random.uniform(0, interval)
        while due < stop:
            await asyncio.sleep(due - loop.time())
            try:
                if self.ws is None:
                    self.skipped += 1
                else:
                    await self.ws.send(chat_frame("project", f"soak:{time.time_ns()}"))
                    self.sent += 1
            except ConnectionClosed:
                self.skipped += 1
            due += interval


class SoakWorker(Worker):
    """The soak clients of one process; every 1/flaky-th client (by global index) is flaky."""

    def __init__(self, cfg: Config, ids: list[int], concurrency: int, flaky: float) -> None:
        super().__init__(cfg, ids, concurrency)
        self.every_nth = max(1, round(1 / flaky)) if flaky else 0
        self.commands["soak"] = self.soak

    def make_client(self, index: int) -> "SoakClient":
        return SoakClient(self.cfg_of(index), flaky=bool(self.every_nth) and index % self.every_nth == 0)

    async def soak(
        self, start_at: float, seconds: float, interval: float, every: float, drain: float
    ) -> dict[str, Any]:
        """Chat for ``seconds``, churning; then stop churning, let the clients catch up, report."""
        loop = asyncio.get_running_loop()
        start = loop.time() + (start_at - time.time())
        stop = start + seconds
        clients = list(self.clients.values())
        # Flaky clients stop dropping when the chat stops, so that all catch up during the drain.
        living = [loop.create_task(c.live(stop + drain, every, drops_until=stop)) for c in clients]
        await asyncio.gather(*(c.chat(start, stop, interval) for c in clients))
        await asyncio.sleep(max(0.0, stop + drain - loop.time()))
        connected_at_end = [c.ws is not None for c in clients]
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.gather(*living, return_exceptions=True)
        return {
            "clients": [c.summary(connected_at_end=at_end) for c, at_end in zip(clients, connected_at_end, strict=True)]
        }


async def stored_ids(cfg: Config) -> list[int]:
    """Every message id stored in the room, read through the protocol (``resume after 0``, page by page)."""
    ws = await open_socket(cfg, await page_cookie(cfg))
    await welcome(ws)
    ids: list[int] = []
    after = 0
    try:
        while True:
            await ws.send(json.dumps({"type": "resume", "after": after}))
            while (frame := json.loads(await ws.recv())).get("type") != "history":
                pass
            ids += [m["id"] for m in frame["messages"]]
            if not frame["has_more"]:
                return ids
            after = ids[-1]
    finally:
        await ws.close()


def soak(target: Target, load: Load, churn: Churn) -> dict[str, Any]:
    """Run the soak against the project; return the RSS series, its growth and the gaps."""
    room = new_room()
    cfg = Config(target.kind, target.host, target.port, room, load.open_timeout)
    pool = Pool(lambda ids, share: SoakWorker(cfg, ids, share, churn.flaky), load.clients, load.procs, load.concurrency)
    seconds = churn.minutes * 60
    interval = load.clients / load.rate  # each client's pause between two messages
    result: dict[str, Any] = {"load": vars(load).copy(), "churn": vars(churn).copy()}
    try:
        result["connect"] = connect_all(pool, target, load)
        start_at = time.time() + 1.0
        pool.send(
            "soak", start_at=start_at, seconds=seconds, interval=interval, every=churn.reconnect_every, drain=load.drain
        )
        series = []
        next_sample = start_at
        while not pool.ready(0):
            if time.time() >= next_sample:
                now = sample(target.pid)
                if now is not None:
                    series.append((round(time.time() - start_at, 1), round(now.rss_kb / 1024, 1)))
                    print(f"  soak t={series[-1][0]:6.1f} s: server RSS {series[-1][1]} MB", flush=True)
                next_sample += SAMPLE_EVERY
            time.sleep(0.2)
        clients = [c for answer in pool.collect() for c in answer["clients"]]
    finally:
        pool.close()
    stored = asyncio.run(stored_ids(cfg))
    result.update(rss_series_mb=series, **_growth(series, seconds), **_gaps(clients, stored))
    _print(result)
    return result


def _growth(series: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """RSS growth from the first sample after the warm-up minute to the last one while chatting."""
    chatting = [(t, mb) for t, mb in series if t <= seconds]
    warm = [(t, mb) for t, mb in chatting if t >= min(WARM_UP, seconds / 2)]
    if len(warm) < 2:
        return {"rss_growth_mb": None}
    (t0, mb0), (t1, mb1) = warm[0], warm[-1]
    return {
        "rss_growth_mb": round(mb1 - mb0, 1),
        "rss_growth_window_s": round(t1 - t0, 1),
        "rss_growth_mb_per_min": round((mb1 - mb0) / (t1 - t0) * 60, 2) if t1 > t0 else None,
    }


def _gaps(clients: list[dict[str, Any]], stored: list[int]) -> dict[str, Any]:
    """Count stored ids each client should have received (after its first welcome) but never did."""
    gaps = affected = 0
    for c in clients:
        if not c["connected_at_end"] or c["start_id"] is None:
            continue
        missing = {i for i in stored if i > c["start_id"]} - set(c["seen"])
        gaps += len(missing)
        affected += bool(missing)
    return {
        "clients": len(clients),
        "flaky_clients": sum(c["flaky"] for c in clients),
        "reconnects": sum(c["reconnects"] for c in clients),
        "sent": sum(c["sent"] for c in clients),
        "skipped_while_away": sum(c["skipped"] for c in clients),
        "stored": len(stored),
        "received": sum(len(c["seen"]) for c in clients),
        "duplicates": _sum_counts(c["duplicates"] for c in clients),
        "not_connected_at_end": sum(not c["connected_at_end"] for c in clients),
        "gaps": gaps,
        "clients_with_gaps": affected,
        "errors": _sum_counts(c["errors"] for c in clients),
    }


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def _print(r: dict[str, Any]) -> None:
    print(
        f"  soak: {r['clients']} clients ({r['flaky_clients']} flaky, {r['reconnects']} reconnects), "
        f"{r['sent']} sent ({r['skipped_while_away']} skipped while away), {r['stored']} stored, "
        f"{r['received']} received; gaps {r['gaps']} (in {r['clients_with_gaps']} clients), duplicates "
        f"{r['duplicates'] or 0}, not connected at the end {r['not_connected_at_end']}"
        f"{'; errors ' + str(r['errors']) if r['errors'] else ''}",
        flush=True,
    )
    if r.get("rss_growth_mb") is not None:
        print(
            f"  soak: server RSS grew {r['rss_growth_mb']} MB over {r['rss_growth_window_s']} s after the "
            f"warm-up ({r['rss_growth_mb_per_min']} MB/min)",
            flush=True,
        )
