"""Where a request comes from: the client's address, and the network a limit per address counts it in."""

import ipaddress

from django.conf import settings
from django.http import HttpRequest

# The one network of every request whose address cannot be trusted or read
# (see ``client_address``): such requests share one count.
UNKNOWN = "unknown"
# One host usually owns a whole IPv6 /64 (SLAAC, privacy addresses): it is
# counted as one address.
IPV6_PREFIX = 64


def client_address(request: HttpRequest) -> str | None:
    """The client's address, or None when it cannot be trusted.

    ``REMOTE_ADDR`` is what daphne puts in the ASGI scope: the TCP peer, or,
    when daphne runs with ``--proxy-headers`` (the Dockerfile's command), the
    first address of ``X-Forwarded-For``, which deploy/nginx.conf replaces
    with the client's own. That header is trusted only with
    ``BEHIND_PROXY=1``. Without it, a request that carries the header may
    have chosen its own address (daphne cannot say whether it used the
    header), so all such requests share one count, ``None``: rotating the
    header neither escapes a limit per address nor spends somebody else's.

    The admin login's throttle counts failed logins by it
    (``AXES_CLIENT_IP_CALLABLE``), and new identities are limited by it
    (``chat.newcomers``).
    """
    if settings.BEHIND_PROXY or "HTTP_X_FORWARDED_FOR" not in request.META:
        return request.META.get("REMOTE_ADDR")
    return None


def network(address: str | None) -> str | None:
    """The network a limit per address counts ``address`` in; None for loopback, which no such limit counts.

    An IPv4 address is its own network; an IPv6 address counts as its /64
    (``2001:db8:1:2::/64``), an IPv4-mapped one (``::ffff:203.0.113.7``) as
    the IPv4 address. An address that is missing, untrusted (None) or not an
    address at all shares ``UNKNOWN`` with all the others.
    """
    if address is None:
        return UNKNOWN
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
