"""The chat's load benchmark: ``python -m bench.load SCENARIO [options]``.

Scenarios (each starts the server it measures on a free port and stops it
after, unless ``--url`` names one already running):

  fanout   N clients in one room, K of them sending R messages/s in all for T s
  ramp     fanout again and again, R *= factor, while p99 <= 250 ms and >= 99.9 % arrive
  connect  N connections opened C at a time (page load + websocket + welcome)
  idle     N idle connections held: the server's memory per connection
  soak     clients chat for minutes while some reconnect and resume; counts gaps
  compare  fanout, ramp and connect against the project and the baseline; ratios
  scale    the ramp against 1 project process, then against 2 sharing Redis (clients
           and senders split between them); the ratio of the highest passing rates,
           server CPU per process, and whether every message reached both servers' clients
  bigroom  N browsers (10,000) join one room C at a time (100): joins/s, server RSS and
           KB per socket, presence bytes per client per second as the room fills; then
           K senders send R messages/s in all for T s (2 x 1 msg/s x 10 s): loss, latency
  storm    N tabs (1,000) connected; the server restarts (or every socket drops) and all
           reconnect at once (chat.js's jittered backoff, or none): time until all are back,
           reconnects/s, failures, and no message lost across the storm (resume)

The project runs with production settings on the environment's
``DATABASE_URL`` and ``REDIS_URL`` (scale needs Redis: its two processes
share the channel layer, presence and rate limits through it). Figures are
printed and written to ``bench/results/<scenario>-<timestamp>.json``; ramp,
compare and scale also plot p99 latency against offered deliveries/s
(``--plot``). docs/performance.md has the figures of record and the
commands behind them.
"""

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import scenarios
from bench.bigroom import SETTLE, bigroom
from bench.clients import raise_open_files_limit
from bench.report import RESULTS, plot_latency, save
from bench.scenarios import Load
from bench.servers import Target, start_baseline, start_projects
from bench.soak import Churn, soak
from bench.storm import BACKOFFS, CAUSES, storm

# Per-scenario defaults for the options left unset (the sizes docs/performance.md uses).
DEFAULTS: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 1000, "senders": 20, "rate": 20.0},
    "ramp": {"clients": 100, "senders": 10, "rate": 20.0, "duration": 6.0, "drain": 3.0},
    "connect": {"clients": 1000},
    "idle": {"clients": 1000},
    "soak": {"clients": 300, "rate": 10.0, "drain": 10.0},
    "compare": {"clients": 1000, "senders": 20, "rate": 20.0},
    "scale": {"clients": 100, "senders": 10, "rate": 20.0, "duration": 6.0, "drain": 3.0},
    "bigroom": {
        "clients": 10000,
        "senders": 2,
        "rate": 2.0,
        "duration": 10.0,
        "drain": 5.0,
        "warmup": 0.0,
        "concurrency": 100,
        "procs": 4,
        "open_timeout": 60.0,
    },
    "storm": {"clients": 1000, "senders": 2, "rate": 2.0, "duration": 5.0, "drain": 5.0},
}
# Senders above the default limit (1 message/s each after a burst of 10) would be refused.
RAISED_LIMIT = {"CHAT_RATE_PER_SECOND": "1000", "CHAT_RATE_BURST": "1000"}


def needs_raised_limit(load: Load, ramp: bool) -> bool:
    return ramp or load.rate / max(1, min(load.senders, load.clients)) > 1.0


@contextmanager
def servers(kind: str, args: argparse.Namespace, raised_limit: bool, count: int = 1) -> Iterator[list[Target]]:
    """The servers to measure: the one at ``--url``, or ``count`` started here (and stopped after).

    Several project processes share one database and one Redis space (``start_projects``).
    """
    if args.url:
        url = urlsplit(args.url)
        if raised_limit:
            print(
                f"  note: this load needs the rate limit raised on {args.url} "
                f"({' '.join(f'{k}={v}' for k, v in RAISED_LIMIT.items())})",
                flush=True,
            )
        yield [Target(kind, url.hostname or "127.0.0.1", url.port or 80, args.server_pid, {"url": args.url})]
        return
    logs = args.out / "logs"
    extra = RAISED_LIMIT if raised_limit and kind == "project" else {}
    targets = (
        start_projects(count, log_dir=logs, extra_env=extra) if kind == "project" else [start_baseline(log_dir=logs)]
    )
    for target in targets:
        print(
            f"{kind} server: pid {target.pid} on {target.base}; "
            f"{', '.join(f'{k}={v}' for k, v in target.settings.items())}",
            flush=True,
        )
    try:
        yield targets
    finally:
        for target in targets:
            target.stop()


def load_from(args: argparse.Namespace, scenario: str, **override: Any) -> Load:
    """The ``Load`` for a scenario: its defaults, then the options given, then ``override``."""
    values = {**DEFAULTS.get(scenario, {})}
    for name in vars(Load()):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return Load(**{**values, **override})


def run_one(scenario: str, kind: str, args: argparse.Namespace, load: Load) -> dict[str, Any]:
    """One scenario against one server; its figures, with the server's settings."""
    ramp = scenario == "ramp"
    raised = needs_raised_limit(load, ramp) and scenario in ("fanout", "ramp", "bigroom", "storm")
    with servers(kind, args, raised) as (target,):
        print(f"{scenario} against the {kind}:", flush=True)
        if scenario == "bigroom":
            result = bigroom(target, load, settle=args.settle, join_deadline=args.join_deadline)
        elif scenario == "storm":
            result = storm(
                target,
                load,
                cause=args.cause or ("drop" if args.url else "restart"),
                backoff=args.backoff,
                timeout=args.storm_timeout,
                retry_every=args.retry_every,
            )
        elif scenario in ("fanout", "ramp"):
            result = scenarios.fanout(target, load, ramp=ramp)
        elif scenario == "connect":
            result = scenarios.connect(target, load)
        elif scenario == "idle":
            result = scenarios.idle(target, load)
        else:
            result = soak(target, load, Churn(args.minutes, args.flaky, args.reconnect_every))
        result["server"] = {"kind": kind, **target.settings}
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def headline(run: dict[str, Any]) -> dict[str, Any]:
    """The figures compare sets side by side: fan-out rate and p99, the ramp's best rate, connects/s."""
    step = (run["fanout"].get("steps") or [{}])[0]
    return {
        "deliveries_per_s": step.get("deliveries_per_s"),
        "p99_ms": step.get("latency_ms", {}).get("p99"),
        "ramp_best_rate": (run["ramp"].get("best") or {}).get("rate"),
        "connects_per_s": run["connect"]["connect"]["connects_per_s"],
    }


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """The same fanout, ramp and connect against the project, then the baseline; ratios project/baseline."""
    fan = load_from(args, "compare")
    # The ramp keeps its own sizes (100 clients, short steps); connect opens as many as the fanout.
    ramp = Load(**{**DEFAULTS["ramp"], "clients": args.ramp_clients, "procs": fan.procs})
    conn = Load(clients=fan.clients, concurrency=fan.concurrency, procs=fan.procs)
    runs: dict[str, dict[str, Any]] = {}
    for kind in ("project", "baseline"):
        runs[kind] = {
            "fanout": run_one("fanout", kind, args, fan),
            "ramp": run_one("ramp", kind, args, ramp),
            "connect": run_one("connect", kind, args, conn),
        }

    result: dict[str, Any] = {"runs": runs, "ratios": {}}
    print("compare (project / baseline):", flush=True)
    project, baseline = headline(runs["project"]), headline(runs["baseline"])
    for name, p in project.items():
        b = baseline[name]
        result["ratios"][name] = {"project": p, "baseline": b, "ratio": ratio(p, b)}
        print(f"  {name}: {p} / {b} = {ratio(p, b)}", flush=True)
    return result


def scale(args: argparse.Namespace) -> dict[str, Any]:
    """The ramp against one project process, then two sharing Redis (rate limit raised, as for ramp)."""
    return scenarios.scale(lambda count: servers("project", args, True, count), load_from(args, "scale"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("scenario", choices=sorted(DEFAULTS))
    ap.add_argument("--target", choices=("project", "baseline"), default="project", help="the server to measure")
    ap.add_argument("--url", help="measure the server already running there (e.g. http://127.0.0.1:8101)")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's pid, to sample its CPU and RSS")
    ap.add_argument("-n", "--clients", type=int, help="connections (fanout 1000, ramp and scale 100, soak 300)")
    ap.add_argument("-k", "--senders", type=int, help="sending clients, each its own browser (20)")
    ap.add_argument("-r", "--rate", type=float, help="messages/s from all senders together (20; soak 10)")
    ap.add_argument("-T", "--duration", type=float, help="send window, s (10; ramp and scale 6)")
    ap.add_argument("--drain", type=float, help="wait after sending, s; later deliveries count as not delivered (5)")
    ap.add_argument("--warmup", type=float, help="unscored step at a quarter of the rate first, s (2; 0: none)")
    ap.add_argument("-c", "--concurrency", type=int, help="connections opened at a time (50)")
    ap.add_argument("-P", "--procs", type=int, help="client worker processes (2; bigroom 4)")
    ap.add_argument("--open-timeout", type=float, help="seconds a connect may take to its welcome (30; bigroom 60)")
    ap.add_argument("--factor", type=float, help="ramp, scale: rate multiplier per step (1.5)")
    ap.add_argument("--max-steps", type=int, help="ramp, scale: most steps (10)")
    ap.add_argument("--p99-max", type=float, help="ramp, scale: a step passes with p99 <= this, ms (250)")
    ap.add_argument("--hold", type=float, help="idle: hold the connections this long before sampling, s (5)")
    ap.add_argument("--minutes", type=float, default=3.0, help="soak: how long the chat goes on")
    ap.add_argument("--flaky", type=float, default=0.1, help="soak: share of clients that drop and reconnect")
    ap.add_argument("--reconnect-every", type=float, default=5.0, help="soak: seconds between drops (±50 %%)")
    ap.add_argument("--ramp-clients", type=int, default=100, help="compare: clients of the ramp")
    ap.add_argument(
        "--settle",
        type=float,
        default=SETTLE,
        help="bigroom: seconds after the last join before presence is read and the chat starts",
    )
    ap.add_argument(
        "--join-deadline",
        type=float,
        default=600.0,
        help="bigroom: no more joins are started after this many seconds (they count as failures)",
    )
    ap.add_argument(
        "--cause",
        choices=CAUSES,
        help="storm: restart the server (SIGTERM), kill it (SIGKILL), or drop every socket "
        "(default: restart; drop with --url)",
    )
    ap.add_argument(
        "--backoff",
        choices=BACKOFFS,
        default="jitter",
        help="storm: reconnect as chat.js does (jitter), or at once (none: the worst case)",
    )
    ap.add_argument(
        "--retry-every",
        type=float,
        default=0.1,
        help="storm, --backoff none: seconds between a failed attempt and the next",
    )
    ap.add_argument(
        "--storm-timeout",
        type=float,
        default=120.0,
        help="storm: tabs not back this many seconds after the storm count as not back",
    )
    ap.add_argument("--plot", type=Path, help="ramp/compare/scale: where the PNG goes (default: next to the JSON)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory of the results files")
    ap.add_argument("--note", default="", help="a remark stored with the results (e.g. what else ran)")
    args = ap.parse_args(argv)
    if args.url and args.scenario in ("compare", "scale"):
        ap.error(f"{args.scenario} starts its servers itself: no --url")
    if args.scenario == "scale" and args.target == "baseline":
        ap.error("scale measures the project's processes: no --target baseline")
    if args.scenario in ("soak", "storm", "bigroom") and args.target == "baseline":
        ap.error(f"{args.scenario} needs the contract (welcome, presence, resume): the project only")
    if args.scenario == "storm" and args.url and args.cause in ("restart", "kill"):
        ap.error("storm --url: the benchmark cannot restart a server it did not start; use --cause drop")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    raise_open_files_limit()
    started, loadavg_at_start = time.time(), os.getloadavg()
    if args.scenario == "compare":
        result = compare(args)
    elif args.scenario == "scale":
        result = scale(args)
    else:
        result = run_one(args.scenario, args.target, args, load_from(args, args.scenario))
    result.update(
        scenario=args.scenario,
        command=" ".join(["python -m bench.load", *(argv or sys.argv[1:])]),
        started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        elapsed_s=round(time.time() - started, 1),
        note=args.note,
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": loadavg_at_start,
            "loadavg_at_end": os.getloadavg(),
        },
    )
    path = save(result, args.scenario, args.out)
    print(f"results: {path}", flush=True)
    if args.scenario in ("ramp", "compare", "scale"):
        if args.scenario == "compare":
            ramps = {kind: run["ramp"].get("steps", []) for kind, run in result["runs"].items()}
        elif args.scenario == "scale":
            ramps = {
                f"project, {scenarios.processes_text(count)}": run.get("steps", [])
                for count, run in result["runs"].items()
            }
        else:
            ramps = {args.target: result.get("steps", [])}
        plot = plot_latency(ramps, args.plot or path.with_suffix(".png"), load_from(args, "ramp").p99_max)
        print(f"plot: {plot}", flush=True)
    result["path"] = str(path)
    return result


if __name__ == "__main__":
    main()
