"""Static files in production: content-hashed names cached for a year, gzip and brotli, pages never cached.

The pages link to what ``collectstatic`` wrote (the ``collected_static``
fixture runs it once, as the Dockerfile's build does), served by WhiteNoise
inside Django's middleware (chat/static.py).
"""

import gzip
import re
import secrets
import urllib.request

import brotli
import pytest

from tests.servers import ROOT, Server

pytestmark = pytest.mark.django_db

YEAR_IMMUTABLE = "max-age=31536000, public, immutable"
HASHED = re.compile(r'(?:src|href)="(/static/chat/chat\.[0-9a-f]{12}\.(js|css))"')
SOURCE = {kind: (ROOT / f"chat/static/chat/chat.{kind}").read_bytes() for kind in ("js", "css")}


@pytest.fixture
def production_static(settings, collected_static):
    """DEBUG off, as a deploy runs: the manifest storage, STATIC_ROOT only."""
    settings.DEBUG = False
    settings.STATIC_ROOT = str(collected_static)
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    settings.WHITENOISE_USE_FINDERS = False


def assets(html: str) -> dict[str, str]:
    return {kind: url for url, kind in HASHED.findall(html)}


def test_the_page_links_hashed_names_and_they_are_cached_for_a_year(client, production_static):
    page = client.get("/chat/lobby/")
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"] and "max-age=0" in page["Cache-Control"]
    urls = assets(page.content.decode())
    assert set(urls) == {"js", "css"}
    for kind, url in urls.items():
        response = client.get(url)
        assert response.status_code == 200
        assert response["Cache-Control"] == YEAR_IMMUTABLE
        assert response.getvalue() == SOURCE[kind]
        assert "Content-Encoding" not in response
    # What chat.js compares its own URL with after each socket opens.
    assert client.post("/socket-opened").json()["script"] == urls["js"]


def test_the_plain_names_are_cached_a_minute_only(client, production_static):
    response = client.get("/static/chat/chat.js")
    assert response.status_code == 200 and response["Cache-Control"] == "max-age=60, public"


@pytest.mark.parametrize(
    ("accept", "encoding", "decode"),
    [
        ("gzip", "gzip", gzip.decompress),
        ("gzip, deflate, br", "br", brotli.decompress),
        ("br", "br", brotli.decompress),
        ("identity", None, bytes),
    ],
)
def test_gzip_and_brotli_on_request(client, production_static, accept, encoding, decode):
    url = assets(client.get("/chat/lobby/").content.decode())["js"]
    response = client.get(url, HTTP_ACCEPT_ENCODING=accept)
    assert response.status_code == 200
    assert response.get("Content-Encoding") == encoding
    assert "Accept-Encoding" in response["Vary"]
    assert response["Cache-Control"] == YEAR_IMMUTABLE
    assert decode(response.getvalue()) == SOURCE["js"]


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_a_debug_off_server_serves_a_working_page_with_its_assets(server_env, collected_static, tmp_path):
    """What ``DEBUG=0 SECRET_KEY=… make run`` starts (plain HTTP: no HTTPS redirect for the try-out)."""
    env = {
        **server_env,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "STATIC_ROOT": str(collected_static),
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
    }
    server = Server(env, tmp_path / "server.log")
    try:
        with urllib.request.urlopen(server.url(), timeout=10) as page:
            assert page.status == 200
            assert page.headers["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
            html = page.read().decode()
        urls = assets(html)
        assert set(urls) == {"js", "css"}
        for kind, url in urls.items():
            request = urllib.request.Request(server.base + url, headers={"Accept-Encoding": "br"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == YEAR_IMMUTABLE
                assert response.headers["Content-Encoding"] == "br"
                assert brotli.decompress(response.read()) == SOURCE[kind]
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "server.log").read_text()
