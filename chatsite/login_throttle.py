"""The admin login's throttle (django-axes): which logins it watches.

Whose address counts: ``chat.addresses.client_address``. Settings:
chatsite/settings.py, "Admin login"; why: README, "Limits".
"""

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


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
