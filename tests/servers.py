"""Real server processes for the end-to-end and browser tests.

A ``Server`` is started the way a user starts one (``python -m
chatsite.server``, the daphne CLI that ``make run`` uses) on a free port, and
waits until ``/healthz`` answers. ``manage()`` runs a management command, or a
snippet of Django code, against the same database and Redis space as the
servers of one test. ``Nginx`` runs Debian's nginx on the repository's own
``deploy/nginx.conf``, pointed at a test's servers.
"""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import websockets
from django.conf import settings
from django.db import connection

from chatsite.server import DAPHNE_LIMIT_ARGS

ROOT = Path(__file__).resolve().parent.parent
# How `make run` and the Dockerfile start the server.
CHAT_SERVER = (sys.executable, "-m", "chatsite.server")
# daphne's own command line, as the Channels docs start it.
PLAIN_DAPHNE = (sys.executable, str(Path(sys.executable).parent / "daphne"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# What deploy/nginx.conf says for docker-compose.yml, replaced for a test.
COMPOSE_LISTEN = "listen 80;"
COMPOSE_UPSTREAMS = ("server web1:8000;", "server web2:8000;")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(tmp_path: Path) -> dict[str, str]:
    """Environment for server processes sharing one test's database and Redis space.

    On PostgreSQL the servers use the test database itself; on SQLite they get
    a migrated file of their own (the test's SQLite database is in memory).
    """
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        database_url = f"sqlite:///{tmp_path / 'e2e.sqlite3'}"
    else:
        host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
        database_url = f"postgres://{db['USER']}:{db['PASSWORD']}@{host}:{port}/{db['NAME']}"
    run = uuid.uuid4().hex[:10]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "CHANNEL_LAYER_PREFIX": f"asgi-e2e-{run}",
        "CHAT_REDIS_PREFIX": f"chat-e2e-{run}",
        "REDIS_URL": settings.REDIS_URL,
    }
    if database_url.startswith("sqlite"):
        manage(env, "migrate", "-v0")
    return env


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``manage.py`` with ``args`` in ``env``; return how it went, failed or not."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py`` with ``args`` in ``env``; return what it printed (raise if it failed)."""
    done = run_manage(env, *args)
    if done.returncode:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def wait_until_up(process: subprocess.Popen, ready: Callable[[], bool], what: str, log: Path) -> None:
    """Wait (30 s at most) until ``ready()``; stop ``process`` and raise with its log if it died or never was."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"{what} did not come up: " + log.read_text(errors="replace")[-2000:])


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM a process this test started (SIGKILL if it does not end within 10 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """One daphne process on a free port (or a given one, to restart in place).

    ``program`` is ``python -m chatsite.server`` unless a test says otherwise.
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        port: int | None = None,
        args: Sequence[str] = (),
        program: Sequence[str] = CHAT_SERVER,
    ) -> None:
        self.port = port or free_port()
        # A file, not a pipe: an unread pipe fills up and blocks the server.
        self.log_path = log
        self.log = log.open("ab")
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*program, "-b", "127.0.0.1", "-p", str(self.port), *DAPHNE_LIMIT_ARGS, *args, "chatsite.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(self.process, self._healthy, "daphne", log)
        except RuntimeError:
            self.log.close()
            raise

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as response:
            return response.status == 200

    def url(self, room: str = "lobby") -> str:
        return f"{self.base}/chat/{room}/"

    def browser(self, room: str = "lobby") -> str:
        """Load a room page like a browser; return its session cookie."""
        with urllib.request.urlopen(self.url(room), timeout=5) as response:
            cookie = SimpleCookie(response.headers["Set-Cookie"])
        return cookie["sessionid"].value

    def ws(
        self, session: str | None, room: str = "lobby", origin: str | None = None, headers: dict[str, str] | None = None
    ):
        headers = {**(headers or {}), **({"Cookie": f"sessionid={session}"} if session else {})}
        return websockets.connect(
            f"ws://127.0.0.1:{self.port}/ws/chat/{room}/",
            origin=origin or self.base,
            additional_headers=headers,
            max_size=None,
            open_timeout=10,
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"deploy/nginx.conf should hold {old!r} once, holds it {text.count(old)} times")
    return text.replace(old, new)


def render_nginx_conf(*, port: int, upstreams: Sequence[int], replace: Sequence[tuple[str, str]] = ()) -> str:
    """Return deploy/nginx.conf listening on ``port`` with the replicas on ``upstreams``.

    Only the listen line and the two upstream lines change (plus, for a test
    that says so, the exact lines in ``replace``); the rest is the file
    docker-compose.yml mounts.
    """
    text = _replace_once(NGINX_CONF.read_text(), COMPOSE_LISTEN, f"listen 127.0.0.1:{port};")
    for line, upstream in zip(COMPOSE_UPSTREAMS, upstreams, strict=True):
        text = _replace_once(text, line, f"server 127.0.0.1:{upstream};")
    for old, new in replace:
        text = _replace_once(text, old, new)
    return text


# Where the nginx image's own nginx.conf would put it: in http {}. Logs and
# temporary files stay in the test's directory; one worker, so that the test
# does not depend on how many cores the machine has.
NGINX_MAIN = """\
{user}worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$request $status upstream=$upstream_addr';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/chat.conf;
}}
"""


class Nginx:
    """A private nginx (master and one worker) on a free port, serving ``conf``."""

    def __init__(self, conf: str, port: int, directory: Path) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "chat.conf").write_text(conf)
        # As root, the worker would run as nobody, who cannot enter pytest's
        # private temporary directories.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(NGINX_MAIN.format(user=user, dir=directory))
        self.error_log = directory / "error.log"
        command = [NGINX, "-e", str(self.error_log), "-p", str(directory), "-c", str(directory / "nginx.conf")]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        if checked.returncode:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
        self.process = subprocess.Popen(
            [*command, "-g", f"daemon off; pid {directory / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_up(self.process, self._listening, "nginx", self.error_log)

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def upstreams_used(self, prefix: str) -> list[str]:
        """Return the replica (``host:port``) of each finished request for a path under ``prefix``.

        nginx logs a request when it ends: a websocket's once it closed.
        """
        log = (self.dir / "access.log").read_text()
        return re.findall(rf"^\S+ {re.escape(prefix)}\S* \S+ \d+ upstream=(\S+)$", log, re.MULTILINE)

    def stop(self) -> None:
        """Stop this nginx: SIGTERM to its master, which ends its worker."""
        stop_process(self.process)


# --- Reading a real socket ------------------------------------------------------


class People:
    """A room's listed people and count as a client keeps them: the snapshot, then each diff."""

    def __init__(self) -> None:
        self.listed: dict[str, dict] = {}
        self.count: int | None = None

    def apply(self, frame: dict) -> None:
        if frame["type"] == "presence":
            self.listed = {user["author_id"]: user for user in frame["users"]}
            self.count = frame["count"]
        elif frame["type"] == "presence_diff":
            for author_id in frame["left"]:
                self.listed.pop(author_id, None)
            self.listed.update({user["author_id"]: user for user in frame["joined"]})
            self.count = frame["count"]

    @property
    def users(self) -> list[dict]:
        return list(self.listed.values())


async def until_people(ws, people: People, check: Callable[[list[dict]], bool], timeout: float = 10) -> list[dict]:
    """Receive until the people shown pass ``check``, applying presence frames to ``people``."""
    deadline = time.monotonic() + timeout
    while not check(people.users):
        people.apply(json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))))
    return people.users


async def recv(ws, kinds: str | tuple[str, ...], timeout: float = 10) -> dict:
    """The next frame of one of ``kinds``, skipping others (presence comes and goes)."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if frame["type"] in kinds:
            return frame


async def closed_with(ws) -> int:
    """The close code the server sent (1006: none, the connection just ended)."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), 5)
    return info.value.rcvd.code if info.value.rcvd else 1006


async def drain(ws, quiet: float = 1.5) -> list[dict]:
    """Every frame until the socket has been quiet for ``quiet`` seconds."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), quiet)))
    except TimeoutError:
        return frames
