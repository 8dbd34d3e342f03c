"""The workloads against one server: ``fanout``, ``ramp``, ``connect`` and ``idle``.

Each opens its clients in a ``Pool``, drives them, samples the server from
/proc, prints one line per measurement and returns its figures as a dict.
"""

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.clients import Client, Config, Pool, Tally, Worker
from bench.report import merge_hists, percentiles, rank_percentile
from bench.servers import ProcSample, Target, sample

SATURATED = 0.9  # a client process busy this much of the send window may be the limit itself


@dataclass
class Load:
    """The workload's knobs (the command line's options)."""

    clients: int = 1000
    senders: int = 20
    rate: float = 20.0  # messages/s from all senders together
    duration: float = 10.0
    drain: float = 5.0  # wait after sending; later deliveries count as lost
    warmup: float = 2.0  # an unscored step first (a quarter of the rate): the server's pools and caches fill
    concurrency: int = 50
    procs: int = 2
    open_timeout: float = 30.0
    factor: float = 1.5
    max_steps: int = 10
    p99_max: float = 250.0
    min_delivered: float = 0.999
    hold: float = 5.0


def new_room() -> str:
    """A fresh room per run (``\\w`` only: the baseline's route), so no history is shared."""
    return f"bench_{uuid.uuid4().hex[:8]}"


def open_pool(target: Target, load: Load, room: str) -> Pool:
    cfg = Config(target.kind, target.host, target.port, room, load.open_timeout)
    return Pool(lambda ids, share: Worker(cfg, ids, share), load.clients, load.procs, load.concurrency)


def server_usage(before: ProcSample | None, after: ProcSample | None, seconds: float) -> dict[str, Any]:
    """The server's CPU use (1.0 = one core) over a window, and its RSS at the end."""
    if before is None or after is None:
        return {}
    return {"cpu": round((after.cpu_s - before.cpu_s) / seconds, 2), "rss_mb": round(after.rss_kb / 1024, 1)}


def _server_text(usage: dict[str, Any]) -> str:
    return f"; server CPU {usage['cpu']} RSS {usage['rss_mb']} MB" if usage else ""


def connect_all(pool: Pool, target: Target, load: Load) -> dict[str, Any]:
    """Open every client, ``concurrency`` at a time: connects/s, time to ready, failures."""
    start_at = time.time() + 0.5
    pool.send("connect", start_at=start_at)
    time.sleep(max(0.0, start_at - time.time()))
    before = sample(target.pid)
    answers = pool.collect()
    wall = max(a["end"] for a in answers) - start_at
    ready = [ms for a in answers for ms in a["ready_ms"]]
    failures = sum((Counter(a["failures"]) for a in answers), Counter())
    result = {
        "requested": load.clients, "concurrency": load.concurrency, "ok": len(ready),
        "failed": sum(failures.values()), "failures": dict(failures), "wall_s": round(wall, 2),
        "connects_per_s": round(len(ready) / wall, 1),
        "ready_ms": {"p50": rank_percentile(ready, 50), "p99": rank_percentile(ready, 99),
                     "max": rank_percentile(ready, 100)},
        "server": server_usage(before, sample(target.pid), wall),
    }
    r = result["ready_ms"]
    print(f"  connect: {len(ready)}/{load.clients} ready in {wall:.1f} s = {result['connects_per_s']}/s "
          f"({load.concurrency} at a time); ready ms p50 {r['p50']} p99 {r['p99']} max {r['max']}; "
          f"failures {dict(failures) or 0}{_server_text(result['server'])}", flush=True)
    return result


def step(pool: Pool, target: Target, load: Load, connected: int, tag: str, rate: float,
         duration: float) -> dict[str, Any]:
    """One paced send window at ``rate`` messages/s, then the drain: the figures of a fan-out."""
    start_at = time.time() + 1.0
    pool.send("step", tag=tag, rate=rate, senders=min(load.senders, connected), start_at=start_at,
              duration=duration, drain=load.drain)
    time.sleep(max(0.0, start_at - time.time()))
    before = sample(target.pid)  # the server is measured over the send window only
    time.sleep(max(0.0, start_at + duration - time.time()))
    usage = server_usage(before, sample(target.pid), duration)
    answers = pool.collect()
    sent, delivered = sum(a["sent"] for a in answers), sum(a["delivered"] for a in answers)
    expected = sent * connected  # everyone in the room gets every message, the sender its echo
    latency = percentiles(merge_hists(a["hist"] for a in answers))
    latency["max"] = round(max(a["max_us"] for a in answers) / 1000, 1)
    client_cpu = max(a["cpu_util"] for a in answers)
    result = {
        "tag": tag, "rate": rate, "clients": connected, "senders": min(load.senders, connected),
        "duration_s": duration, "offered_per_s": round(rate * connected, 1), "sent": sent,
        "send_failures": sum(a["send_failures"] for a in answers), "expected": expected, "delivered": delivered,
        "delivered_pct": round(100 * delivered / expected, 3) if expected else None,
        "deliveries_per_s": round(delivered / duration, 1), "latency_ms": latency,
        "errors": dict(sum((Counter(a["errors"]) for a in answers), Counter())),
        "stale": sum(a["stale"] for a in answers), "closed_by_server": sum(a["closed"] for a in answers),
        "server": usage, "client_cpu_max": round(client_cpu, 2), "client_saturated": client_cpu > SATURATED,
        "send_late_max_ms": round(max(a["late_max_ms"] for a in answers), 1),
    }
    result["pass"] = bool(expected and delivered >= load.min_delivered * expected
                          and latency["p99"] is not None and latency["p99"] <= load.p99_max)
    print(f"  {tag}: {rate:g} msg/s x {connected} clients: delivered {delivered}/{expected} "
          f"({result['delivered_pct']} %) = {result['deliveries_per_s']:g}/s; latency ms p50 {latency['p50']} "
          f"p95 {latency['p95']} p99 {latency['p99']} max {latency['max']}{_server_text(usage)}; "
          f"client CPU {client_cpu:.2f}{' CLIENT SATURATED' if result['client_saturated'] else ''}, "
          f"sends late by up to {result['send_late_max_ms']:g} ms"
          f"{'; errors ' + str(result['errors']) if result['errors'] else ''}"
          f"{'; closed by server ' + str(result['closed_by_server']) if result['closed_by_server'] else ''}"
          f" -> {'PASS' if result['pass'] else 'FAIL'}", flush=True)
    return result


def fanout(target: Target, load: Load, *, ramp: bool = False) -> dict[str, Any]:
    """``clients`` in one room, ``senders`` of them sending: one step, or a ramp of steps."""
    pool = open_pool(target, load, new_room())
    result: dict[str, Any] = {"load": vars(load).copy()}
    try:
        result["connect"] = connect_all(pool, target, load)
        connected = result["connect"]["ok"]
        if not connected:
            return result
        if load.warmup:
            # At a quarter of the rate: an overloaded warm-up would leave a backlog that the measured step inherits.
            result["warmup"] = step(pool, target, load, connected, "warmup", load.rate / 4, load.warmup)
        rate, steps = load.rate, []
        for n in range(load.max_steps if ramp else 1):
            steps.append(step(pool, target, load, connected, f"step{n}", rate, load.duration))
            if not steps[-1]["pass"]:
                break
            rate = round(rate * load.factor, 2)
        result["steps"] = steps
        if ramp:
            passed = [s for s in steps if s["pass"]]
            best = passed[-1] if passed else None
            result["best"] = best and {k: best[k] for k in ("rate", "deliveries_per_s", "latency_ms")}
            print(f"  ramp: highest passing rate {best and best['rate']} msg/s = "
                  f"{best and best['deliveries_per_s']} deliveries/s (p99 <= {load.p99_max:g} ms, "
                  f">= {100 * load.min_delivered:g} % delivered)", flush=True)
    finally:
        pool.close()
    return result


def connect(target: Target, load: Load) -> dict[str, Any]:
    """Open ``clients`` connections ``concurrency`` at a time, then close them."""
    pool = open_pool(target, load, new_room())
    try:
        return {"load": vars(load).copy(), "connect": connect_all(pool, target, load)}
    finally:
        pool.close()


def warm_up(target: Target, room: str) -> None:
    """Open and close one client, so that first-use costs (imports, pools) are not counted."""
    async def once() -> None:
        client = Client(Config(target.kind, target.host, target.port, room), Tally())
        await client.open()
        await client.close()

    asyncio.run(once())


def idle(target: Target, load: Load) -> dict[str, Any]:
    """Hold ``clients`` idle connections: the server's memory per connection."""
    room = new_room()
    warm_up(target, room)
    time.sleep(1)
    before = sample(target.pid)
    pool = open_pool(target, load, room)
    try:
        result = {"load": vars(load).copy(), "connect": connect_all(pool, target, load)}
        time.sleep(load.hold)  # let presence settle
        held = sample(target.pid)
    finally:
        pool.close()
    time.sleep(3)
    after = sample(target.pid)
    if before and held and after:
        ok = max(1, result["connect"]["ok"])
        result["memory"] = {"rss_before_mb": round(before.rss_kb / 1024, 1),
                            "rss_held_mb": round(held.rss_kb / 1024, 1),
                            "rss_after_close_mb": round(after.rss_kb / 1024, 1),
                            "kb_per_connection": round((held.rss_kb - before.rss_kb) / ok, 1)}
        m = result["memory"]
        print(f"  idle: RSS {m['rss_before_mb']} MB before, {m['rss_held_mb']} MB holding {ok} connections "
              f"= {m['kb_per_connection']} KB each; {m['rss_after_close_mb']} MB after closing them", flush=True)
    return result
