"""The admin login's throttle (django-axes): whose address counts, and which logins it watches.

Settings: chatsite/settings.py, "Admin login"; why: README, "Limits".
"""

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str | None:
    """The address failed logins are counted against (``AXES_CLIENT_IP_CALLABLE``).

    ``REMOTE_ADDR`` is what daphne puts in the ASGI scope: the TCP peer, or,
    when daphne runs with ``--proxy-headers`` (the Dockerfile's command), the
    first address of ``X-Forwarded-For``, which deploy/nginx.conf replaces
    with the client's own. That header is trusted only with
    ``BEHIND_PROXY=1``. Without it, a request that carries the header may
    have chosen its own address (daphne cannot say whether it used the
    header), so all such requests share one count, ``None``: rotating the
    header neither escapes the per-address lockout nor locks out somebody
    else's address.
    """
    if settings.BEHIND_PROXY or "HTTP_X_FORWARDED_FOR" not in request.META:
        return request.META.get("REMOTE_ADDR")
    return None


class HttpLoginThrottle(AxesStandaloneBackend):
    """axes' lockout check, for logins over HTTP (which always pass the request).

    ``AxesStandaloneBackend`` raises ``AxesBackendRequestParameterRequired``
    when ``authenticate()`` comes without a request; Django's test client
    ``login()`` and code in a shell call it so. Those are not a visitor
    guessing passwords: they are let through to the next backend. The admin's
    login form (``AuthenticationForm``) always passes the request.
    """

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
