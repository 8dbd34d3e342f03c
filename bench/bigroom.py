"""The big room: thousands of browsers join one room on one server process, then a few of them chat.

Each client is a browser (page load for its cookie, the socket, ready at
``welcome``), opened ``concurrency`` at a time over a few worker processes.
While they join, the server's RSS and open sockets are sampled every second;
after the last one, the room settles for a few seconds. What is measured:

- the door: joins/s, time until all joined, failures by cause;
- the server's memory: RSS before, at its peak (``VmHWM``), with everyone in
  the room and after they left; KB per socket;
- presence, which the snapshot + diff design bounds (PROTOCOL.md §3): the
  snapshot's size and listed people, the ``presence_diff`` bytes each client
  received per second while the others joined and after, per second of the
  run against the room's size (it must not grow with the room), the
  shortest gap between two diffs to one tab (at most one a second), and the
  count each client last saw (the room's size once it has settled);
- then K senders send R messages/s in all for T s (``scenarios.step``:
  delivery and one-way latency), and every client closes (the drain).

The client side: websockets connections, about 2,500 per worker process at
the defaults; each client keeps a few integers beyond its socket, and each
worker reports its own RSS per socket.
"""

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from websockets import ConnectionClosed
from websockets.asyncio.client import ClientConnection

from bench.clients import Client, Config, Pool, Tally, Worker
from bench.report import rank_percentile
from bench.scenarios import Load, connect_all, new_room, step, warm_up
from bench.servers import Target, open_files, peak_rss_kb, sample

SETTLE = 5.0  # seconds between the last join and the presence reading (and the send window)
MIN_WINDOW = 2.0  # a client's own rate counts once it was connected this long in a window
SHORT_GAP = 0.9  # two diffs to one tab closer than this (s) break "at most one a second" (with jitter)


class PresenceTotals:
    """A worker's presence bytes per wall-clock second and its clients' welcomes per second."""

    def __init__(self) -> None:
        self.diff_bytes: Counter[int] = Counter()  # second -> presence_diff bytes received
        self.welcomes: Counter[int] = Counter()  # second -> clients that got their welcome


class BigRoomClient(Client):
    """A browser tab that also keeps what presence sent it: a few numbers, no frames."""

    def __init__(self, cfg: Config, tally: Tally, totals: PresenceTotals) -> None:
        super().__init__(cfg, tally)
        self.totals = totals
        self.welcome_at = 0.0
        self.count: int | None = None  # the room's count in the last presence frame
        self.snapshots = self.snapshot_bytes = self.snapshot_users = 0
        self.diffs = self.diff_bytes = 0
        self.last_diff_at = 0.0
        self.min_gap = float("inf")
        self.mark_at = 0.0  # when the joins ended (``mark``), and what had come by then
        self.mark_bytes = 0

    async def open(self) -> None:
        await super().open()
        self.welcome_at = time.time()
        self.totals.welcomes[int(self.welcome_at)] += 1

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.time_ns()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "presence":
                    self.snapshots += 1
                    self.snapshot_bytes += len(raw.encode() if isinstance(raw, str) else raw)
                    self.snapshot_users = max(self.snapshot_users, len(message.get("users", ())))
                    self.count = message.get("count")
                elif kind == "presence_diff":
                    size = len(raw.encode() if isinstance(raw, str) else raw)
                    at = now / 1e9
                    if self.diffs:
                        self.min_gap = min(self.min_gap, at - self.last_diff_at)
                    self.diffs += 1
                    self.diff_bytes += size
                    self.last_diff_at = at
                    self.totals.diff_bytes[int(at)] += size
                    self.count = message.get("count")
                else:
                    self.tally.message(self.cfg.kind, message, now)
        except ConnectionClosed:
            pass


class BigRoomWorker(Worker):
    """The big room's clients of one process; ``mark`` notes the end of the joins, ``presence`` reports."""

    def __init__(self, cfgs: Config | Sequence[Config], ids: list[int], concurrency: int) -> None:
        super().__init__(cfgs, ids, concurrency)
        self.totals = PresenceTotals()
        self.rss_start_kb = _own_rss_kb()  # this process before its clients
        self.commands.update(mark=self.mark, presence=self.presence)

    def make_client(self, index: int) -> BigRoomClient:
        return BigRoomClient(self.cfg_of(index), self.tallies[self.server_of(index)], self.totals)

    async def mark(self) -> dict[str, Any]:
        now = time.time()
        for client in self.clients.values():
            client.mark_at, client.mark_bytes = now, client.diff_bytes
        return {"at": now}

    async def presence(self) -> dict[str, Any]:
        """What presence sent this worker's clients: sums, per-client rates (during and after the joins)."""
        now = time.time()
        clients: list[BigRoomClient] = list(self.clients.values())
        during_bytes = sum(c.mark_bytes for c in clients)
        during_s = sum(max(0.0, c.mark_at - c.welcome_at) for c in clients)
        after_bytes = sum(c.diff_bytes - c.mark_bytes for c in clients)
        after_s = sum(now - c.mark_at for c in clients)
        gaps = [c.min_gap for c in clients if c.min_gap != float("inf")]
        return {
            "clients": len(clients),
            "open": sum(c.open_now for c in clients),
            "counts": dict(Counter(c.count for c in clients)),
            "snapshots": sum(c.snapshots for c in clients),
            "snapshot_bytes": sum(c.snapshot_bytes for c in clients),
            "snapshot_bytes_max": max((c.snapshot_bytes for c in clients if c.snapshots), default=0),
            "snapshot_users_max": max((c.snapshot_users for c in clients), default=0),
            "diffs": sum(c.diffs for c in clients),
            "diff_bytes": sum(c.diff_bytes for c in clients),
            "during": {
                "bytes": during_bytes,
                "client_s": during_s,
                "rates": [
                    round(c.mark_bytes / (c.mark_at - c.welcome_at), 1)
                    for c in clients
                    if c.mark_at - c.welcome_at >= MIN_WINDOW
                ],
            },
            "after": {
                "bytes": after_bytes,
                "client_s": after_s,
                "rates": [
                    round((c.diff_bytes - c.mark_bytes) / (now - c.mark_at), 1)
                    for c in clients
                    if now - c.mark_at >= MIN_WINDOW
                ],
            },
            "gap_min_s": min(gaps, default=None),
            "short_gaps": sum(g < SHORT_GAP for g in gaps),
            "by_second": dict(self.totals.diff_bytes),
            "welcomes": dict(self.totals.welcomes),
            "rss_kb": _own_rss_kb(),
            "rss_start_kb": self.rss_start_kb,
        }


def _own_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def _rate_figures(answers: list[dict[str, Any]], window: str) -> dict[str, Any]:
    """Presence diff bytes per client per second in one window: over all client-seconds, and per client."""
    total = sum(a[window]["bytes"] for a in answers)
    client_s = sum(a[window]["client_s"] for a in answers)
    rates = [r for a in answers for r in a[window]["rates"]]
    return {
        "bytes": total,
        "bytes_per_client_s": round(total / client_s, 1) if client_s else None,
        "clients_measured": len(rates),
        "per_client_p50": rank_percentile(rates, 50),
        "per_client_p99": rank_percentile(rates, 99),
        "per_client_max": rank_percentile(rates, 100),
    }


def by_second(answers: list[dict[str, Any]], start: float, end: float) -> list[list[float]]:
    """[seconds since the start, clients in the room, presence diff bytes per client] for each second."""
    diff: Counter[int] = Counter()
    welcomes: Counter[int] = Counter()
    for a in answers:
        diff.update({int(k): v for k, v in a["by_second"].items()})
        welcomes.update({int(k): v for k, v in a["welcomes"].items()})
    rows, joined = [], 0
    for second in range(int(start), int(end) + 1):
        joined += welcomes.get(second, 0)
        if joined:
            rows.append([second - int(start), joined, round(diff.get(second, 0) / joined, 1)])
    return rows


def by_room_size(rows: list[list[float]], clients: int, parts: int = 4) -> list[dict[str, Any]]:
    """The per-second rows grouped by how full the room was (quarters of ``clients``): mean bytes per client/s."""
    groups: list[dict[str, Any]] = []
    for p in range(parts):
        low, high = p * clients / parts, (p + 1) * clients / parts
        values = [r[2] for r in rows if low < r[1] <= high]
        groups.append(
            {
                "room_size": f"{int(low) + 1}-{int(high)}",
                "seconds": len(values),
                "bytes_per_client_s": round(sum(values) / len(values), 1) if values else None,
            }
        )
    return groups


def bigroom(
    target: Target, load: Load, *, settle: float = SETTLE, join_deadline: float | None = None
) -> dict[str, Any]:
    """N browsers join one room, presence is read, K senders chat, all leave: the figures (see the module)."""
    room = new_room()
    cfg = Config(target.kind, target.host, target.port, room, load.open_timeout)
    warm_up(target, room)
    time.sleep(1)
    before = sample(target.pid)
    result: dict[str, Any] = {
        "load": vars(load).copy(),
        "settle_s": settle,
        "join_deadline_s": join_deadline,
        "server_pid": target.pid,
    }
    series: list[list[float]] = []  # [s since the joins began, server RSS MB, server open files]

    def watch(seconds: float) -> None:
        now = sample(target.pid)
        if now is not None:
            series.append([round(seconds, 1), round(now.rss_kb / 1024, 1), open_files(target.pid) or 0])
            if len(series) % 10 == 1:
                print(
                    f"  joining t={seconds:5.0f} s: server RSS {series[-1][1]} MB, {series[-1][2]} open files",
                    flush=True,
                )

    pool = Pool(lambda ids, share: BigRoomWorker(cfg, ids, share), load.clients, load.procs, load.concurrency)
    try:
        joins_started = time.time()
        result["connect"] = joined = connect_all(pool, target, load, deadline=join_deadline, while_waiting=watch)
        pool.call("mark")
        joins_ended = time.time()
        connected = joined["ok"]
        settle_end = joins_ended + settle
        while time.time() < settle_end:
            watch(time.time() - joins_started)
            time.sleep(min(1.0, max(0.0, settle_end - time.time())))
        held = sample(target.pid)
        presence = pool.call("presence")
        result["presence"] = presence_figures(presence, connected, joins_started, joins_ended)
        result["client"] = {
            "workers": len(presence),
            "rss_mb": [round(a["rss_kb"] / 1024, 1) for a in presence],
            # What the workers grew by holding their sockets, per socket.
            "kb_per_socket": round(sum(a["rss_kb"] - a["rss_start_kb"] for a in presence) / max(1, connected), 1),
        }
        _print_presence(result)
        if connected:
            result["chat"] = step(pool, target, load, connected, "chat", load.rate, load.duration)
    finally:
        closing = time.time()
        pool.close()
        result["drain_s"] = round(time.time() - closing, 1)
    time.sleep(3)
    after = sample(target.pid)
    result["server_series"] = series
    result["memory"] = memory_figures(before, held, after, peak_rss_kb(target.pid), connected)
    _print(result)
    return result


def presence_figures(answers: list[dict[str, Any]], connected: int, start: float, end: float) -> dict[str, Any]:
    counts: Counter[Any] = Counter()
    for a in answers:
        counts.update(a["counts"])
    seen = [int(k) for k in counts if k is not None]
    rows = by_second(answers, start, end)
    snapshots = sum(a["snapshots"] for a in answers)
    return {
        "snapshots": snapshots,
        "snapshot_bytes_mean": round(sum(a["snapshot_bytes"] for a in answers) / snapshots, 1) if snapshots else None,
        "snapshot_bytes_max": max(a["snapshot_bytes_max"] for a in answers),
        "snapshot_users_max": max(a["snapshot_users_max"] for a in answers),
        "diffs": sum(a["diffs"] for a in answers),
        "diff_bytes": sum(a["diff_bytes"] for a in answers),
        "during_joins": _rate_figures(answers, "during"),
        "after_joins": _rate_figures(answers, "after"),
        "by_room_size": by_room_size(rows, connected),
        "by_second": rows,
        "diff_gap_min_s": min((a["gap_min_s"] for a in answers if a["gap_min_s"] is not None), default=None),
        "diff_gaps_under_0_9_s": sum(a["short_gaps"] for a in answers),
        "last_count": {
            "expected": connected,
            "matching": counts.get(connected, 0),
            "none": counts.get(None, 0),
            "min": min(seen, default=None),
            "max": max(seen, default=None),
            "values": {str(k): n for k, n in counts.most_common(10)},
        },
    }


def memory_figures(before: Any, held: Any, after: Any, peak_kb: int | None, connected: int) -> dict[str, Any]:
    if before is None or held is None:
        return {}
    return {
        "rss_before_mb": round(before.rss_kb / 1024, 1),
        "rss_held_mb": round(held.rss_kb / 1024, 1),
        "rss_peak_mb": round(peak_kb / 1024, 1) if peak_kb else None,
        "rss_after_mb": round(after.rss_kb / 1024, 1) if after else None,
        "kb_per_socket": round((held.rss_kb - before.rss_kb) / max(1, connected), 1),
        "peak_kb_per_socket": round((peak_kb - before.rss_kb) / max(1, connected), 1) if peak_kb else None,
    }


def _print_presence(r: dict[str, Any]) -> None:
    p = r["presence"]
    if p:
        d, a, last = p["during_joins"], p["after_joins"], p["last_count"]
        print(
            f"  presence: snapshot {p['snapshot_bytes_mean']} B mean, {p['snapshot_bytes_max']} B max, "
            f"<= {p['snapshot_users_max']} people listed; diffs per client per second: "
            f"{d['bytes_per_client_s']} B while joining (p99 {d['per_client_p99']}, max {d['per_client_max']}), "
            f"{a['bytes_per_client_s']} B after (max {a['per_client_max']}); by room size "
            + ", ".join(f"{g['room_size']}: {g['bytes_per_client_s']}" for g in p["by_room_size"])
            + f"; shortest gap between two diffs {p['diff_gap_min_s'] and round(p['diff_gap_min_s'], 3)} s; "
            f"last count seen = {last['expected']} by {last['matching']} clients "
            f"(min {last['min']}, max {last['max']}, none {last['none']}); client "
            f"{r['client']['kb_per_socket']} KB per socket",
            flush=True,
        )


def _print(r: dict[str, Any]) -> None:
    c, m = r["connect"], r.get("memory", {})
    if m:
        print(
            f"  memory: server RSS {m['rss_before_mb']} MB before, peak {m['rss_peak_mb']} MB, "
            f"{m['rss_held_mb']} MB holding {c['ok']} = {m['kb_per_socket']} KB per socket, "
            f"{m['rss_after_mb']} MB after they left (closing took {r['drain_s']} s)",
            flush=True,
        )
