"""Refuse a websocket handshake unless it comes from this site's own pages.

Browsers send cookies with a websocket handshake whatever page opened it, so
the ``Origin`` header is the only thing that tells a tab of the chat from a
hostile page (cross-site websocket hijacking). Channels'
``AllowedHostsOriginValidator`` accepts any scheme and port of an allowed host;
this accepts only the origin of the request itself: ``http://`` + ``Host`` on
``ws://``, ``https://`` + ``Host`` on ``wss://``, with an allowed ``Host``, or
an origin listed exactly in ``CSRF_TRUSTED_ORIGINS``.
"""

import logging
import re
from collections.abc import Iterable
from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Any

DEFAULT_PORTS = {"http": 80, "https": 443}
# Django's host_validation_re: a DNS name or a bracketed IPv6 address, then an
# optional port. Anything else (userinfo, a path, spaces, non-ASCII) is refused.
AUTHORITY_RE = re.compile(r"([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::([0-9]{1,5}))?")
ORIGIN_RE = re.compile(r"(https?)://([^/?#]+)")
# A refused value is logged; this much of it is enough to recognise it.
LOGGED_CHARS = 200


def _header(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin1") for key, value in scope.get("headers", []) if key.lower() == name]


def _authority(value: str, scheme: str) -> tuple[str, int] | None:
    """Return ``(host, port)`` of a ``host[:port]``, the port defaulted by scheme."""
    match = AUTHORITY_RE.fullmatch(value.lower())
    if match is None:
        return None
    host, port = match.group(1), match.group(2)
    number = int(port) if port else DEFAULT_PORTS[scheme]
    if not 0 < number < 65536:
        return None
    return host, number


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """Return ``(scheme, host, port)`` of a serialized origin, or None if it is not one."""
    match = ORIGIN_RE.fullmatch(value.lower())
    if match is None:
        return None
    scheme = match.group(1)
    authority = _authority(match.group(2), scheme)
    return None if authority is None else (scheme, *authority)


def is_secure(scope: Scope) -> bool:
    """Whether the socket came over TLS: ``wss`` in scope, or the trusted proxy says so.

    daphne (4.2) leaves ``scheme`` out of websocket scopes even with
    ``--proxy-headers``, so behind a TLS-terminating proxy the proxy's header
    decides, with the same setting as Django's ``request.is_secure()``.
    """
    if settings.SECURE_PROXY_SSL_HEADER:
        name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        values = _header(scope, header)
        if values:
            return values[0].split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "ws") == "wss"


def _allowed_hosts() -> list[str]:
    # As Django's HttpRequest.get_host(): variants of localhost while
    # developing with ALLOWED_HOSTS empty.
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


def _trusted(origin: tuple[str, str, int], trusted: Iterable[str]) -> bool:
    return any(parse_origin(entry) == origin for entry in trusted)


def refusal(scope: Scope) -> str | None:
    """Return why the handshake in ``scope`` must be refused, or None to let it in."""
    origins = _header(scope, b"origin")
    if not origins:
        return "no Origin header"
    if len(origins) > 1:
        return "several Origin headers"
    if origins[0] == "null":
        return "opaque Origin null"  # sandboxed frames, file:// pages, some redirects
    origin = parse_origin(origins[0])
    if origin is None:
        return "malformed Origin"
    hosts = _header(scope, b"host")
    if len(hosts) != 1:
        return "no Host header" if not hosts else "several Host headers"
    scheme = "https" if is_secure(scope) else "http"
    host = _authority(hosts[0], scheme)
    if host is None:
        return "malformed Host"
    if not validate_host(host[0].removesuffix("."), _allowed_hosts()):
        return "Host not in ALLOWED_HOSTS"
    if origin == (scheme, *host) or _trusted(origin, settings.CSRF_TRUSTED_ORIGINS):
        return None
    return "Origin is not this site"


class SameOriginValidator:
    """ASGI middleware: pass a websocket on only if its ``Origin`` is the request's own.

    A refused handshake is closed before accept, which daphne answers with 403.
    """

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only guards websocket connections")
        reason = refusal(scope)
        if reason is None:
            return await self.application(scope, receive, send)
        logger.info(
            "websocket refused path=%s: %s (origin=%r host=%r)",
            scope.get("path", ""),
            reason,
            [value[:LOGGED_CHARS] for value in _header(scope, b"origin")],
            [value[:LOGGED_CHARS] for value in _header(scope, b"host")],
        )
        return await WebsocketDenier()(scope, receive, send)
