"""The websocket origin check: only the site's own pages may open a socket.

A browser sends the chat's session cookie with a handshake opened by any
page, so a foreign page that got through could chat as the visitor
(cross-site websocket hijacking). ``chat.origin`` lets a socket in only when
its ``Origin`` is the origin of the request itself, or listed exactly in
``CSRF_TRUSTED_ORIGINS``.
"""

import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat.origin import SameOriginValidator, parse_origin, refusal
from chatsite.asgi import application
from tests.conftest import make_session

TIMEOUT = 5


@pytest.fixture(autouse=True)
def site(settings) -> None:
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.SECURE_PROXY_SSL_HEADER = None


def scope(
    origin: str | list[str] | None, host: str | None = "localhost:8000", scheme: str | None = None, **headers: str
) -> dict:
    """A websocket scope as daphne builds it (daphne leaves ``scheme`` out)."""
    pairs = [(b"origin", value.encode("latin1")) for value in ([origin] if isinstance(origin, str) else origin or [])]
    if host is not None:
        pairs.append((b"host", host.encode("latin1")))
    pairs += [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    built = {"type": "websocket", "path": "/ws/chat/lobby/", "headers": pairs}
    if scheme is not None:
        built["scheme"] = scheme
    return built


# --- The rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:8000", "localhost:8000", None),  # daphne: no scheme means ws
        ("http://localhost:8000", "localhost:8000", "ws"),
        ("http://localhost", "localhost", None),
        ("http://localhost", "localhost:80", None),  # the default port, written out or not
        ("http://127.0.0.1:8000", "127.0.0.1:8000", None),
        ("http://[::1]:8000", "[::1]:8000", None),
        ("https://chat.example.com", "chat.example.com", "wss"),
        ("https://chat.example.com:443", "chat.example.com", "wss"),
        ("https://chat.example.com:8443", "chat.example.com:8443", "wss"),
        ("HTTP://LocalHost:8000", "localhost:8000", None),  # scheme and host names are case-insensitive
    ],
)
def test_the_requests_own_origin_is_let_in(origin, host, scheme):
    assert refusal(scope(origin, host, scheme)) is None


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "reason"),
    [
        # Another site.
        ("http://evil.example", "localhost:8000", None, "Origin is not this site"),
        ("https://evil.example", "chat.example.com", "wss", "Origin is not this site"),
        # Look-alikes of an allowed host.
        ("http://127.0.0.1.evil.example:8000", "127.0.0.1:8000", None, "Origin is not this site"),
        ("http://evil-localhost:8000", "localhost:8000", None, "Origin is not this site"),
        ("http://localhost.evil:8000", "localhost:8000", None, "Origin is not this site"),
        ("http://evillocalhost:8000", "localhost:8000", None, "Origin is not this site"),
        ("https://chat.example.com.evil.example", "chat.example.com", "wss", "Origin is not this site"),
        ("https://sub.chat.example.com", "chat.example.com", "wss", "Origin is not this site"),
        # Another allowed host is still another origin.
        ("http://127.0.0.1:8000", "localhost:8000", None, "Origin is not this site"),
        # Another scheme.
        ("https://localhost:8000", "localhost:8000", None, "Origin is not this site"),
        ("https://localhost:8000", "localhost:8000", "ws", "Origin is not this site"),
        ("http://chat.example.com", "chat.example.com", "wss", "Origin is not this site"),
        # Another port.
        ("http://localhost:8001", "localhost:8000", None, "Origin is not this site"),
        ("http://localhost", "localhost:8000", None, "Origin is not this site"),
        ("http://localhost:8000", "localhost", None, "Origin is not this site"),
        ("https://chat.example.com:444", "chat.example.com", "wss", "Origin is not this site"),
        # Opaque, missing or not an origin at all.
        ("null", "localhost:8000", None, "opaque Origin null"),
        (None, "localhost:8000", None, "no Origin header"),
        ("", "localhost:8000", None, "malformed Origin"),
        ("localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("//localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("http://localhost:8000/", "localhost:8000", None, "malformed Origin"),
        ("http://localhost:8000/chat/lobby/", "localhost:8000", None, "malformed Origin"),
        ("http://localhost:8000?x=1", "localhost:8000", None, "malformed Origin"),
        ("http://user@localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("http://evil.example@localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("ws://localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("file://", "localhost:8000", None, "malformed Origin"),
        ("javascript:alert(1)", "localhost:8000", None, "malformed Origin"),
        ("http://localhost:", "localhost", None, "malformed Origin"),
        ("http://localhost:99999", "localhost:99999", None, "malformed Origin"),
        ("http://localhost:8000, http://evil.example", "localhost:8000", None, "malformed Origin"),
        (" http://localhost:8000", "localhost:8000", None, "malformed Origin"),
        ("http://lo calhost:8000", "localhost:8000", None, "malformed Origin"),
        ("http://localhöst:8000", "localhöst:8000", None, "malformed Origin"),
        (["http://localhost:8000", "http://localhost:8000"], "localhost:8000", None, "several Origin headers"),
        # The Host itself is not ours (a DNS-rebinding page is its own origin).
        ("http://evil.example:8000", "evil.example:8000", None, "Host not in ALLOWED_HOSTS"),
        ("http://127.0.0.1.evil.example", "127.0.0.1.evil.example", None, "Host not in ALLOWED_HOSTS"),
        ("http://localhost:8000", None, None, "no Host header"),
        ("http://localhost:8000", "localhost:8000/x", None, "malformed Host"),
    ],
)
def test_anything_else_is_refused_with_its_reason(origin, host, scheme, reason):
    assert refusal(scope(origin, host, scheme)) == reason


def test_debug_without_allowed_hosts_allows_localhost_like_django(settings):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS = []
    assert refusal(scope("http://localhost:8000", "localhost:8000")) is None
    assert refusal(scope("http://example.com", "example.com")) == "Host not in ALLOWED_HOSTS"


def test_trusted_origins_are_let_in_exactly(settings):
    # A proxy that rewrites Host: the page is https://chat.example.com, the
    # socket reaches daphne as ws://chat-backend:8000.
    settings.ALLOWED_HOSTS = ["chat-backend"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.org"]
    backend = {"host": "chat-backend:8000", "scheme": None}
    assert refusal(scope("https://chat.example.com", **backend)) is None
    assert refusal(scope("https://chat.example.com:443", **backend)) is None
    for origin in [
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "https://sub.chat.example.com",
        "https://chat.example.com.evil.example",
        "https://a.example.org",
    ]:  # no wildcards
        assert refusal(scope(origin, **backend)) == "Origin is not this site", origin
    # A trusted origin does not make a foreign Host acceptable.
    assert refusal(scope("https://chat.example.com", "evil.example")) == "Host not in ALLOWED_HOSTS"


def test_behind_a_tls_proxy_the_forwarded_proto_decides_the_scheme(settings):
    secure = {"host": "chat.example.com", "x_forwarded_proto": "https"}
    # Not configured: anyone could send the header, so it is ignored.
    assert refusal(scope("https://chat.example.com", **secure)) == "Origin is not this site"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert refusal(scope("https://chat.example.com", **secure)) is None
    assert refusal(scope("http://chat.example.com", **secure)) == "Origin is not this site"
    plain = {"host": "chat.example.com", "x_forwarded_proto": "http"}
    assert refusal(scope("http://chat.example.com", **plain)) is None
    assert refusal(scope("https://chat.example.com", **plain)) == "Origin is not this site"
    assert refusal(scope("https://chat.example.com", "chat.example.com", x_forwarded_proto="https, http")) is None


def test_parse_origin():
    assert parse_origin("https://Chat.Example.com") == ("https", "chat.example.com", 443)
    assert parse_origin("http://[::1]:8000") == ("http", "[::1]", 8000)
    assert parse_origin("http://localhost:0") is None
    assert parse_origin("https://") is None


async def test_only_websockets_are_guarded():
    async def app(scope, receive, send):
        raise AssertionError("not reached")

    with pytest.raises(ValueError, match="websocket"):
        await SameOriginValidator(app)({"type": "http"}, None, None)


# --- Through the ASGI application --------------------------------------------------


async def handshake(
    origin: bytes | None, host: bytes, *, scheme: str | None = None, cookie: str | None = None
) -> WebsocketCommunicator:
    headers = [(b"host", host)]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    comm = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=headers)
    if scheme:
        comm.scope["scheme"] = scheme  # the communicator has no parameter for it
    return comm


async def new_browser() -> str:
    return (await database_sync_to_async(make_session)()).session_key


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        (b"http://localhost:8000", b"localhost:8000", None),
        (b"https://chat.example.com", b"chat.example.com", "wss"),
    ],
)
async def test_a_tab_of_the_site_gets_its_welcome(origin, host, scheme):
    comm = await handshake(origin, host, scheme=scheme, cookie=await new_browser())
    assert (await comm.connect(timeout=TIMEOUT))[0]
    assert '"type":"welcome"' in await comm.receive_from(timeout=TIMEOUT)
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "host", "scheme", "reason"),
    [
        (b"http://localhost:8001", b"localhost:8000", None, "Origin is not this site"),
        (b"https://localhost:8000", b"localhost:8000", None, "Origin is not this site"),
        (b"http://chat.example.com", b"chat.example.com", "wss", "Origin is not this site"),
        (b"http://evil-localhost", b"localhost", None, "Origin is not this site"),
        (None, b"localhost:8000", None, "no Origin header"),
        (b"http://evil.example", b"evil.example", None, "Host not in ALLOWED_HOSTS"),
    ],
)
async def test_a_refused_handshake_is_closed_before_accept_and_logged(caplog, origin, host, scheme, reason):
    key = await new_browser()
    comm = await handshake(origin, host, scheme=scheme, cookie=key)
    with caplog.at_level(logging.INFO, logger="chat.origin"):
        connected, _ = await comm.connect(timeout=TIMEOUT)
    assert not connected  # closed before accept: daphne answers the handshake with 403
    assert await comm.receive_nothing(timeout=0.2)
    [record] = [r for r in caplog.records if r.name == "chat.origin"]
    assert record.levelno == logging.INFO
    logged = record.getMessage()
    assert reason in logged and (origin or b"").decode() in logged
    assert key not in logged and "sessionid" not in logged  # the Origin, never the cookie
