"""The health check: ``/healthz`` reports whether the database and the channel layer answer.

Probes come by IP (a compose healthcheck asks for ``127.0.0.1:8000``, an
orchestrator for the pod's address), which ``ALLOWED_HOSTS`` does not name.
So ``/healthz`` is answered by a middleware placed before every other one:
before anything reads the ``Host`` header (``CommonMiddleware`` would refuse
it with 400 and log ``DisallowedHost``), before the HTTPS redirect, and
before the session middleware, so a probe creates no session. Only that one
exact path skips them; every other request is validated as usual.
"""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from chat.middleware import OnePathMiddleware

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
HEALTH_TIMEOUT = 2.0


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer_ok() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz")
    await layer.send(channel, {"type": "healthz.ping"})
    await layer.receive(channel)


async def healthz(request: HttpRequest) -> JsonResponse:
    """Check the database and the channel layer for real: 200 if both answer, else 503."""
    checks = {
        "database": database_sync_to_async(_database_ok)(),
        "channel_layer": _channel_layer_ok(),
    }
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, HEALTH_TIMEOUT)
            report[name] = "ok"
        except Exception as exc:  # any failure of the part is the answer
            logger.warning("healthz: %s failed: %s: %s", name, exc.__class__.__name__, exc)
            report[name] = "error"
    healthy = all(value == "ok" for value in report.values())
    return JsonResponse({"status": "ok" if healthy else "error", **report}, status=200 if healthy else 503)


class HealthCheckMiddleware(OnePathMiddleware):
    """Answer ``/healthz`` before any other middleware; pass everything else on.

    First in ``MIDDLEWARE``. The server runs each page view's whole
    middleware chain in one thread (chatsite/http.py), where this passes
    requests on without a hop and runs the (rare) probe's async checks on
    the server's event loop.
    """

    path = HEALTH_PATH

    def answer(self, request: HttpRequest) -> HttpResponse:
        return async_to_sync(healthz)(request)

    async def answer_async(self, request: HttpRequest) -> HttpResponse:
        return await healthz(request)
