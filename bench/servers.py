"""The servers under test: start them on free ports, sample them from /proc, stop them.

``start_project`` runs the chat the way production does (``python -m
chatsite.server``, ``DEBUG=0``, a secret key, WARNING logs) on the
``DATABASE_URL`` and ``REDIS_URL`` of the environment, after migrating
(``start_projects``: several such processes sharing the channel layer);
``start_baseline`` runs daphne with the tutorial consumer of
``bench.baseline``. Only the processes started here are ever stopped.
"""

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Production settings over plain HTTP on loopback: no TLS redirect, no Secure cookies, no HSTS.
PRODUCTION_ENV = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "127.0.0.1",
    "CHAT_LOG_LEVEL": "WARNING",
    "SECURE_SSL_REDIRECT": "0",
    "SESSION_COOKIE_SECURE": "0",
    "CSRF_COOKIE_SECURE": "0",
    "SECURE_HSTS_SECONDS": "0",
}


@dataclass
class Target:
    """A server the load goes to: which kind, where, and (when known) its process id."""

    kind: str  # "project" or "baseline"
    host: str
    port: int
    pid: int | None = None
    settings: dict[str, str] = field(default_factory=dict)  # what the figures depend on
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    # How it was started (``restart`` starts it again the same way, on the same port).
    command: list[str] | None = None
    env: dict[str, str] | None = None
    health: str | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the server if this benchmark started it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, *, kill: bool = False) -> dict[str, float]:
        """Stop this server (SIGTERM, or SIGKILL as a crash would) and start it again on the same port.

        Returns the seconds the stop took and the seconds until the new process answered.
        Only a server this benchmark started can be restarted.
        """
        if self.process is None or self.command is None or self.env is None or self.log is None:
            raise RuntimeError("only a server started by the benchmark can be restarted")
        started = time.monotonic()
        if kill and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        else:
            self.stop()
        stopped = time.monotonic()
        fresh = _start(self.kind, self.command, self.env, self.port, self.log.parent, self.health, self.settings)
        self.process, self.pid = fresh.process, fresh.pid
        return {"stop_s": round(stopped - started, 2), "start_s": round(time.monotonic() - stopped, 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The project's environment: ``base`` plus production settings and a run's own Redis keys."""
    run = uuid.uuid4().hex[:8]
    return {
        **base,
        **PRODUCTION_ENV,
        "SECRET_KEY": base.get("SECRET_KEY") or secrets.token_urlsafe(50),
        "CHANNEL_LAYER_PREFIX": f"asgi-bench-{run}",
        "CHAT_REDIS_PREFIX": f"chat-bench-{run}",
        **extra,
    }


def start_project(
    *,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    migrate: bool = True,
    args: Sequence[str] = (),
    port: int | None = None,
) -> Target:
    """Migrate, then start ``python -m chatsite.server`` on ``port`` (else a free one); wait for ``/healthz``."""
    return start_projects(
        1,
        log_dir=log_dir,
        extra_env=extra_env,
        base_env=base_env,
        migrate=migrate,
        args=args,
        ports=None if port is None else [port],
    )[0]


def start_projects(
    count: int,
    *,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    migrate: bool = True,
    args: Sequence[str] = (),
    ports: Sequence[int] | None = None,
) -> list[Target]:
    """Migrate once, then start ``count`` project servers, each on a free port, in one environment.

    One environment means one database and one set of Redis key prefixes: the
    processes share the channel layer, presence and rate limits, as the
    replicas of a deployment do. ``args`` go to each server's command line
    (e.g. ``--proxy-headers``); ``ports``, one per server, replace the free ones.
    """
    env = project_env(os.environ if base_env is None else base_env, extra_env or {})
    if count > 1 and not env.get("REDIS_URL"):
        raise ValueError("several project processes share a room only through Redis: set REDIS_URL")
    if migrate:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=300
        )
    # DEBUG=0 pages link to content-hashed static files, which collectstatic writes (as the Dockerfile does).
    env.setdefault("STATIC_ROOT", str(log_dir / "static"))
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=300
    )
    settings = {key: env[key] for key in ("CHAT_RATE_PER_SECOND", "CHAT_RATE_BURST") if key in env}
    settings["database"] = env.get("DATABASE_URL", "sqlite (default)").split("@")[-1]
    settings["channel_layer"] = (
        (env.get("REDIS_CHANNEL_LAYER", "pubsub") + " on Redis") if env.get("REDIS_URL") else "in-memory"
    )
    if count > 1:
        settings["processes"] = str(count)
    # daphne's limit for one incoming websocket message, as `make run` sets it. Imported here, not at the
    # top: chatsite.server imports daphne.server, which installs Twisted's reactor in the load driver.
    from chatsite.server import DAPHNE_LIMIT_ARGS

    targets: list[Target] = []
    try:
        for index in range(count):
            port = free_port() if ports is None else ports[index]
            command = [
                sys.executable,
                "-m",
                "chatsite.server",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                *DAPHNE_LIMIT_ARGS,
                *args,
                "chatsite.asgi:application",
            ]
            targets.append(_start("project", command, env, port, log_dir, "/healthz", dict(settings)))
    except BaseException:
        for target in targets:
            target.stop()
        raise
    return targets


def start_baseline(*, log_dir: Path) -> Target:
    """Start daphne with the tutorial consumer (``bench.baseline``) on a free port."""
    # The project's channel layer (pub/sub unless REDIS_CHANNEL_LAYER says otherwise), for a like-for-like comparison.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.baseline.settings",
        "REDIS_CHANNEL_LAYER": os.environ.get("REDIS_CHANNEL_LAYER", "pubsub"),
    }
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "bench.baseline.asgi:application"]
    layer = (env["REDIS_CHANNEL_LAYER"] + " on Redis") if env.get("REDIS_URL") else "in-memory"
    return _start("baseline", command, env, port, log_dir, None, {"channel_layer": layer})


def _start(
    kind: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    log_dir: Path,
    health: str | None,
    settings: dict[str, str],
) -> Target:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind}-{port}.log"
    # A file, not a pipe: an unread pipe fills up and blocks the server.
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    target = Target(kind, "127.0.0.1", port, process.pid, settings, process, log, command, env, health)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(target, health):
            return target
        time.sleep(0.2)
    target.stop()
    raise RuntimeError(f"{kind} server did not come up:\n" + log.read_text(errors="replace")[-2000:])


def _answers(target: Target, health: str | None) -> bool:
    """True once the port accepts connections (and ``health`` answers 200)."""
    try:
        if health is None:
            socket.create_connection((target.host, target.port), timeout=1).close()
            return True
        with urllib.request.urlopen(target.base + health, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class ProcSample:
    """A process's CPU seconds (user + system) and resident memory, read from /proc."""

    cpu_s: float
    rss_kb: int


def sample(pid: int | None) -> ProcSample | None:
    """Read ``/proc/PID``; None without a pid or once the process is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
        with open(f"/proc/{pid}/status") as f:
            rss = next(line for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcSample(cpu_s=(int(fields[11]) + int(fields[12])) / ticks, rss_kb=int(rss.split()[1]))


def peak_rss_kb(pid: int | None) -> int | None:
    """The process's peak resident memory over its life (``VmHWM`` in ``/proc/PID/status``)."""
    return _status_kb(pid, "VmHWM:")


def _status_kb(pid: int | None, field_name: str) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith(field_name)).split()[1])
    except (OSError, StopIteration, ValueError):
        return None


def open_files(pid: int | None) -> int | None:
    """How many file descriptors the process has open (its sockets, mostly)."""
    if pid is None:
        return None
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


@dataclass
class MachineSample:
    """The whole machine's CPU time from ``/proc/stat``: busy and total, in clock ticks over all cores."""

    busy: int
    total: int


def sample_machine() -> MachineSample | None:
    """Read the first line of ``/proc/stat``; None where there is none."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return MachineSample(busy=sum(ticks) - ticks[3] - ticks[4], total=sum(ticks))


def machine_busy(before: MachineSample | None, after: MachineSample | None) -> float | None:
    """Cores busy on average between two samples (everything: servers, clients, PostgreSQL, Redis, others)."""
    if before is None or after is None or after.total <= before.total:
        return None
    return round((after.busy - before.busy) / (after.total - before.total) * (os.cpu_count() or 1), 2)
