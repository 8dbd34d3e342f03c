"""HTTP under daphne: Django's WSGI handler, each request in one trip to a pool thread (chatsite/http.py)."""

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator

from chatsite.asgi import application
from chatsite.http import environ_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_environ_carries_the_request_as_wsgi_expects():
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/chat/lobby/",
        "query_string": b"a=1&b=%C3%A9",
        "http_version": "1.1",
        "scheme": "https",
        "server": ("chat.example.com", 443),
        "client": ("10.0.0.7", 5050),
        "headers": [
            (b"host", b"chat.example.com"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", b"3"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
    }
    environ = environ_for(scope, b"x=1")
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == (
        "POST",
        "/chat/lobby/",
        "a=1&b=%C3%A9",
    )
    assert (environ["wsgi.url_scheme"], environ["SERVER_NAME"], environ["SERVER_PORT"]) == (
        "https",
        "chat.example.com",
        "443",
    )
    assert environ["REMOTE_ADDR"] == "10.0.0.7"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("application/x-www-form-urlencoded", "3")
    assert environ["HTTP_COOKIE"] == "a=1,b=2"  # repeated headers joined, as WSGI servers do
    assert environ["wsgi.input"].read() == b"x=1"


async def page(path: str = "/chat/lobby/") -> dict:
    return await HttpCommunicator(application, "GET", path, headers=[(b"host", b"localhost")]).get_response(timeout=10)


async def test_a_room_page_is_served_whole_with_its_session_cookie():
    response = await page()
    assert response["status"] == 200
    assert b'data-testid="username-input"' in response["body"]
    assert any(name == b"set-cookie" and value.strip().startswith(b"sessionid=") for name, value in response["headers"])


async def test_page_views_do_not_queue_behind_the_sockets_database_thread():
    # The sockets' database work runs in the one thread-sensitive thread; a
    # page view meanwhile is served from a pool thread, not after it.
    order: list[str] = []

    def busy() -> None:
        time.sleep(1.5)
        order.append("socket work done")

    blocking = asyncio.create_task(database_sync_to_async(busy)())
    await asyncio.sleep(0.1)
    assert (await page())["status"] == 200
    order.append("page served")
    await blocking
    assert order == ["page served", "socket work done"]
