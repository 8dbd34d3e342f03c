"""Production settings: safe by default when DEBUG is off, each default overridable.

Settings are read once, at start-up, from the environment, so these run
``manage.py`` in a subprocess with the environment under test.
"""

import json
import os
import secrets
import urllib.error
import urllib.request
from http.cookies import SimpleCookie

import pytest

from tests.servers import Server, run_manage

# Variables of the environment under test; the caller's own are dropped so
# that a developer's shell cannot change the outcome.
CONTROLLED = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SESSION_COOKIE_DAYS",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "BEHIND_PROXY",
)
YEAR = 365 * 24 * 3600


def production(**overrides: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CONTROLLED}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(64), ALLOWED_HOSTS="chat.example.com")
    env.update(overrides)
    return env


def effective(env: dict[str, str]) -> dict:
    names = [
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_AGE",
    ]
    code = "import json; from django.conf import settings; " + (
        f"print(json.dumps({{n: getattr(settings, n) for n in {names}}}))"
    )
    done = run_manage(env, "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_check_deploy_is_clean_with_production_settings():
    done = run_manage(production(), "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_fails_on_a_weak_setting():
    # The check above is not vacuous: turning a default off is reported.
    done = run_manage(production(SECURE_HSTS_SECONDS="0"), "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode != 0 and "security.W004" in done.stderr + done.stdout


def test_debug_off_without_secret_key_refuses_to_start():
    env = production()
    del env["SECRET_KEY"]
    done = run_manage(env, "check")
    assert done.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in done.stderr


def test_production_defaults_are_https_only():
    assert effective(production()) == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": YEAR,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "SESSION_COOKIE_AGE": 400 * 24 * 3600,
    }


def test_each_default_is_overridable_from_the_environment():
    env = production(
        SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="0",
        SECURE_HSTS_SECONDS="60",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="0",
        SECURE_HSTS_PRELOAD="1",
        BEHIND_PROXY="1",
        SESSION_COOKIE_DAYS="30",
    )
    assert effective(env) == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 60,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_AGE": 30 * 24 * 3600,
    }


def test_development_stays_plain_http():
    settings = effective(production(DEBUG="1"))
    assert not settings["SECURE_SSL_REDIRECT"] and not settings["SESSION_COOKIE_SECURE"]
    assert settings["SECURE_HSTS_SECONDS"] == 0


def test_session_cookie_lives_at_most_400_days():
    # Browsers cap cookies at 400 days; a longer session would outlive its cookie.
    assert effective(production(SESSION_COOKIE_DAYS="1000"))["SESSION_COOKIE_AGE"] == 400 * 24 * 3600


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(url: str, **headers: str):
    """GET without following redirects; return the response (or the HTTP error)."""
    opener = urllib.request.build_opener(NoRedirect)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=10)
    except urllib.error.HTTPError as error:
        return error


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
def test_a_production_server_behind_a_tls_proxy(server_env, collected_static, tmp_path):
    env = production(ALLOWED_HOSTS="127.0.0.1", BEHIND_PROXY="1")
    env = {
        **{n: v for n, v in server_env.items() if n not in CONTROLLED},
        **{n: env[n] for n in CONTROLLED if n in env},
    }
    env["STATIC_ROOT"] = str(collected_static)  # the page links to hashed names: collectstatic's
    # Server() waits for /healthz over plain HTTP: health checks are not redirected.
    server = Server(env, tmp_path / "production.log", args=["--proxy-headers"])
    try:
        plain = fetch(server.url())
        assert plain.status == 301 and plain.headers["Location"] == f"https://127.0.0.1:{server.port}/chat/lobby/"
        page = fetch(server.url(), **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
        assert page.status == 200
        assert page.headers["Strict-Transport-Security"] == f"max-age={YEAR}; includeSubDomains"
        cookie = SimpleCookie(page.headers["Set-Cookie"])["sessionid"]
        assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
    finally:
        server.stop()
