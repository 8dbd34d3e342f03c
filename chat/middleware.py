"""Give every browser a long-lived session with a ``session_id`` on its page views (new ones limited per network)."""

from collections.abc import Callable
from datetime import date
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from chat import newcomers
from chat.identity import SESSION_ID_KEY, ensure_session_id, get_session_id
from chat.sessions import start_page_only

# The date the cookie was last re-sent. Changing it once a day makes Django
# save the session and send the cookie again with a fresh expiry, so an
# active visitor never loses it, without a write on every page view.
REFRESHED_ON_KEY = "refreshed_on"
# The request attribute holding the session_id a view started with.
SESSION_ID_ATTR = "_chat_session_id"


def session_id_exempt(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view that must not create a session (health checks, APIs)."""
    view.session_id_exempt = True  # type: ignore[attr-defined]
    return view


class SessionIdMiddleware:
    """Ensure the session holds a ``session_id``, kept even when the session is flushed.

    Sits after Django's ``SessionMiddleware``. Django keeps session data when
    it rotates the key (``cycle_key`` on login); on logout it flushes the
    data, and this puts the browser's ``session_id`` back. A browser without
    one gets one only within its network's limit on new identities
    (``chat.newcomers``); past it, a 429 and no session.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # Set by process_view; a view exempt from sessions never loads one here.
        known = getattr(request, SESSION_ID_ATTR, None)
        if known is not None and get_session_id(request.session) is None:
            request.session[SESSION_ID_KEY] = str(known)
        return response

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], *args: Any) -> HttpResponse | None:
        if getattr(view_func, "session_id_exempt", False):
            return None
        if get_session_id(request.session) is None:
            # A new identity: limited per client network, refused before
            # anything is written (the session stays empty, so none is saved).
            retry_after = newcomers.refusal(request)
            if retry_after is not None:
                return newcomers.refused_page(retry_after)
            if request.session.session_key is None:
                # A browser's first page view: its session lives a day until the
                # browser opens a socket or signs in (chat.sessions.keep).
                start_page_only(request.session)
        setattr(request, SESSION_ID_ATTR, ensure_session_id(request.session))
        today = date.today().isoformat()
        if request.session.get(REFRESHED_ON_KEY) != today:
            request.session[REFRESHED_ON_KEY] = today
        return None


class SecureSessionCookieMiddleware:
    """Mark the session cookie ``Secure`` on responses to HTTPS requests.

    Sits before Django's ``SessionMiddleware``, which sets the cookie on the
    way out. ``SESSION_COOKIE_SECURE`` would force it for plain HTTP too,
    where the browser would then never send it back.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.is_secure() and settings.SESSION_COOKIE_NAME in response.cookies:
            response.cookies[settings.SESSION_COOKIE_NAME]["secure"] = True
        return response


class OnePathMiddleware:
    """Answer one exact path before the middleware after it; pass everything else on.

    For the operator's endpoints (``/healthz``, ``/metrics``): placed first in
    ``MIDDLEWARE``, they are answered before the ``Host`` check, the HTTPS
    redirect and the session. Sync and async, like Django's own middleware: a
    subclass names its ``path`` and how it answers in a thread (``answer``)
    and on the event loop (``answer_async``).
    """

    sync_capable = True
    async_capable = True
    path = ""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if request.path_info == self.path:
            return self.answer(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == self.path:
            return await self.answer_async(request)
        return await self.get_response(request)

    def answer(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    async def answer_async(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError
