"""The limit on new identities per client network (chat/newcomers.py), through the page view."""

import urllib.error
import urllib.request

import pytest
import redis
from django.contrib.sessions.models import Session
from django.test import Client

from tests.servers import Server

pytestmark = pytest.mark.django_db

EVADER, NEIGHBOUR = "203.0.113.7", "198.51.100.9"


def page(address: str, client: Client | None = None, **headers: str):
    """A page view from ``address``: a new browser unless ``client`` (one that has its cookie) is given."""
    return (client or Client()).get("/chat/lobby/", REMOTE_ADDR=address, **headers)


@pytest.fixture
def burst(settings):
    """A small burst, and a refill too slow to matter during a test (one a minute)."""
    settings.CHAT_NEW_IDENTITY_RATE_BURST = 3
    settings.CHAT_NEW_IDENTITY_RATE_PER_SECOND = 1 / 60
    return 3


def test_one_network_past_its_burst_gets_429_and_no_session(burst, data_queries):
    browsers = [Client() for _ in range(burst)]
    assert [page(EVADER, browser).status_code for browser in browsers] == [200] * burst
    assert Session.objects.count() == burst
    with data_queries() as refused_queries:
        refused = page(EVADER)
    assert refused.status_code == 429
    assert 59 <= int(refused["Retry-After"]) <= 60  # one token at one a minute, in whole seconds
    assert refused["Content-Type"].startswith("text/plain")
    assert "Too many new visitors" in refused.content.decode() and "1 minute" in refused.content.decode()
    assert "no-store" in refused["Cache-Control"]
    assert "sessionid" not in refused.cookies
    assert refused_queries.count == 0, refused_queries.statements  # nothing read, nothing written
    assert Session.objects.count() == burst
    # A browser that has its session is never refused; another network is not counted with this one.
    assert page(EVADER, browsers[0]).status_code == 200
    assert page(NEIGHBOUR).status_code == 200
    assert Session.objects.count() == burst + 1


def test_a_stale_cookie_is_a_new_identity(burst):
    for _ in range(burst):
        page(EVADER)
    stale = Client()
    stale.cookies["sessionid"] = "x" * 32  # a session that no longer exists
    assert page(EVADER, stale).status_code == 429


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_exempt(settings, address):
    settings.CHAT_NEW_IDENTITY_RATE_BURST = 1
    assert [page(address).status_code for _ in range(5)] == [200] * 5


def test_an_ipv6_network_counts_as_its_64(burst):
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::3"]
    assert [page(address).status_code for address in same_64] == [200] * burst
    assert page("2001:db8:1:2::4").status_code == 429
    assert page("2001:db8:1:3::1").status_code == 200  # the next /64


def test_an_ipv4_mapped_address_counts_as_the_ipv4_one(burst):
    for _ in range(burst):
        assert page(EVADER).status_code == 200
    assert page(f"::ffff:{EVADER}").status_code == 429


def test_a_burst_of_0_turns_the_limit_off(settings):
    settings.CHAT_NEW_IDENTITY_RATE_BURST = 0
    assert [page(EVADER).status_code for _ in range(30)] == [200] * 30


def test_a_forwarded_address_counts_only_behind_the_proxy(burst, settings):
    # Without BEHIND_PROXY the header is anyone's to send: every request that
    # carries it counts in one network, whatever address it claims.
    for n in range(burst):
        assert page(f"198.51.100.{n + 1}", HTTP_X_FORWARDED_FOR=f"198.51.100.{n + 1}").status_code == 200
    assert page("198.51.100.50", HTTP_X_FORWARDED_FOR="198.51.100.50").status_code == 429
    assert page("127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 429  # no loopback by the header
    assert page(NEIGHBOUR).status_code == 200  # no header: its own address
    # Behind the proxy, daphne --proxy-headers put the forwarded address in REMOTE_ADDR: it counts.
    settings.BEHIND_PROXY = True
    assert page("198.51.100.50", HTTP_X_FORWARDED_FOR="198.51.100.50").status_code == 200


@pytest.mark.django_db(transaction=True)  # /healthz checks the database from another thread: these commit
def test_what_creates_no_session_takes_no_token(settings):
    settings.CHAT_NEW_IDENTITY_RATE_BURST = 1
    for _ in range(3):
        assert Client().get("/healthz", REMOTE_ADDR=EVADER).status_code == 200
        assert Client().post("/socket-opened", REMOTE_ADDR=EVADER).status_code == 200
        assert Client().get("/static/chat/chat.js", REMOTE_ADDR=EVADER).status_code == 200
    assert Session.objects.count() == 0
    assert page(EVADER).status_code == 200  # the one token is still there


class RedisCommands:
    """The commands page views send through redis-py's sync client (the limit's script, the page cache)."""

    def __init__(self, monkeypatch) -> None:
        self.names: list[str] = []
        original = redis.Redis.execute_command

        def counting(client, *args, **kwargs):
            self.names.append(str(args[0]).upper())
            return original(client, *args, **kwargs)

        monkeypatch.setattr(redis.Redis, "execute_command", counting)


def test_the_limit_adds_no_query_and_one_redis_script_per_new_browser(data_queries, settings, monkeypatch):
    page("127.0.0.1")  # the room's newest page is cached (with Redis) from here on
    commands = RedisCommands(monkeypatch)
    with data_queries() as exempt:
        assert page("127.0.0.1").status_code == 200
    exempt_commands = list(commands.names)
    commands.names.clear()
    browser = Client()
    with data_queries() as limited:
        assert page(EVADER, browser).status_code == 200
    # The same queries as a new browser from loopback: the session's insert, and the
    # newest 50 on the embedded default (with Redis they are cached).
    assert limited.count == exempt.count == (1 if settings.REDIS_URL else 2), limited.statements
    if settings.REDIS_URL:
        assert sorted(commands.names) == sorted([*exempt_commands, "EVALSHA"]), commands.names
    else:
        assert commands.names == exempt_commands == []
    commands.names.clear()
    page(EVADER, browser)  # returning: no token taken
    assert "EVALSHA" not in commands.names


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_a_real_server_behind_the_proxy_limits_the_forwarded_address(server_env, tmp_path):
    env = {**server_env, "BEHIND_PROXY": "1", "CHAT_NEW_IDENTITY_RATE_BURST": "2"}
    server = Server(env, tmp_path / "daphne.log", args=["--proxy-headers"])

    def status(forwarded_for: str | None) -> tuple[int, str | None]:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(server.url(), headers=headers), timeout=10) as response:
                return response.status, None
        except urllib.error.HTTPError as refused:
            return refused.code, refused.headers["Retry-After"]

    try:
        assert [status(EVADER)[0] for _ in range(2)] == [200, 200]
        code, retry_after = status(EVADER)
        assert code == 429 and retry_after is not None and 0 < int(retry_after) <= 60
        assert status(NEIGHBOUR)[0] == 200
        assert [status(None)[0] for _ in range(3)] == [200] * 3  # the peer itself, loopback
    finally:
        server.stop()
