"""HTTP views: the room page and the health check."""

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from chat import protocol, selectors, services
from chat.middleware import session_id_exempt

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0


def room(request: HttpRequest, room: str) -> HttpResponse:
    """Render a room with the visitor's name and the newest messages already in place."""
    identity = services.resolve_identity(session=request.session, verified=request.user.is_authenticated)
    assert identity is not None  # SessionIdMiddleware gave the session its session_id
    messages = selectors.latest_messages(room=room)
    return render(
        request,
        "chat/room.html",
        {
            "room": room,
            "identity": identity,
            "messages": messages,
            "client_config": {
                "room": room,
                "author_id": identity.author_id,
                "username": identity.username,
                "messages": [protocol.message_data(m) for m in messages],
                "page_size": selectors.PAGE_SIZE,
            },
        },
    )


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer_ok() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz")
    await layer.send(channel, {"type": "healthz.ping"})
    await layer.receive(channel)


@session_id_exempt
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
