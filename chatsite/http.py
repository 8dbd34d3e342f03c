"""HTTP under daphne: Django's WSGI handler, each request in one trip to a thread.

Django's ASGI handler runs each sync middleware (all of Django's own, the
session middleware's included) through ``sync_to_async``, and a sync-only
one through ``async_to_sync`` back: a dozen trips between the event loop and
a thread per page view, each request holding a thread and a database
connection meanwhile. Here the whole request (middleware, view, template,
session save) runs in one of the event loop's pool threads, as under a
threaded WSGI server, and the event loop sends the response: one hop each
way. Measured (docs/performance.md): new browsers connected at 21/s through
Django's ASGI handler, at 134/s this way.

The pool threads are not the one thread the sockets' database work uses
(``database_sync_to_async`` is thread-sensitive): page views and sockets do
not queue behind each other. Each thread takes its own connection from the
database pool (``DATABASE_POOL_SIZE``).

Responses are sent whole. The app's responses are pages, the admin and a
few small static files; nothing streams.
"""

import io
import sys
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]


def environ_for(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Return the WSGI environ (PEP 3333) of an ASGI HTTP request."""
    script_name = scope.get("root_path", "").encode("utf8").decode("latin1")
    path_info = scope["path"].encode("utf8").decode("latin1")
    if script_name and path_info.startswith(script_name):
        path_info = path_info[len(script_name) :]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 0),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin1").upper().replace("-", "_")
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"
        value = raw_value.decode("latin1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _run(app: WsgiApp, environ: dict[str, Any]) -> Response:
    """Run the WSGI app to the end (in a pool thread); return its status, headers and body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [(status, headers)]
        return lambda data: None  # the legacy write(); Django does not use it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()  # Django sends request_finished here (database connections go back)
    status, headers = started[0]
    encoded = [(name.lower().encode("latin1"), value.strip().encode("latin1")) for name, value in headers]
    return int(status.split(" ", 1)[0]), encoded, body


class WsgiInThreads:
    """An ASGI app serving HTTP with a WSGI app, each request run in a pool thread."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self._run = sync_to_async(_run, thread_sensitive=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("WsgiInThreads serves HTTP only")
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        status, headers, body = await self._run(self.app, environ_for(scope, b"".join(chunks)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
