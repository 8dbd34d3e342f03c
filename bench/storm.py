"""The reconnect storm: every tab of a room loses its socket at once and comes back at once.

N browsers are connected to one room (page load, socket, ``welcome``). At one
moment the server process is restarted (``restart``: SIGTERM, as a deploy
does; ``kill``: SIGKILL, as a crash) and started again on the same port, or
every client drops its socket at once while the server stays (``drop``: a
network blip, a proxy restart). Every tab then reconnects as ``chat.js``
does (``jitter``: before attempt n a random wait in [0, min(15, 0.5·2^n)) s,
so the first within a second) or, the worst case, with no backoff
(``none``: at once, and a failed attempt again after ``retry_every`` s).
Back means ``welcome`` received; a tab that finds newer messages than its
own sends ``resume`` after the newest id it has, as the browser does.

A few senders chat from a second before the storm until every tab is back
and at least ``duration`` s have passed (skipping while their own socket is
down; a message without an echo is sent again after the next ``welcome``
with its ``client_id``, as ``chat.js`` does); the messages sent while some tab
was still away are counted (``sent_during_storm``), and those never stored
(``sent_not_stored``: still without an echo at the end). Afterwards every message stored
in the room (read back with ``resume after 0``) must have reached every tab,
live or through its resume: a stored id a tab never received is a gap, as
in the soak.

Reported: time until all are back (from the storm's start, and for a restart
from the moment the new process answered), how many came back each second,
failed attempts by cause, the server's RSS and open sockets every second,
and the gaps.
"""

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from typing import Any

from websockets import ConnectionClosed

from bench.clients import Config, Pool, Worker, describe, page_cookie
from bench.report import rank_percentile
from bench.scenarios import Load, connect_all, new_room
from bench.servers import Target, open_files, sample
from bench.soak import SoakClient, _gaps, stored_ids

CAUSES = ("restart", "kill", "drop")
BACKOFFS = ("jitter", "none")
LEAD = 1.0  # the senders start this long before the storm


def backoff_delay(backoff: str, attempt: int, retry_every: float) -> float:
    """The wait before reconnect attempt ``attempt`` (1 = the first after the drop), as chat.js waits."""
    if backoff == "jitter":
        return random.random() * min(15.0, 0.5 * 2**attempt)
    return 0.0 if attempt == 1 else retry_every


class StormClient(SoakClient):
    """A browser tab that, once its socket goes, reconnects with a backoff and times its return.

    A sender also does what ``chat.js`` does with a message that got no echo: it
    keeps it (by ``client_id``) and sends it again after the next ``welcome``;
    the server stores a ``client_id`` once.
    """

    def __init__(self, cfg: Config, backoff: str, retry_every: float) -> None:
        super().__init__(cfg, flaky=False)
        self.backoff, self.retry_every = backoff, retry_every
        self.down_at: float | None = None
        self.back_at: float | None = None
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.settled = asyncio.Event()  # back, or given up (or never dropped)
        self.sent_at: list[float] = []  # wall times of this tab's messages (first sends)
        self.pending: dict[str, str] = {}  # client_id -> frame, sent without an echo yet
        self.resent = 0

    def receive(self, frame: dict[str, Any]) -> None:
        if self.pending:
            if frame.get("type") == "chat":
                self.pending.pop(frame.get("client_id") or "", None)
            elif frame.get("type") == "history":
                for message in frame.get("messages", ()):
                    self.pending.pop(message.get("client_id") or "", None)
        super().receive(frame)

    async def send_chat(self) -> None:
        """A new message (skipped while the socket is down, as a tab that cannot send)."""
        if self.ws is None:
            self.skipped += 1
            return
        client_id = uuid.uuid4().hex
        frame = json.dumps({"type": "chat", "text": f"storm:{time.time_ns()}", "client_id": client_id})
        self.pending[client_id] = frame
        self.sent += 1
        self.sent_at.append(time.time())
        with contextlib.suppress(ConnectionClosed):  # sent again after the next welcome
            await self.ws.send(frame)

    async def resend_pending(self) -> None:
        assert self.ws is not None
        for frame in list(self.pending.values()):
            self.resent += 1
            await self.ws.send(frame)

    async def chat_through(self, start: float, stop: float, storm_over: asyncio.Event, interval: float) -> None:
        """Send one message every ``interval`` s from loop time ``start`` until ``stop`` and the storm's end."""
        loop = asyncio.get_running_loop()
        due = start
        while due < stop or not storm_over.is_set():
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.send_chat()
            due += interval

    async def read_socket(self, until: float | None) -> bool:
        """Read the socket until it closes (True) or until loop time ``until`` (False)."""
        assert self.ws is not None
        try:
            while True:
                async with asyncio.timeout_at(until):
                    raw = await self.ws.recv()
                self.receive(json.loads(raw))
        except ConnectionClosed:
            self.ws = None
            return True
        except TimeoutError:
            return False

    async def storm(self, give_up: float) -> None:
        """Read until the socket goes, reconnect until ``welcome`` (or loop time ``give_up``), read on."""
        loop = asyncio.get_running_loop()
        if self.ws is not None and not await self.read_socket(give_up):
            self.settled.set()  # never dropped
            return
        self.down_at = time.time()
        attempt = 0
        while True:
            attempt += 1
            delay = backoff_delay(self.backoff, attempt, self.retry_every)
            if loop.time() + delay >= give_up:
                break
            await asyncio.sleep(delay)
            self.attempts += 1
            try:
                await asyncio.wait_for(self.connect(), self.cfg.open_timeout)  # welcome, then resume if behind
                await self.resend_pending()
            except Exception as exc:  # every failed attempt is counted by cause
                self.ws = None
                self.failures[describe(exc)] += 1
                if isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == 4401:
                    try:  # no valid session: the browser reloads the page
                        self.cookie = await page_cookie(self.cfg)
                    except Exception as again:
                        self.failures["page: " + describe(again)] += 1
                continue
            self.back_at = time.time()
            self.reconnects += 1
            break
        self.settled.set()
        if self.ws is not None:
            await self.read_socket(None)  # until the worker closes it


class StormWorker(Worker):
    """The storm's tabs of one process: ``storm`` answers once they are all back, ``finish`` reports."""

    def __init__(self, cfg: Config, ids: list[int], concurrency: int, backoff: str, retry_every: float) -> None:
        super().__init__(cfg, ids, concurrency)
        self.backoff, self.retry_every = backoff, retry_every
        self.commands.update(storm=self.storm, finish=self.finish)
        self.at = 0.0
        self.living: list[asyncio.Task[None]] = []
        self.chatting: list[asyncio.Task[None]] = []
        self.storm_over = asyncio.Event()

    def make_client(self, index: int) -> StormClient:
        return StormClient(self.cfg_of(index), self.backoff, self.retry_every)

    async def storm(
        self, at: float, drop: bool, timeout: float, senders: int, rate: float, duration: float
    ) -> dict[str, Any]:
        """The storm at wall time ``at`` (``drop``: abort every socket then); answer when all are back."""
        loop = asyncio.get_running_loop()
        self.at = at
        t0 = loop.time() + (at - time.time())
        clients: dict[int, StormClient] = self.clients
        self.living = [loop.create_task(c.storm(t0 + timeout)) for c in clients.values()]
        # The senders go on until every worker's tabs are back (``finish``) and ``duration`` has passed.
        self.chatting = [
            loop.create_task(c.chat_through(t0 - LEAD, t0 + duration, self.storm_over, senders / rate))
            for i, c in clients.items()
            if i < senders
        ]
        if drop:
            await asyncio.sleep(max(0.0, t0 - loop.time()))
            for client in clients.values():
                if client.ws is not None:
                    client.ws.transport.abort()
        await asyncio.gather(*(c.settled.wait() for c in clients.values()))
        return {"settled_at": time.time()}

    async def finish(self, drain: float) -> dict[str, Any]:
        """Stop sending (once ``duration`` is over), let every tab catch up for ``drain`` s, close, report."""
        self.storm_over.set()
        await asyncio.gather(*self.chatting)
        await asyncio.sleep(drain)
        clients: dict[int, StormClient] = self.clients
        connected_at_end = {i: c.ws is not None for i, c in clients.items()}
        await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
        await asyncio.gather(*self.living, return_exceptions=True)
        self.clients = {}  # closed here: nothing left for the pool's close
        at = self.at
        return {
            "clients": [
                c.summary(connected_at_end=connected_at_end[i])
                | {
                    "down_s": None if c.down_at is None else round(c.down_at - at, 3),
                    "back_s": None if c.back_at is None else round(c.back_at - at, 3),
                    "attempts": c.attempts,
                    "failures": dict(c.failures),
                    "sent_at_s": [round(t - at, 3) for t in c.sent_at],
                    "resent": c.resent,
                    "not_stored": len(c.pending),
                }
                for i, c in clients.items()
            ]
        }


def storm(
    target: Target,
    load: Load,
    *,
    cause: str = "restart",
    backoff: str = "jitter",
    timeout: float = 120.0,
    retry_every: float = 0.1,
) -> dict[str, Any]:
    """Connect ``load.clients`` tabs, storm them, and report how they came back and what they missed."""
    if cause not in CAUSES or backoff not in BACKOFFS:
        raise ValueError(f"cause: one of {CAUSES}; backoff: one of {BACKOFFS}")
    room = new_room()
    cfg = Config(target.kind, target.host, target.port, room, load.open_timeout)
    pool = Pool(
        lambda ids, share: StormWorker(cfg, ids, share, backoff, retry_every),
        load.clients,
        load.procs,
        load.concurrency,
    )
    result: dict[str, Any] = {
        "load": vars(load).copy(),
        "cause": cause,
        "backoff": backoff,
        "retry_every_s": retry_every if backoff == "none" else None,
        "timeout_s": timeout,
    }
    series: list[list[float]] = []  # [s since the storm, server RSS MB, open files, CPU s]
    try:
        result["connect"] = connect_all(pool, target, load)
        senders = min(load.senders, result["connect"]["ok"])
        time.sleep(2)  # presence settles
        before = sample(target.pid)
        at = time.time() + LEAD + 1.0
        pool.send(
            "storm",
            at=at,
            drop=cause == "drop",
            timeout=timeout,
            senders=senders,
            rate=load.rate,
            duration=load.duration,
        )
        time.sleep(max(0.0, at - time.time()))
        print(f"  storm: {cause} at t=0, clients reconnect with {backoff} backoff", flush=True)
        if cause in ("restart", "kill"):
            result["restart"] = target.restart(kill=cause == "kill")
            result["restart"]["up_s"] = round(time.time() - at, 2)  # the new process answers /healthz
            print(
                f"  storm: server {'killed' if cause == 'kill' else 'stopped'} in {result['restart']['stop_s']} s, "
                f"up again at t={result['restart']['up_s']} s (pid {target.pid})",
                flush=True,
            )
        next_sample = time.time()
        while True:
            if time.time() >= next_sample:  # at least once, then every second until all are back
                now = sample(target.pid)
                if now is not None:
                    series.append(
                        [
                            round(time.time() - at, 1),
                            round(now.rss_kb / 1024, 1),
                            open_files(target.pid) or 0,
                            now.cpu_s,
                        ]
                    )
                next_sample += 1.0
            if pool.ready(0):
                break
            time.sleep(0.1)
        pool.collect()  # every worker's tabs are back (or given up)
        answers = pool.call("finish", drain=load.drain)
    finally:
        pool.close()
    clients = [c for a in answers for c in a["clients"]]
    stored = asyncio.run(stored_ids(cfg))
    result.update(
        back_figures(clients, result.get("restart")),
        server_series=series,
        **server_figures(before, sample(target.pid), series, cause),
    )
    result["messages"] = _gaps(clients, stored)
    sent_at = [t for c in clients for t in c["sent_at_s"]]
    last_back = result["back_s"]["max"] or 0.0
    result["messages"]["sent_before_storm"] = sum(t <= 0 for t in sent_at)
    result["messages"]["sent_during_storm"] = sum(0 < t <= last_back for t in sent_at)
    # chat.js sends a message again after the next welcome until its echo comes: one still without
    # an echo at the end was never stored (a loss the gap count cannot see).
    result["messages"]["resent"] = sum(c["resent"] for c in clients)
    result["messages"]["sent_not_stored"] = sum(c["not_stored"] for c in clients)
    _print(result)
    return result


def back_figures(clients: list[dict[str, Any]], restart: dict[str, float] | None) -> dict[str, Any]:
    """How the tabs came back: when, how fast, after how many attempts, and what failed."""
    dropped = [c for c in clients if c["down_s"] is not None]
    back = sorted(c["back_s"] for c in dropped if c["back_s"] is not None)
    failures: Counter[str] = Counter()
    for c in clients:
        failures.update(c["failures"])
    last = back[-1] if back else None
    all_back = last if back and len(back) == len(dropped) else None
    per_second = Counter(int(b) for b in back)
    figures: dict[str, Any] = {
        "clients": len(clients),
        "dropped": len(dropped),
        "never_dropped": len(clients) - len(dropped),
        "back": len(back),
        "not_back": len(dropped) - len(back),
        "all_back_s": all_back,
        "back_s": {
            "p50": rank_percentile(back, 50),
            "p90": rank_percentile(back, 90),
            "p99": rank_percentile(back, 99),
            "max": last,
        },
        "reconnects_per_s": round(len(back) / last, 1) if last else None,
        "back_by_second": [[s, per_second.get(s, 0)] for s in range(int(last) + 1)] if last is not None else [],
        "peak_reconnects_in_one_s": max(per_second.values(), default=0),
        "attempts": sum(c["attempts"] for c in clients),
        "attempts_max": max((c["attempts"] for c in clients), default=0),
        "failed_attempts": sum(failures.values()),
        "failures": dict(failures.most_common(10)),
    }
    if restart is not None and last is not None:
        # up_s is when /healthz first answered (polled every 0.2 s): the tabs may beat it.
        after_up = max(0.0, last - restart["up_s"])
        figures["all_back_after_server_up_s"] = round(after_up, 2) if all_back is not None else None
        figures["reconnects_per_s_after_server_up"] = round(len(back) / after_up, 1) if after_up > 0 else None
    return figures


def server_figures(before: Any, after: Any, series: list[list[float]], cause: str) -> dict[str, Any]:
    if before is None or after is None:
        return {"server": {}}
    figures = {
        "rss_before_mb": round(before.rss_kb / 1024, 1),
        "rss_after_mb": round(after.rss_kb / 1024, 1),
        "open_files_peak": max((s[2] for s in series), default=None),
    }
    if series:
        # CPU seconds over the storm: the new process's whole life after a restart, else since the storm.
        start_cpu = 0.0 if cause in ("restart", "kill") else before.cpu_s
        figures["cpu_s_during"] = round(series[-1][3] - start_cpu, 2)
    return {"server": figures}


def _print(r: dict[str, Any]) -> None:
    b, m = r["back_s"], r["messages"]
    up = (
        f"; {r['all_back_after_server_up_s']} s after the new process answered "
        f"({r['reconnects_per_s_after_server_up']}/s)"
        if "all_back_after_server_up_s" in r
        else ""
    )
    print(
        f"  storm: {r['back']}/{r['dropped']} back (of {r['clients']}; {r['not_back']} not back, "
        f"{r['never_dropped']} never dropped); all back at {r['all_back_s']} s{up}; back s p50 {b['p50']} "
        f"p90 {b['p90']} p99 {b['p99']} max {b['max']}; {r['reconnects_per_s']}/s overall, peak "
        f"{r['peak_reconnects_in_one_s']} in one second; {r['attempts']} attempts, {r['failed_attempts']} failed "
        f"{r['failures'] or ''}",
        flush=True,
    )
    print(
        f"  storm messages: {m['sent']} sent ({m['sent_before_storm']} before the storm, {m['sent_during_storm']} "
        f"while tabs were still away; {m['skipped_while_away']} skipped while away; {m['resent']} sent again "
        f"after a reconnect, {m['sent_not_stored']} never stored), {m['stored']} stored, "
        f"{m['received']} received; gaps {m['gaps']} (in {m['clients_with_gaps']} clients), duplicates "
        f"{m['duplicates'] or 0}, not connected at the end {m['not_connected_at_end']}"
        f"{'; errors ' + str(m['errors']) if m['errors'] else ''}; server {r['server']}",
        flush=True,
    )
