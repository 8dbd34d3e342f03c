"""deploy/nginx.conf, proven on a real nginx in front of two real daphne replicas.

No Docker engine runs here, so docker-compose.yml's nginx cannot be started;
instead Debian's nginx loads the very same file with only its listen port and
the two upstream addresses replaced (``tests.servers.render_nginx_conf``), and
every request below goes through it.
"""

import asyncio
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import websockets
from daphne.cli import CommandLineInterface
from django.conf import settings
from websockets.protocol import State

from tests.servers import (
    COMPOSE_UPSTREAMS,
    NGINX_CONF,
    ROOT,
    Nginx,
    Server,
    free_port,
    manage,
    recv,
    render_nginx_conf,
)

# How docker-compose.yml's replicas run (the Dockerfile's command line).
REPLICA_ARGS = ["--proxy-headers"]


@contextmanager
def stack(
    env: dict[str, str], tmp_path: Path, *, web1_args: Sequence[str] = (), replace: Sequence[tuple[str, str]] = ()
) -> Iterator[tuple[Server, Server, Nginx]]:
    """Two replicas behind nginx, as in docker-compose.yml; all stopped afterwards."""
    env = {**env, "BEHIND_PROXY": "1"}  # as a deployment behind this proxy sets it
    started: list[Server | Nginx] = []
    try:
        web1 = Server(env, tmp_path / "web1.log", args=[*REPLICA_ARGS, *web1_args])
        started.append(web1)
        web2 = Server(env, tmp_path / "web2.log", args=REPLICA_ARGS)
        started.append(web2)
        port = free_port()
        conf = render_nginx_conf(port=port, upstreams=[web1.port, web2.port], replace=replace)
        nginx = Nginx(conf, port, tmp_path / "nginx")
        started.append(nginx)
        yield web1, web2, nginx
    finally:
        for process in reversed(started):  # only what this test started, by its handle
            process.stop()


def load_page(nginx: Nginx, room: str = "lobby") -> tuple[str, str]:
    """Load a room page through nginx like a browser; return the page and its session cookie."""
    with urllib.request.urlopen(f"{nginx.base}/chat/{room}/", timeout=10) as response:
        assert response.status == 200
        cookie = SimpleCookie(response.headers["Set-Cookie"])
        return response.read().decode(), cookie["sessionid"].value


def connect(
    nginx: Nginx,
    session: str,
    room: str = "lobby",
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
):
    """Open a room's socket through nginx, as the page at ``nginx.base`` does, from address ``source``.

    No client pings: an idle socket carries only what the server sends.
    """
    return websockets.connect(
        f"ws://127.0.0.1:{nginx.port}/ws/chat/{room}/",
        origin=origin or nginx.base,
        additional_headers={**(headers or {}), "Cookie": f"sessionid={session}"},
        ping_interval=None,
        open_timeout=10,
        local_addr=(source, 0),
    )


async def drain(ws, quiet: float = 0.5) -> None:
    """Read until nothing arrived for ``quiet`` seconds."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), quiet)
        except TimeoutError:
            return


async def served_by(welcome: dict, replicas: Sequence[Server], timeout: float = 10) -> Server:
    """Return the replica whose log shows this socket's connect (its room and author_id)."""
    line = f"connected room={welcome['room']} author={welcome['author_id']} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [replica for replica in replicas if line in replica.log_path.read_text(errors="replace")]
        if found:
            assert len(found) == 1, "one socket, one replica"
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no replica logged {line!r}")


def through_nginx(test):
    """Mark a test that runs real nginx in front of real daphne processes on the test database."""
    for mark in (pytest.mark.proxy, pytest.mark.server, pytest.mark.django_db(transaction=True)):
        test = mark(test)
    return test


@through_nginx
@pytest.mark.redis
async def test_two_replicas_serve_one_chat_through_nginx(server_env, tmp_path):
    with stack(server_env, tmp_path) as (web1, web2, nginx):
        page, ada = load_page(nginx)
        assert 'data-testid="messages"' in page
        _, grace = load_page(nginx)
        with urllib.request.urlopen(f"{nginx.base}/healthz", timeout=10) as response:
            assert json.load(response) == {"status": "ok", "database": "ok", "channel_layer": "ok"}

        async with connect(nginx, ada) as a:
            a_welcome = await recv(a, "welcome")
            # least_conn: Ada's socket is open, so Grace's goes to the other replica.
            async with connect(nginx, grace) as g:
                g_welcome = await recv(g, "welcome")
                a_on, g_on = await served_by(a_welcome, [web1, web2]), await served_by(g_welcome, [web1, web2])
                assert {a_on, g_on} == {web1, web2}, "both replicas take sockets"

                # Chat crosses between the replicas, both ways (Redis carries it).
                await a.send(json.dumps({"type": "chat", "text": "from one replica", "client_id": "a1"}))
                assert (await recv(g, "chat"))["text"] == "from one replica"
                assert (await recv(a, "chat"))["text"] == "from one replica"  # Ada's own echo
                await g.send(json.dumps({"type": "chat", "text": "and back", "client_id": "g1"}))
                assert (await recv(a, "chat"))["text"] == "and back"

        # nginx's own log agrees: the two sockets went to the two replicas.
        deadline = time.monotonic() + 10
        while len(nginx.upstreams_used("/ws/")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sorted(nginx.upstreams_used("/ws/")) == sorted(f"127.0.0.1:{web.port}" for web in (web1, web2))


@through_nginx
async def test_a_foreign_origin_is_refused_through_nginx(server_env, tmp_path):
    with stack(server_env, tmp_path) as (_, _, nginx):
        _, session = load_page(nginx)
        refused = [
            ("http://evil.example", {}),
            # nginx replaces X-Forwarded-Proto, so a client cannot claim HTTPS
            # to pass an https:// origin (the replicas trust the header).
            (f"https://127.0.0.1:{nginx.port}", {"X-Forwarded-Proto": "https"}),
        ]
        for origin, headers in refused:
            with pytest.raises(websockets.InvalidStatus) as info:
                async with connect(nginx, session, origin=origin, headers=headers):
                    pass
            assert info.value.response.status_code == 403, origin
        # The page's own origin still gets in: the refusals were the Origin's.
        async with connect(nginx, session) as ws:
            await recv(ws, "welcome")


@through_nginx
async def test_metrics_are_not_served_through_nginx_but_by_each_replica(server_env, tmp_path):
    token = "scrape-token-for-tests"
    with stack({**server_env, "METRICS_TOKEN": token}, tmp_path) as (web1, web2, nginx):
        bearer = {"Authorization": f"Bearer {token}"}
        # Spellings nginx normalizes to /metrics before it picks a location.
        for path in ("/metrics", "/metrics?format=text", "//metrics", "/%6detrics", "/./metrics"):
            request = urllib.request.Request(f"{nginx.base}{path}", headers=bearer)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 404, path
        for web in (web1, web2):  # no replica was asked
            assert "/metrics" not in web.log_path.read_text(errors="replace")
            request = urllib.request.Request(f"{web.base}/metrics", headers=bearer)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert b"chat_sockets_open" in response.read()


def _block(text: str, opening: str) -> str:
    """Return the body of the ``{ … }`` block that starts at ``opening``."""
    start = text.index(opening + " {") + len(opening) + 2
    depth = 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise ValueError(f"{opening} is not closed")


def _seconds(value: str) -> float:
    """nginx time: ``300``, ``300s``, ``5m``."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def test_the_websocket_timeouts_outlast_every_keepalive():
    """The timeouts compose's nginx really uses, against the intervals that keep a quiet socket alive."""
    ws_location = _block(NGINX_CONF.read_text(), "location /ws/")
    dockerfile = (ROOT / "Dockerfile").read_text()
    set_ping = re.search(r"--ping-interval[ =](\d+)", dockerfile)
    ping = int(set_ping.group(1)) if set_ping else CommandLineInterface().parser.get_default("ping_interval")
    heartbeat = settings.CHAT_PRESENCE_TTL / 3
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.search(rf"^\s*{directive}\s+(\S+);", ws_location, re.MULTILINE)
        assert value, f"{directive} is not set for /ws/: nginx's 60 s default applies"
        # Five missed keepalives before nginx would cut a quiet socket.
        assert _seconds(value.group(1)) >= 5 * max(ping, heartbeat), directive
    assert re.search(r"^\s*proxy_buffering\s+off;", ws_location, re.MULTILINE)


def test_compose_runs_the_replicas_nginx_names():
    """docker-compose.yml mounts deploy/nginx.conf, and each upstream in it is a web service there."""
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf" in compose
    services = set(re.findall(r"^  ([a-z0-9_-]+):", compose, re.MULTILINE))
    upstreams = re.findall(r"^\s*server (\S+):8000;", NGINX_CONF.read_text(), re.MULTILINE)
    assert [f"server {name}:8000;" for name in upstreams] == list(COMPOSE_UPSTREAMS)
    assert set(upstreams) <= services


@through_nginx
async def test_nginx_cuts_a_silent_socket_at_its_timeout_and_pings_keep_one_open(server_env, tmp_path):
    """The mechanism behind the 300 s, on a 5 s scale (waiting minutes is no test).

    The same file with a 5 s timeout: a socket on a replica that pings every
    ~2 s (daphne checks every 2 s) outlives twice the timeout, one on a
    replica with daphne's default 20 s ping is cut by nginx at 5 s. So the
    timeout must exceed the ping interval, which the test above checks for
    the real values.
    """
    timeout = 5
    replace = [(f"{name} 300s;", f"{name} {timeout}s;") for name in ("proxy_read_timeout", "proxy_send_timeout")]
    with stack(server_env, tmp_path, web1_args=["--ping-interval", "1"], replace=replace) as (web1, web2, nginx):
        # Two rooms: a socket closing must not send presence to the other one.
        _, ada = load_page(nginx, "quiet-a")
        _, grace = load_page(nginx, "quiet-b")
        async with connect(nginx, ada, room="quiet-a") as a:
            a_on = await served_by(await recv(a, "welcome"), [web1, web2])
            async with connect(nginx, grace, room="quiet-b") as g:
                g_on = await served_by(await recv(g, "welcome"), [web1, web2])
                assert {a_on, g_on} == {web1, web2}
                pinged, silent = (a, g) if a_on is web1 else (g, a)
                await asyncio.gather(drain(pinged), drain(silent))

                quiet_since = time.monotonic()
                await asyncio.wait_for(silent.wait_closed(), timeout * 4)
                cut_after = time.monotonic() - quiet_since
                assert cut_after >= timeout - 2, f"closed after {cut_after:.1f} s, not by the idle timeout"

                await asyncio.sleep(max(0.0, 2 * timeout - (time.monotonic() - quiet_since)))
                assert pinged.state is State.OPEN, "a pinged socket outlives nginx's timeout"
                await pinged.send(json.dumps({"type": "ping"}))
                assert (await recv(pinged, "pong")) == {"type": "pong"}


# --- Limits per client address ---------------------------------------------------
# deploy/nginx.conf exempts loopback; these tests take 127.0.0.1's exemption
# out (one line replaced, as the timeout test replaces its values), so that
# 127.0.0.1 is a client like any other, and 127.0.0.2 is a second client
# address (the whole of 127.0.0.0/8 is this machine's).
NOT_EXEMPT = ("    127.0.0.1       1;", "    # 127.0.0.1 is limited in this test")
OTHER_ADDRESS = "127.0.0.2"


class Client:
    """HTTP/1.1 to nginx from one source address, over one kept-alive connection."""

    def __init__(self, nginx: Nginx, source: str = "127.0.0.1") -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(source, 0))

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: str | None = None
    ) -> tuple[int, http.client.HTTPResponse, bytes]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, response, response.read()

    def close(self) -> None:
        self.connection.close()


def _limit(name: str) -> tuple[float, int]:
    """The rate (per second) and burst deploy/nginx.conf gives zone ``name``."""
    conf = NGINX_CONF.read_text()
    number, unit = re.search(rf"zone={name}:\S+ rate=(\d+)r/(s|m);", conf).groups()
    burst = re.search(rf"limit_req zone={name} burst=(\d+) nodelay;", conf).group(1)
    return int(number) / (1 if unit == "s" else 60), int(burst)


def flood(client: Client, path: str, most: int, method: str = "GET", **kwargs) -> tuple[int, float]:
    """Send requests until the first 429 (``most`` at most); return how many passed, and in how long."""
    started = time.monotonic()
    passed = 0
    for _ in range(most):
        status, _, _ = client.request(method, path, **kwargs)
        if status == 429:
            break
        passed += 1
    return passed, time.monotonic() - started


@through_nginx
async def test_page_views_over_the_limit_get_429_and_another_address_is_unaffected(server_env, tmp_path):
    rate, burst = _limit("pages")
    with stack(server_env, tmp_path, replace=[NOT_EXEMPT]) as (web1, web2, nginx):
        one, other = Client(nginx), Client(nginx, OTHER_ADDRESS)
        # /healthz is the cheapest request to send to a replica; it counts as any other.
        passed, took = flood(one, "/healthz", most=burst + 200)
        # The whole burst passes (an office's worth of page views), then the rate.
        assert burst + 1 <= passed <= burst + 1 + rate * took + 1, (passed, took)
        status, response, body = one.request("GET", "/chat/lobby/")
        assert status == 429 and "Set-Cookie" not in response.headers, "refused at the edge: no session made"
        # Another address has its own allowance: a page and its session.
        status, response, body = other.request("GET", "/chat/lobby/")
        assert status == 200 and b'data-testid="messages"' in body
        assert "sessionid=" in response.headers["Set-Cookie"]
        one.close()
        other.close()

        # The file as deployed: loopback is not limited (benchmarks, tests).
        port = free_port()
        exempt = Nginx(render_nginx_conf(port=port, upstreams=[web1.port, web2.port]), port, tmp_path / "nginx-exempt")
        try:
            local = Client(exempt)
            passed, _ = flood(local, "/healthz", most=burst + 50)
            assert passed == burst + 50
            local.close()
        finally:
            exempt.stop()


@through_nginx
async def test_websocket_opens_over_the_limit_get_429(server_env, tmp_path):
    # The mechanism on a small scale: a burst of 2 handshakes and one a
    # minute (so that the test's own pace does not matter), and (on a second
    # nginx) 2 open sockets at a time.
    with stack(
        server_env,
        tmp_path,
        replace=[
            NOT_EXEMPT,
            ("limit_req zone=ws_opens burst=200 nodelay;", "limit_req zone=ws_opens burst=2 nodelay;"),
            ("zone=ws_opens:10m rate=10r/s;", "zone=ws_opens:10m rate=1r/m;"),
        ],
    ) as (web1, web2, nginx):
        _, session = load_page(nginx)
        # New sockets per second: the third handshake within the burst's time is refused.
        for _ in range(3):
            async with connect(nginx, session) as ws:
                await recv(ws, "welcome")
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(nginx, session):
                pass
        assert info.value.response.status_code == 429
        async with connect(nginx, session, source=OTHER_ADDRESS) as ws:
            await recv(ws, "welcome")

        # Open sockets at a time: the third is refused while two are open, a
        # third from another address is not, and one closing makes room.
        port = free_port()
        conf = render_nginx_conf(
            port=port,
            upstreams=[web1.port, web2.port],
            replace=[NOT_EXEMPT, ("limit_conn ws_open 1000;", "limit_conn ws_open 2;")],
        )
        capped = Nginx(conf, port, tmp_path / "nginx-capped")
        try:
            async with connect(capped, session) as a, connect(capped, session) as b:
                await recv(a, "welcome")
                await recv(b, "welcome")
                with pytest.raises(websockets.InvalidStatus) as info:
                    async with connect(capped, session):
                        pass
                assert info.value.response.status_code == 429
                async with connect(capped, session, source=OTHER_ADDRESS) as c:
                    await recv(c, "welcome")
            async with connect(capped, session) as ws:
                await recv(ws, "welcome")
        finally:
            capped.stop()


@through_nginx
async def test_admin_login_posts_over_the_limit_get_429(server_env, tmp_path):
    rate, burst = _limit("admin_login")
    assert rate <= 1 / 5, "no more than one login attempt every 5 s from one address, after the burst"
    with stack(server_env, tmp_path, replace=[NOT_EXEMPT]) as (_, _, nginx):
        one, other = Client(nginx), Client(nginx, OTHER_ADDRESS)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = "username=admin&password=guess"
        # Without a CSRF token Django refuses (403) before any password is
        # checked: what is counted here is nginx's limit alone.
        passed, took = flood(one, "/admin/login/", most=burst + 5, method="POST", headers=form, body=body)
        assert burst + 1 <= passed <= burst + 1 + rate * took + 1, (passed, took)
        status, _, page = one.request("POST", "/admin/login/?next=/admin/", headers=form, body=body)
        assert status == 429 and b"429 Too Many Requests" in page, "nginx's own refusal"
        # The login page is still served (a GET is a page view), and another address may post.
        assert one.request("GET", "/admin/login/")[0] == 200
        assert other.request("POST", "/admin/login/", headers=form, body=body)[0] == 403
        one.close()
        other.close()


@through_nginx
async def test_a_failed_admin_login_counts_against_the_clients_address_not_a_header(server_env, tmp_path):
    """nginx replaces X-Forwarded-For with the peer; daphne --proxy-headers and axes (BEHIND_PROXY=1) use it."""
    with stack(server_env, tmp_path) as (_, _, nginx):
        client = Client(nginx, OTHER_ADDRESS)
        status, response, page = client.request("GET", "/admin/login/")
        assert status == 200
        csrf_cookie = SimpleCookie(response.headers["Set-Cookie"])["csrftoken"].value
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        status, _, page = client.request(
            "POST",
            "/admin/login/",
            body=f"csrfmiddlewaretoken={token}&username=admin&password=guess",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf_cookie}",
                "Referer": f"{nginx.base}/admin/login/",
                "X-Forwarded-For": "203.0.113.9",
            },
        )
        assert status == 200 and b"Please enter the correct username and password" in page
        client.close()
        env = {**server_env, "BEHIND_PROXY": "1"}
        addresses = manage(
            env,
            "shell",
            "-c",
            "from axes.models import AccessAttempt; print(sorted(a.ip_address for a in AccessAttempt.objects.all()))",
        )
        assert addresses.strip().splitlines()[-1] == f"['{OTHER_ADDRESS}']"
