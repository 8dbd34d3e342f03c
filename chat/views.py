"""HTTP views: the room page and what its script asks after a socket opens (``/healthz``: ``chat.health``)."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.utils.cache import add_never_cache_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from chat import protocol, selectors, services, sessions
from chat.middleware import session_id_exempt

# The page's module script. Its URL names its content (a hash) when DEBUG is off.
CLIENT_SCRIPT = "chat/chat.js"


@never_cache
def room(request: HttpRequest, room: str) -> HttpResponse:
    """Render a room with the visitor's name and the newest messages already in place.

    Never cached (``Cache-Control: max-age=0, no-cache, no-store,
    must-revalidate, private``): it holds the visitor's name and the newest
    messages, and it names the current, content-hashed ``chat.js``, so a
    page loaded after a deploy always runs that deploy's script.
    """
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
                # Whether chat.js must ask, once its socket opens, to keep the session.
                "session_kept": not sessions.is_page_only(request.session),
            },
        },
    )


@csrf_exempt  # it can only lengthen the caller's own session; cross-site, the Lax cookie is not sent
@require_POST
@session_id_exempt  # never creates a session
def socket_opened(request: HttpRequest) -> JsonResponse:
    """What chat.js asks each time its socket opens: which script is current, and, once, keep my session.

    ``?keep=1`` (sent until the answer says ``kept``) turns a page-only session
    into a long-lived one (chat.sessions): one session read and, the first
    time, one write. Without it, no query at all. ``script`` is the URL of
    the current ``chat.js``: a tab whose own URL differs runs a script a deploy
    has replaced, and reloads.
    """
    kept = sessions.keep(request.session) if request.GET.get("keep") == "1" else None
    response = JsonResponse({"script": static(CLIENT_SCRIPT), "kept": kept})
    add_never_cache_headers(response)
    return response
