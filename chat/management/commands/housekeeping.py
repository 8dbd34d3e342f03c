"""The daily upkeep: purge stale visitor settings, then delete expired sessions.

``python manage.py housekeeping`` runs it once (cron, a systemd timer, a
Kubernetes CronJob); ``--every 86400`` runs it now and then every day, for a
container of its own (docker-compose.yml's ``housekeeping`` service).

Expired sessions are those of browsers gone for ``SESSION_COOKIE_AGE``, and
those of page views alone (crawlers, cookieless clients), which live a day
(chat.sessions): Django's ``clearsessions`` deletes both in one statement.
"""

import logging
import signal
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

logger = logging.getLogger("chat.housekeeping")

# After a failed run (the database down), the next try comes this much sooner than --every.
RETRY_SECONDS = 300


class Command(BaseCommand):
    help = "Purge stale visitor settings, then expired sessions (clearsessions); --every SECONDS repeats it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--every",
            type=int,
            default=0,
            metavar="SECONDS",
            help="Run now, then again every SECONDS (86400: daily) until stopped; 0 (default): once.",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=settings.CHAT_STALE_SETTINGS_DAYS,
            help="Settings unread for this many days are stale (default: %(default)s).",
        )

    def handle(self, *args: Any, every: int, days: int, **options: Any) -> None:
        if days < 1:
            raise CommandError("--days must be at least 1.")
        if every < 0:
            raise CommandError("--every must be 0 (once) or a number of seconds.")
        if not every:
            self.run_once(days)
            return
        # In a container this is PID 1, which the kernel gives no default
        # SIGTERM handler: without this, `docker stop` waits 10 s and kills.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            try:
                self.run_once(days)
                wait = every
            except Exception:  # the database away: say so, try again sooner, keep the service up
                logger.exception("housekeeping failed; next try in %d s", min(every, RETRY_SECONDS))
                wait = min(every, RETRY_SECONDS)
            finally:
                connections.close_all()  # no connection held idle for a day
            time.sleep(wait)

    def run_once(self, days: int) -> None:
        call_command("purge_stale_settings", days=days, stdout=self.stdout)
        before = Session.objects.count()
        call_command("clearsessions")
        after = Session.objects.count()
        self.stdout.write(f"Deleted {before - after} expired session(s); {after} left.")
        self.stdout.flush()  # a log line per run, even when stdout is a pipe
