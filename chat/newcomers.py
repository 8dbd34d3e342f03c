"""The limit on new identities per client network: what keeps a blocked visitor from clearing cookies for ever.

A browser's identity is its session's ``session_id`` (``chat.identity``), so
a visitor staff blocked can drop its cookies and come back as a new guest.
Each new identity (a page view of a browser without a ``session_id``) takes
a token from its network's bucket (``chat.ratelimit``, action
``new_identity``): a burst of ``CHAT_NEW_IDENTITY_RATE_BURST`` (20), then
``CHAT_NEW_IDENTITY_RATE_PER_SECOND`` (one a minute); in Redis with
``REDIS_URL``, shared by every process. A network is an IPv4 address or an
IPv6 /64 (``chat.addresses``). Past the limit the page view is answered 429
with ``Retry-After``, before any session exists: nothing is written.

Not counted: browsers that already have a ``session_id`` (a returning
visitor is never refused), and loopback (127.0.0.0/8, ::1), the operator's
own tools and load tests on the machine. A burst of 0 turns the limit off.
docs/architecture.md, "A blocked visitor who clears cookies", says what it
does not stop.
"""

import logging
import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

from chat import addresses, ratelimit

logger = logging.getLogger(__name__)

ACTION = "new_identity"


def refusal(request: HttpRequest) -> int | None:
    """Take a token for a new identity from the request's network: None if allowed, else seconds to wait."""
    if settings.CHAT_NEW_IDENTITY_RATE_BURST <= 0:
        return None
    network = addresses.network(addresses.client_address(request))
    if network is None:  # loopback
        return None
    wait = ratelimit.take(action=ACTION, owner=network)
    if wait is None:
        return None
    seconds = math.ceil(wait)
    logger.info("new identity refused: network %s, retry after %d s", network, seconds)
    return seconds


def refused_page(retry_after: int) -> HttpResponse:
    """The 429 a page view past the limit gets: a short plain page and ``Retry-After`` (whole seconds)."""
    wait = f"{math.ceil(retry_after / 60)} minute(s)" if retry_after >= 60 else f"{retry_after} second(s)"
    response = HttpResponse(
        f"Too many new visitors have come from your network in a short time.\nPlease try again in {wait}.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response
