"""HTTP views: the room page (``/healthz`` is answered by ``chat.health``)."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat import protocol, selectors, services


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
