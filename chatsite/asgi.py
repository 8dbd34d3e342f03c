"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from chat.origin import SameOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The app's few static files are served by the same process, so
        # `make run` and the compose stack need no separate file server.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Cookies ride along with any page's handshake: only the site's own
        # origin may open a socket (cross-site websocket hijacking).
        # No session or auth middleware: the consumer reads the session key
        # from the cookie and resolves the session, its user and the
        # browser's settings in one trip to the database thread
        # (services.resolve_socket), and its sends go straight to daphne.
        "websocket": SameOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
