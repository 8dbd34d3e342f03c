"""Static files: WhiteNoise, in Django's middleware, with a one-year lifetime for hashed names.

WhiteNoise's Django middleware (its documented way with Django), right
after ``SecurityMiddleware``; HTTP runs through Django's WSGI handler in a
pool thread (``chatsite/http.py``), where it is at home. It replaces the
Django static files handler that ``chatsite/asgi.py`` used to wrap the app in.
It serves ``STATIC_ROOT`` (what ``collectstatic`` wrote) and, with DEBUG on,
the apps' ``static/`` folders directly, so ``make run`` needs no collect step.

A content-hashed name (``chat.3f1e…c2.js``) never changes content, so it is
sent with ``Cache-Control: max-age=31536000, public, immutable``; a deploy that
changes ``chat.js`` changes its name, and the page, which is never cached,
links to the new one. Other names get WhiteNoise's 60 s (0 with DEBUG on).
"""

from pathlib import Path

from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's middleware, caching hashed names for a year instead of its ten."""

    FOREVER = 365 * 24 * 60 * 60

    def add_files(self, root: str | Path, prefix: str | None = None) -> None:
        # With DEBUG on the apps' folders are served and STATIC_ROOT need not
        # exist: no warning about it at every start of `make run`.
        if self.use_finders and not Path(root).is_dir():
            return
        super().add_files(root, prefix)
