"""The workloads: ``fanout``, ``ramp``, ``connect`` and ``idle`` against one server, ``scale`` against several.

Each opens its clients in a ``Pool``, drives them, samples the server from
/proc, prints one line per measurement and returns its figures as a dict.
``fanout`` and ``connect`` also take several servers of one room (processes
sharing Redis): clients go to them round-robin, each process is sampled,
and every step counts what each server's clients received, message by
message. ``scale`` runs the same ramp against one process, then two.
"""

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from bench.clients import Client, Config, Pool, Tally, Worker, server_of
from bench.report import merge_hists, percentiles, rank_percentile
from bench.servers import ProcSample, Target, machine_busy, sample, sample_machine

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


# One server, or several processes serving one room (they share the channel layer through Redis).
Targets = Target | Sequence[Target]


def as_list(targets: Targets) -> list[Target]:
    return [targets] if isinstance(targets, Target) else list(targets)


def new_room() -> str:
    """A fresh room per run (``\\w`` only: the baseline's route), so no history is shared."""
    return f"bench_{uuid.uuid4().hex[:8]}"


def open_pool(targets: Targets, load: Load, room: str) -> Pool:
    """The clients of ``room``; with several servers, client i goes to server i % servers.

    (Client i also belongs to worker i % procs: with as many servers as workers, each
    worker process holds one server's clients.)
    """
    cfgs = [Config(t.kind, t.host, t.port, room, load.open_timeout) for t in as_list(targets)]
    return Pool(lambda ids, share: Worker(cfgs, ids, share), load.clients, load.procs, load.concurrency)


def sample_all(targets: Targets) -> list[ProcSample | None]:
    return [sample(t.pid) for t in as_list(targets)]


def server_usage(before: ProcSample | None, after: ProcSample | None, seconds: float) -> dict[str, Any]:
    """The server's CPU use (1.0 = one core) over a window, and its RSS at the end."""
    if before is None or after is None:
        return {}
    return {"cpu": round((after.cpu_s - before.cpu_s) / seconds, 2), "rss_mb": round(after.rss_kb / 1024, 1)}


def servers_usage(before: list[ProcSample | None], after: list[ProcSample | None], seconds: float) -> dict[str, Any]:
    """``server_usage`` of one server; of several, their sums and each process's own (``processes``)."""
    each = [server_usage(b, a, seconds) for b, a in zip(before, after, strict=True)]
    if len(each) == 1:
        return each[0]
    if not all(each):
        return {}
    return {
        "cpu": round(sum(u["cpu"] for u in each), 2),
        "rss_mb": round(sum(u["rss_mb"] for u in each), 1),
        "processes": each,
    }


def cpu_text(usage: dict[str, Any]) -> str:
    """Server CPU as printed: ``0.42``, or per process ``0.25+0.21``."""
    if not usage:
        return "?"
    return "+".join(str(u["cpu"]) for u in usage["processes"]) if "processes" in usage else str(usage["cpu"])


def _server_text(usage: dict[str, Any]) -> str:
    if not usage:
        return ""
    rss = "+".join(str(u["rss_mb"]) for u in usage["processes"]) if "processes" in usage else usage["rss_mb"]
    return f"; server CPU {cpu_text(usage)} RSS {rss} MB"


def connect_all(
    pool: Pool,
    targets: Targets,
    load: Load,
    *,
    deadline: float | None = None,
    while_waiting: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Open every client, ``concurrency`` at a time: connects/s, time to ready, failures.

    ``deadline``: seconds after the start past which no more clients are opened.
    ``while_waiting(seconds since the start)`` is called about once a second until all are open.
    """
    start_at = time.time() + 0.5
    pool.send("connect", start_at=start_at, deadline=None if deadline is None else start_at + deadline)
    time.sleep(max(0.0, start_at - time.time()))
    before = sample_all(targets)
    if while_waiting is not None:
        next_call = start_at
        while not pool.ready(0):
            if time.time() >= next_call:
                while_waiting(time.time() - start_at)
                next_call += 1.0
            time.sleep(0.1)
    answers = pool.collect()
    wall = max(a["end"] for a in answers) - start_at
    ready = [ms for a in answers for ms in a["ready_ms"]]
    failures = sum((Counter(a["failures"]) for a in answers), Counter())
    result = {
        "requested": load.clients,
        "concurrency": load.concurrency,
        "ok": len(ready),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "wall_s": round(wall, 2),
        "connects_per_s": round(len(ready) / wall, 1),
        "ready_ms": {
            "p50": rank_percentile(ready, 50),
            "p99": rank_percentile(ready, 99),
            "max": rank_percentile(ready, 100),
        },
        "server": servers_usage(before, sample_all(targets), wall),
    }
    split = ""
    if len(servers := as_list(targets)) > 1:
        result["ready_by_server"] = [sum(a["ready_by_server"][s] for a in answers) for s in range(len(servers))]
        split = f" ({'+'.join(map(str, result['ready_by_server']))} on {len(servers)} servers)"
    r = result["ready_ms"]
    print(
        f"  connect: {len(ready)}/{load.clients} ready{split} in {wall:.1f} s = {result['connects_per_s']}/s "
        f"({load.concurrency} at a time); ready ms p50 {r['p50']} p99 {r['p99']} max {r['max']}; "
        f"failures {dict(failures) or 0}{_server_text(result['server'])}",
        flush=True,
    )
    return result


def step(
    pool: Pool, targets: Targets, load: Load, connected: int, tag: str, rate: float, duration: float
) -> dict[str, Any]:
    """One paced send window at ``rate`` messages/s, then the drain: the figures of a fan-out."""
    start_at = time.time() + 1.0
    pool.send(
        "step",
        tag=tag,
        rate=rate,
        senders=min(load.senders, connected),
        start_at=start_at,
        duration=duration,
        drain=load.drain,
    )
    time.sleep(max(0.0, start_at - time.time()))
    before, machine = sample_all(targets), sample_machine()  # the servers are measured over the send window only
    time.sleep(max(0.0, start_at + duration - time.time()))
    usage = servers_usage(before, sample_all(targets), duration)
    machine_cpu = machine_busy(machine, sample_machine())
    answers = pool.collect()
    sent, delivered = sum(a["sent"] for a in answers), sum(a["delivered"] for a in answers)
    expected = sent * connected  # everyone in the room gets every message, the sender its echo
    latency = percentiles(merge_hists(a["hist"] for a in answers))
    latency["max"] = round(max(a["max_us"] for a in answers) / 1000, 1)
    client_cpu = max(a["cpu_util"] for a in answers)
    result = {
        "tag": tag,
        "rate": rate,
        "clients": connected,
        "senders": min(load.senders, connected),
        "duration_s": duration,
        "offered_per_s": round(rate * connected, 1),
        "sent": sent,
        "send_failures": sum(a["send_failures"] for a in answers),
        "expected": expected,
        "delivered": delivered,
        "delivered_pct": round(100 * delivered / expected, 3) if expected else None,
        "deliveries_per_s": round(delivered / duration, 1),
        "latency_ms": latency,
        "errors": dict(sum((Counter(a["errors"]) for a in answers), Counter())),
        "stale": sum(a["stale"] for a in answers),
        "closed_by_server": sum(a["closed"] for a in answers),
        "server": usage,
        "client_cpu_max": round(client_cpu, 2),
        "client_saturated": client_cpu > SATURATED,
        "send_late_max_ms": round(max(a["late_max_ms"] for a in answers), 1),
        "machine_cpu": machine_cpu,  # cores busy on the whole machine over the send window
    }
    result["pass"] = bool(
        expected
        and delivered >= load.min_delivered * expected
        and latency["p99"] is not None
        and latency["p99"] <= load.p99_max
    )
    print(
        f"  {tag}: {rate:g} msg/s x {connected} clients: delivered {delivered}/{expected} "
        f"({result['delivered_pct']} %) = {result['deliveries_per_s']:g}/s; latency ms p50 {latency['p50']} "
        f"p95 {latency['p95']} p99 {latency['p99']} max {latency['max']}{_server_text(usage)}; "
        f"client CPU {client_cpu:.2f}{' CLIENT SATURATED' if result['client_saturated'] else ''}, "
        f"sends late by up to {result['send_late_max_ms']:g} ms"
        f"{'; errors ' + str(result['errors']) if result['errors'] else ''}"
        f"{'; closed by server ' + str(result['closed_by_server']) if result['closed_by_server'] else ''}"
        f" -> {'PASS' if result['pass'] else 'FAIL'}",
        flush=True,
    )
    if len(servers := as_list(targets)) > 1:
        result.update(by_server(servers, answers))
        _print_by_server(result)
    return result


def by_server(servers: list[Target], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """What each server's clients received, from their own server's senders and from the others'.

    A message's server is its sender's (``server_of`` its index, in its text);
    every message sent should reach every client of every server.
    """
    n = len(servers)
    sent_from = [sum(a["by_server"][s]["sent"] for a in answers) for s in range(n)]
    sent = sum(sent_from)
    rows = []
    for s, target in enumerate(servers):
        clients = sum(a["by_server"][s]["clients"] for a in answers)
        got: Counter[str] = Counter()
        for a in answers:
            got.update(a["by_server"][s]["messages"])
        from_others = sum(c for key, c in got.items() if server_of(int(key.split(":", 1)[0]), n) != s)
        rows.append(
            {
                "server": f"{target.host}:{target.port}",
                "pid": target.pid,
                "clients": clients,
                "senders": sum(a["by_server"][s]["senders"] for a in answers),
                "sent": sent_from[s],
                "expected": sent * clients,
                "delivered": sum(got.values()),
                "expected_from_other_servers": (sent - sent_from[s]) * clients,
                "delivered_from_other_servers": from_others,
                "messages_to_every_client": sum(c >= clients for c in got.values()) if clients else 0,
                "messages_to_no_client": sent - len(got),
            }
        )
    return {
        "by_server": rows,
        "every_message_on_every_server": bool(sent) and all(r["messages_to_no_client"] == 0 for r in rows),
    }


def _print_by_server(result: dict[str, Any]) -> None:
    rows, sent = result["by_server"], result["sent"]
    parts = [
        f"{r['server']} ({r['clients']} clients, {r['senders']} sending) received {r['delivered']}/"
        f"{r['expected']} ({r['delivered_from_other_servers']}/{r['expected_from_other_servers']} from senders "
        f"on other processes); {r['messages_to_every_client']}/{sent} messages reached all its clients, "
        f"{r['messages_to_no_client']} none"
        for r in rows
    ]
    busy = result["machine_cpu"]
    machine = f"; machine CPU {busy} of {os.cpu_count()} cores" if busy is not None else ""
    print(
        f"    by server: {' | '.join(parts)}{machine}; every message reached clients on all "
        f"{len(rows)} servers: {'yes' if result['every_message_on_every_server'] else 'NO'}",
        flush=True,
    )


def fanout(targets: Targets, load: Load, *, ramp: bool = False) -> dict[str, Any]:
    """``clients`` in one room, ``senders`` of them sending: one step, or a ramp of steps."""
    pool = open_pool(targets, load, new_room())
    result: dict[str, Any] = {"load": vars(load).copy()}
    try:
        result["connect"] = connect_all(pool, targets, load)
        connected = result["connect"]["ok"]
        if not connected:
            return result
        if load.warmup:
            # At a quarter of the rate: an overloaded warm-up would leave a backlog that the measured step inherits.
            result["warmup"] = step(pool, targets, load, connected, "warmup", load.rate / 4, load.warmup)
        rate, steps = load.rate, []
        for n in range(load.max_steps if ramp else 1):
            steps.append(step(pool, targets, load, connected, f"step{n}", rate, load.duration))
            if not steps[-1]["pass"]:
                break
            rate = round(rate * load.factor, 2)
        result["steps"] = steps
        if ramp:
            passed = [s for s in steps if s["pass"]]
            best = passed[-1] if passed else None
            result["best"] = best and {k: best[k] for k in ("rate", "deliveries_per_s", "latency_ms")}
            print(
                f"  ramp: highest passing rate {best and best['rate']} msg/s = "
                f"{best and best['deliveries_per_s']} deliveries/s (p99 <= {load.p99_max:g} ms, "
                f">= {100 * load.min_delivered:g} % delivered)",
                flush=True,
            )
    finally:
        pool.close()
    return result


def connect(targets: Targets, load: Load) -> dict[str, Any]:
    """Open ``clients`` connections ``concurrency`` at a time, then close them."""
    pool = open_pool(targets, load, new_room())
    try:
        return {"load": vars(load).copy(), "connect": connect_all(pool, targets, load)}
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
    """Hold ``clients`` idle connections: the server's memory per connection.

    They open in two halves. Memory per connection is given two ways: all
    growth over all connections (``kb_per_connection``: it includes what
    grows once with the load, such as the Redis and database pools of 50
    concurrent connects and the allocator's high-water mark), and what the
    second half added (``kb_per_added_connection``: the cost of one more
    idle socket, once those have grown).
    """
    room = new_room()
    warm_up(target, room)
    time.sleep(1)
    before = sample(target.pid)
    first_half = replace(load, clients=load.clients // 2)
    second_half = replace(load, clients=load.clients - first_half.clients)
    pools = [open_pool(target, first_half, room)]
    try:
        first = connect_all(pools[0], target, first_half)
        time.sleep(load.hold)  # let presence settle
        mid = sample(target.pid)
        pools.append(open_pool(target, second_half, room))
        second = connect_all(pools[1], target, second_half)
        time.sleep(load.hold)
        held = sample(target.pid)
    finally:
        for pool in pools:
            pool.close()
    ok_first, ok = first["ok"], first["ok"] + second["ok"]
    result = {"load": vars(load).copy(), "connect": first, "connect_second_half": second}
    time.sleep(3)
    after = sample(target.pid)
    if before and mid and held and after:
        result["memory"] = {
            "rss_before_mb": round(before.rss_kb / 1024, 1),
            "rss_half_mb": round(mid.rss_kb / 1024, 1),
            "rss_held_mb": round(held.rss_kb / 1024, 1),
            "rss_after_close_mb": round(after.rss_kb / 1024, 1),
            "kb_per_connection": round((held.rss_kb - before.rss_kb) / max(1, ok), 1),
            "kb_per_added_connection": round((held.rss_kb - mid.rss_kb) / max(1, ok - ok_first), 1),
        }
        m = result["memory"]
        print(
            f"  idle: RSS {m['rss_before_mb']} MB before, {m['rss_half_mb']} MB holding {ok_first}, "
            f"{m['rss_held_mb']} MB holding {ok} connections = {m['kb_per_connection']} KB each, "
            f"{m['kb_per_added_connection']} KB for each of the second {ok - ok_first}; "
            f"{m['rss_after_close_mb']} MB after closing them",
            flush=True,
        )
    return result


SCALE_PROCESSES = (1, 2)
BUSY_MACHINE = 0.9  # share of the machine's cores busy over a send window from which it may be the limit


def scale(
    start: Callable[[int], AbstractContextManager[list[Target]]], load: Load, processes: Sequence[int] = SCALE_PROCESSES
) -> dict[str, Any]:
    """The same ramp against one project process, then two; the ratio of their highest passing rates.

    ``start(count)`` gives ``count`` fresh processes on one database and one
    Redis space (and stops them after). With two, the room's clients and
    senders are split evenly between them (round-robin), so every message
    reaches the other process's clients only through the channel layer; each
    step counts, per server, what its clients received.
    """
    runs: dict[str, dict[str, Any]] = {}
    for count in processes:
        with start(count) as targets:
            print(f"scale: the ramp against {processes_text(count)}:", flush=True)
            run = fanout(targets, load, ramp=True)
            run["servers"] = [{"url": t.base, "pid": t.pid} for t in targets]
            run["server"] = {"kind": targets[0].kind, **targets[0].settings}
        runs[str(count)] = run
    return {"load": vars(load).copy(), "runs": runs, **scale_summary(runs, load)}


def processes_text(count: int | str) -> str:
    return f"{count} process" if int(count) == 1 else f"{count} processes"


def scale_summary(runs: dict[str, dict[str, Any]], load: Load) -> dict[str, Any]:
    """Best rate per process count and their ratio, the per-step CPU, and the cross-process delivery check."""
    counts = list(runs)
    best = {c: runs[c].get("best") for c in counts}
    rate = {c: (best[c] or {}).get("rate") for c in counts}
    first, last = counts[0], counts[-1]
    ratio = round(rate[last] / rate[first], 2) if rate[first] and rate[last] is not None else None
    # A ramp whose last step passed stopped at --max-steps: its best rate is not the process's limit.
    unbounded = [c for c in counts if runs[c].get("steps") and runs[c]["steps"][-1]["pass"]]
    print(
        f"scale: {load.clients} clients, {load.senders} senders; highest rate with p99 <= {load.p99_max:g} ms "
        f"and >= {100 * load.min_delivered:g} % delivered:",
        flush=True,
    )
    for c in counts:
        b = best[c]
        print(
            f"  {processes_text(c)}: "
            + (
                f"{b['rate']:g} msg/s = {b['deliveries_per_s']:g} deliveries/s (p99 {b['latency_ms']['p99']} ms)"
                if b
                else "no step passed"
            )
            + (" - no step failed: the ramp ended at --max-steps, not at a limit" if c in unbounded else ""),
            flush=True,
        )
    caveat = (
        " (not a scaling figure: a ramp ended before any step failed; raise -r or --max-steps)"
        if unbounded and ratio is not None
        else ""
    )
    print(
        f"  ratio ({processes_text(last)} / {processes_text(first)}): "
        f"{ratio if ratio is not None else 'n/a (a ramp with no passing step)'}{caveat}",
        flush=True,
    )

    print(
        f"  per step: server CPU per process (1.0 = one core), machine CPU (cores busy of {os.cpu_count()}, "
        "clients, PostgreSQL and Redis included):",
        flush=True,
    )
    busy: list[str] = []
    for n in range(max(len(runs[c].get("steps", [])) for c in counts)):
        cells, step_rate = [], None
        for c in counts:
            steps = runs[c].get("steps", [])
            if n >= len(steps):
                cells.append(f"{processes_text(c)}: -")
                continue
            st = steps[n]
            step_rate = st["rate"]
            cells.append(
                f"{processes_text(c)}: CPU {cpu_text(st['server'])}, machine {st['machine_cpu']}, "
                f"p99 {st['latency_ms']['p99']} ms, {st['delivered_pct']} % "
                f"{'PASS' if st['pass'] else 'FAIL'}{' CLIENT SATURATED' if st['client_saturated'] else ''}"
            )
            if st["machine_cpu"] is not None and st["machine_cpu"] >= BUSY_MACHINE * (os.cpu_count() or 1):
                busy.append(f"{processes_text(c)} step{n}")
        print(f"    step{n} {step_rate:g} msg/s: {' | '.join(cells)}", flush=True)
    if busy:
        print(
            f"  note: the machine was busy (>= {100 * BUSY_MACHINE:g} % of its cores) in {', '.join(busy)}: "
            "there the processes competed for CPU with the clients, PostgreSQL and Redis",
            flush=True,
        )

    crossing: dict[str, Any] = {}
    for c in counts:
        steps = [st for st in runs[c].get("steps", []) if "by_server" in st]
        if not steps:
            continue
        ok = [st for st in steps if st["every_message_on_every_server"]]
        missed = [
            f"{st['tag']}: "
            + ", ".join(
                f"{r['messages_to_no_client']} reached no client of {r['server']}"
                for r in st["by_server"]
                if r["messages_to_no_client"]
            )
            for st in steps
            if not st["every_message_on_every_server"]
        ]
        crossing[c] = {"steps": len(steps), "steps_every_message_on_every_server": len(ok), "missed": missed}
        print(
            f"  {processes_text(c)}: every message reached clients on every server in {len(ok)} of {len(steps)} "
            f"steps{'; ' + '; '.join(missed) if missed else ''}",
            flush=True,
        )
        if best_step := next((st for st in reversed(steps) if st["pass"]), None):
            print(
                f"  {processes_text(c)}, at the highest passing rate: "
                + "; ".join(
                    f"{r['server']} received {r['delivered']}/{r['expected']} ({r['delivered_from_other_servers']}/"
                    f"{r['expected_from_other_servers']} from senders on other processes)"
                    for r in best_step["by_server"]
                ),
                flush=True,
            )
    return {
        "best": best,
        "ratio": ratio,
        "ratio_of": f"{last}/{first} processes",
        "ended_without_failure": unbounded,
        "every_message_on_every_server": crossing,
    }
