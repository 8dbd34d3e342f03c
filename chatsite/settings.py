"""Settings for the chat site, read from the environment.

Every value has a development default that needs no services: a SQLite file
and an in-process channel layer. Production sets ``DEBUG=0``, ``SECRET_KEY``,
``ALLOWED_HOSTS``, ``DATABASE_URL`` and ``REDIS_URL`` (see README.md).
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key"  # noqa: S105 - DEBUG only

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "chat",
]

MIDDLEWARE = [
    # /healthz, answered before anything reads the Host header or the session
    # (probes come by IP): chat/health.py.
    "chat.health.HealthCheckMiddleware",
    # /metrics, for the same reasons, to the operator's scraper only
    # (chat/metrics_endpoint.py).
    "chat.metrics_endpoint.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files, answered before the session is touched (WhiteNoise's
    # place: right after SecurityMiddleware).
    "chat.static.StaticFilesMiddleware",
    "chat.middleware.SecureSessionCookieMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "chat.middleware.SessionIdMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a refused admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
# DATABASE_URL unset: a SQLite file next to manage.py.
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so two writers wait for each
    # other instead of failing with "database is locked" half-way through.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL;",
    }
else:
    # A connection pool per process (psycopg_pool): each page view runs in a
    # thread of its own, and a burst of them waits for a pooled connection
    # instead of opening one each past PostgreSQL's max_connections.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {"min_size": 1, "max_size": env.int("DATABASE_POOL_SIZE", default=10), "timeout": 10},
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer, presence and rate limits ----------------------------------
# REDIS_URL unset: everything stays inside one process.
REDIS_URL = env.str("REDIS_URL", default="")
# The core layer (lists per channel, groups as sorted sets) or the pub/sub one;
# docs/performance.md has the figures behind the default.
REDIS_CHANNEL_LAYER = env.str("REDIS_CHANNEL_LAYER", default="pubsub")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": {
                "core": "channels_redis.core.RedisChannelLayer",
                "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
            }[REDIS_CHANNEL_LAYER],
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": env.str("CHANNEL_LAYER_PREFIX", default="asgi"),
                "capacity": env.int("CHANNEL_LAYER_CAPACITY", default=1000),
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": env.int("CHANNEL_LAYER_CAPACITY", default=1000)},
        }
    }

# --- Sessions: one long-lived cookie per browser ------------------------------
SESSION_ENGINE = "chat.sessions"  # database sessions (chat/sessions.py)
# Browsers keep a cookie at most 400 days; a longer server-side session would
# only outlive the cookie that points to it.
SESSION_COOKIE_AGE = min(env.int("SESSION_COOKIE_DAYS", default=400), 400) * 24 * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"

# --- HTTPS -----------------------------------------------------------------------
# Production (DEBUG=0) is HTTPS-only by default; each setting can be turned
# off from the environment (docker-compose.yml does, for a plain-HTTP try-out).
# Secure is also added per response when a request came over HTTPS
# (chat.middleware.SecureSessionCookieMiddleware), so development over HTTPS
# gets it too; these force it everywhere.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Health checks probe the process over plain HTTP from inside its network
# (the compose healthcheck, orchestrators): /healthz is answered before the
# redirect (chat.health.HealthCheckMiddleware, first in MIDDLEWARE).
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# TLS ends at a reverse proxy that sets X-Forwarded-Proto (and strips it from
# clients): trust it for request.is_secure() and the websocket origin check.
# Never turn this on without such a proxy: a client could claim HTTPS.
BEHIND_PROXY = env.bool("BEHIND_PROXY", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_PROXY else None
if not SECURE_HSTS_PRELOAD:
    # security.W021 asks for HSTS preload. Preloading commits the domain and
    # every subdomain to HTTPS in browsers' built-in lists, for months after
    # it is withdrawn: the operator's choice (SECURE_HSTS_PRELOAD=1), not a default.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- Admin login: throttled per username and per address (django-axes) ------
# The throttle backend comes first: a username or an address with
# AXES_FAILURE_LIMIT failed logins in a row is refused before ModelBackend
# runs the password hasher, with a 429 page saying so, until
# AXES_COOLOFF_TIME has passed since its last failed attempt (a refused
# attempt counts: guessing on keeps it locked). A successful login clears its
# count. `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`
# unlock at once. Attempts are rows in the database (axes' database handler):
# shared by every server process, with or without Redis. README, "Limits".
AUTHENTICATION_BACKENDS = [
    "chatsite.login_throttle.HttpLoginThrottle",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
AXES_RESET_ON_SUCCESS = True
# The address daphne was given, trusted as forwarded only with BEHIND_PROXY=1.
AXES_CLIENT_IP_CALLABLE = "chat.addresses.client_address"

# --- Chat limits ----------------------------------------------------------------
CHAT_STALE_SETTINGS_DAYS = env.int("CHAT_STALE_SETTINGS_DAYS", default=100)
CHAT_RATE_BURST = env.int("CHAT_RATE_BURST", default=10)
CHAT_RATE_PER_SECOND = env.float("CHAT_RATE_PER_SECOND", default=1.0)
# history and resume, per identity across its tabs and processes.
CHAT_READ_RATE_BURST = env.int("CHAT_READ_RATE_BURST", default=10)
CHAT_READ_RATE_PER_SECOND = env.float("CHAT_READ_RATE_PER_SECOND", default=2.0)
# Frames of any kind, per socket.
CHAT_FRAME_RATE_BURST = env.int("CHAT_FRAME_RATE_BURST", default=30)
CHAT_FRAME_RATE_PER_SECOND = env.float("CHAT_FRAME_RATE_PER_SECOND", default=10.0)
# A socket whose frames keep coming past its frame budget, this many refused
# in a row, is closed with 1008 (docs/protocol.md): a page waits retry_after.
CHAT_FRAME_FLOOD_CLOSE = env.int("CHAT_FRAME_FLOOD_CLOSE", default=100)
# New identities (a page view of a browser without a session) per client
# network: an IPv4 address or an IPv6 /64, loopback exempt (chat/newcomers.py).
# A burst of 0 turns the limit off.
CHAT_NEW_IDENTITY_RATE_BURST = env.int("CHAT_NEW_IDENTITY_RATE_BURST", default=20)
CHAT_NEW_IDENTITY_RATE_PER_SECOND = env.float("CHAT_NEW_IDENTITY_RATE_PER_SECOND", default=1 / 60)
CHAT_PRESENCE_TTL = env.float("CHAT_PRESENCE_TTL", default=60.0)
# Open sockets one identity may hold, across all rooms and server processes.
CHAT_MAX_SOCKETS_PER_IDENTITY = env.int("CHAT_MAX_SOCKETS_PER_IDENTITY", default=20)
# Presence changes within this (times 1 + local sockets / 100, at most 2 s)
# share one presence frame.
CHAT_PRESENCE_SETTLE = env.float("CHAT_PRESENCE_SETTLE", default=0.1)
CHAT_REDIS_PREFIX = env.str("CHAT_REDIS_PREFIX", default="chat")
# Django's cache holds each room's newest messages (chat/newest_page.py), in
# Redis with REDIS_URL, shared by every process. The embedded default caches
# nothing: a management command runs in a process of its own, and a cache in
# the server's memory would not hear of the messages it deletes.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CHAT_REDIS_PREFIX,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
# Bytes the server may hold for a socket whose client does not read (beyond
# the one frame that crossed the limit) before it drops the connection
# (chatsite/server.py); 0: no bound. Why 1 MiB: docs/architecture.md.
CHAT_SEND_BUFFER_LIMIT = env.int("CHAT_SEND_BUFFER_LIMIT", default=1024 * 1024)

# --- Metrics: GET /metrics (chat/metrics.py, chat/metrics_endpoint.py) --------
# With a token, a scrape must send "Authorization: Bearer <token>". METRICS_ALLOW
# lists the networks (CIDRs) that may scrape; by default loopback only without a
# token, any address with one. PROMETHEUS_MULTIPROC_DIR (read by prometheus-client
# itself) sums the processes of one host: README "Metrics".
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOW = env.list("METRICS_ALLOW", default=[])
for _cidr in METRICS_ALLOW:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOW: {exc}") from None

# --- Static files -------------------------------------------------------------
# Served by WhiteNoise inside Django's middleware (chat.static). With DEBUG off
# the pages link to content-hashed names (chat.3f1e…c2.js) that only
# `collectstatic` writes, with a .gz and a .br next to each: the Dockerfile runs
# it at build time, `make run` when DEBUG is off. Hashed names are cached for a
# year; the pages themselves are never cached (chat.views).
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# One handler, on the root logger: daphne's command line has already given the
# root a handler (logging.basicConfig) by the time Django configures logging,
# and configuring the root replaces it, so every record is printed once.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-8s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "chat": {"level": env.str("CHAT_LOG_LEVEL", default="INFO")},
        "daphne": {"level": "INFO"},
    },
}
