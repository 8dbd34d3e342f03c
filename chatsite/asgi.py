"""ASGI entry point: HTTP through Django (one thread per request), websockets through Channels."""

import logging
import os
import sys
from pathlib import Path

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models.
django_wsgi_app = get_wsgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.origin import SameOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chatsite.http import WsgiInThreads  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Pages, the admin and the static files: Django in one thread per
        # request. Static files come from the same process, so `make run`
        # and the compose stack need no separate file server: WhiteNoise, as
        # Django middleware (chat/static.py), with hashed names, gzip and brotli.
        "http": WsgiInThreads(django_wsgi_app),
        # Cookies ride along with any page's handshake: only the site's own
        # origin may open a socket (cross-site websocket hijacking).
        # No session or auth middleware: the consumer reads the session key
        # from the cookie and resolves the session, its user and the
        # browser's settings in one trip to the database thread
        # (services.resolve_socket), and its sends go straight to daphne.
        "websocket": SameOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)


def started_by_plain_daphne() -> bool:
    """Whether daphne's own command line (``daphne …``, ``python -m daphne``) runs this process.

    ``python -m chatsite.server`` runs daphne's command line too, but as its
    own ``__main__``, after putting its websocket factory in place.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:  # python -m …
        return spec.name in {"daphne", "daphne.__main__"}
    return Path(sys.argv[0]).name == "daphne"


if started_by_plain_daphne():
    # Not importing chatsite.server to check: importing daphne.server installs
    # Twisted's reactor, which only a daphne process wants.
    logging.getLogger("chat.server").warning(
        "Started as plain daphne, not python -m chatsite.server: websocket frames over the limit or "
        "with invalid UTF-8 drop the connection (1006) instead of closing it with 1009 or 1007; "
        "the 16 KiB limit holds only with --websocket-max-message-size 16384 --websocket-max-frame-size "
        "16384, and then the server's own larger frames fail; a client that stops reading is never "
        "dropped (CHAT_SEND_BUFFER_LIMIT). Start it with: python -m chatsite.server -b HOST -p PORT "
        "--websocket-max-message-size 16384 --websocket-max-frame-size 16384 chatsite.asgi:application "
        "(what make run and the Dockerfile run)."
    )
