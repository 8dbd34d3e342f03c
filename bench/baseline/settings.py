"""Settings of the baseline: the Channels tutorial's chat, nothing more.

No database, no sessions, no presence: a room group and a consumer that
relays ``{"message": ...}`` to it. ``REDIS_URL`` picks the same Redis channel
layer as the project (``REDIS_CHANNEL_LAYER``: core or pubsub); unset, the
in-memory layer.
"""

import os

SECRET_KEY = "baseline-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
ASGI_APPLICATION = "bench.baseline.asgi.application"
USE_TZ = True

_redis = os.environ.get("REDIS_URL")
_backend = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}[os.environ.get("REDIS_CHANNEL_LAYER", "core")]
CHANNEL_LAYERS = {
    "default": (
        {"BACKEND": _backend, "CONFIG": {"hosts": [_redis], "prefix": "baseline"}}
        if _redis
        else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    )
}
