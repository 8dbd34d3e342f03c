"""``GET /metrics``: the Prometheus scrape, for the operator's scraper only.

Like ``/healthz`` (chat/health.py), it is answered by a middleware placed
before the others: a scraper comes by IP (``ALLOWED_HOSTS`` does not name
it), over plain HTTP from inside the network (no HTTPS redirect), and must
create no session. Who may scrape (``refusal``):

- ``METRICS_TOKEN`` set: the request must carry ``Authorization: Bearer
  <token>`` (compared in constant time);
- the client's address must be in ``METRICS_ALLOW`` (CIDRs). Its default is
  loopback only without a token, any address with one.

A request that came with ``X-Forwarded-For`` never passes on its address:
behind a proxy daphne (``--proxy-headers``) takes the client address from
that header, which whoever reaches the port can write. So through a proxy,
or from another host, a scrape needs the token. Everyone else gets 403, the
same for every reason, which is logged (at INFO on ``chat.metrics``) with
the address, never the header's value.
"""

import hmac
import ipaddress
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from chat import metrics
from chat.middleware import OnePathMiddleware

logger = logging.getLogger("chat.metrics")

METRICS_PATH = "/metrics"
LOOPBACK = ("127.0.0.0/8", "::1/128")
ANYWHERE = ("0.0.0.0/0", "::/0")


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks that may scrape: ``METRICS_ALLOW``, or its default (loopback; anywhere with a token)."""
    cidrs = settings.METRICS_ALLOW or (ANYWHERE if settings.METRICS_TOKEN else LOOPBACK)
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def refusal(request: HttpRequest) -> str | None:
    """Why ``request`` may not scrape, or None if it may."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return "no valid token"
    elif "x-forwarded-for" in request.headers:
        return "forwarded request without a token"
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return "no client address"
    if not any(address in network for network in allowed_networks()):
        return "address not allowed"
    return None


def scrape(request: HttpRequest) -> HttpResponse:
    """Answer a scrape: 403 unless ``refusal`` lets it through, 405 for anything but GET and HEAD."""
    reason = refusal(request)
    if reason is not None:
        logger.info("metrics scrape refused: %s (address %s)", reason, request.META.get("REMOTE_ADDR"))
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    body, content_type = metrics.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type, headers={"Cache-Control": "no-store"})


class MetricsMiddleware(OnePathMiddleware):
    """Answer ``/metrics`` before the Host check, the HTTPS redirect and the session; pass the rest on.

    Second in ``MIDDLEWARE``, after the health check.
    """

    path = METRICS_PATH

    def answer(self, request: HttpRequest) -> HttpResponse:
        return scrape(request)

    async def answer_async(self, request: HttpRequest) -> HttpResponse:
        return await sync_to_async(scrape, thread_sensitive=False)(request)
