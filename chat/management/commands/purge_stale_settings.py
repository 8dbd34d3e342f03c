"""Delete visitor settings that have not been read for a number of days."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import services


class Command(BaseCommand):
    help = "Delete visitor settings not read for --days days (default: CHAT_STALE_SETTINGS_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=settings.CHAT_STALE_SETTINGS_DAYS,
            help="Settings unread for this many days are stale (default: %(default)s).",
        )

    def handle(self, *args: Any, days: int, **options: Any) -> None:
        if days < 1:
            raise CommandError("--days must be at least 1.")
        deleted = services.purge_stale_settings(days=days)
        self.stdout.write(f"Deleted {deleted} stale settings row(s) (unread for {days}+ days).")
