"""Moderate from the command line (contract §5): delete messages, block and unblock browsers.

    manage.py moderate delete ID…
    manage.py moderate delete-by AUTHOR_ID --room ROOM
    manage.py moderate block AUTHOR_ID…
    manage.py moderate unblock AUTHOR_ID…

Each acts through ``chat.moderation``, as the admin does, and is recorded in
the admin's history as ``--as USER`` (default: the ``moderate`` system user,
made on first use; it cannot sign in). An id the chat does not know fails
the whole command (exit 1, naming it) before anything changes.

With ``REDIS_URL`` set, open tabs on every server process see the effect at
once. On the embedded default (no Redis) this process cannot reach the
server's: its tabs see it when they next connect.
"""

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chat import moderation, selectors, validators
from chat.models import Message

# The user the history names for a command run without --as.
SYSTEM_USERNAME = "moderate"
VIA = "manage.py moderate"


class Command(BaseCommand):
    help = "Delete messages, or block or unblock browsers, in every open tab (contract §5)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        delete = actions.add_parser("delete", help="Delete messages by id.")
        delete.add_argument("ids", nargs="+", type=int, metavar="ID")
        delete_by = actions.add_parser("delete-by", help="Delete everything one browser wrote in a room.")
        delete_by.add_argument("author_id", metavar="AUTHOR_ID")
        delete_by.add_argument("--room", required=True)
        for name, text in (("block", "Block browsers: their sockets close with 4403."), ("unblock", "Unblock them.")):
            actions.add_parser(name, help=text).add_argument("author_ids", nargs="+", metavar="AUTHOR_ID")
        for action in actions.choices.values():
            action.add_argument("--as", dest="as_user", metavar="USER", help="Record the action as this user.")

    def handle(self, *args: Any, action: str, as_user: str | None, **options: Any) -> None:
        by = _moderator(as_user)
        if action == "delete":
            ids = options["ids"]
            _all_known(ids, set(Message.objects.filter(id__in=ids).values_list("id", flat=True)), "message")
            deleted = moderation.delete_messages(ids=ids, by=by, via=VIA)
            self._report_deleted(deleted, asked=len(set(ids)))
        elif action == "delete-by":
            author_id, room = options["author_id"], options["room"]
            try:
                validators.check_room(room)
            except ValidationError as exc:
                raise CommandError(f"Not a room name: {room!r}.") from exc
            _all_known([author_id], selectors.known_authors([author_id]), "author id")
            self._report_deleted(moderation.delete_written_by(author_id=author_id, room=room, by=by, via=VIA))
        else:
            author_ids = options["author_ids"]
            _all_known(author_ids, selectors.known_authors(author_ids), "author id")
            if action == "block":
                done = moderation.block(author_ids=author_ids, by=by, via=VIA)
                self.stdout.write(f"Blocked {len(done)} browser(s): {' '.join(done) or '-'}.")
                already = sorted(set(author_ids) - set(done))
                if already:
                    self.stdout.write(f"Already blocked: {' '.join(already)}.")
            else:
                done = moderation.unblock(author_ids=author_ids, by=by, via=VIA)
                self.stdout.write(f"Unblocked {len(done)} browser(s): {' '.join(done) or '-'}.")
        if not settings.REDIS_URL:
            self.stdout.write("No REDIS_URL: open tabs see this when they next connect (or reload).")

    def _report_deleted(self, deleted: moderation.Deleted, *, asked: int | None = None) -> None:
        count = sum(len(ids) for ids in deleted.values())
        self.stdout.write(f"Deleted {count} message(s).")
        for room, ids in sorted(deleted.items()):
            self.stdout.write(f"  room {room}: {' '.join(map(str, ids))}")
        if asked is not None and asked > count:
            self.stdout.write(f"{asked - count} were deleted already.")


def _all_known(asked: Iterable[object], known: set[Any], what: str) -> None:
    unknown = [str(value) for value in dict.fromkeys(asked) if value not in known]
    if unknown:
        raise CommandError(f"Unknown {what}(s): {' '.join(unknown)}. Nothing was changed.")


def _moderator(username: str | None) -> AbstractBaseUser:
    users = get_user_model()
    if username is not None:
        try:
            return users.objects.get(**{users.USERNAME_FIELD: username})
        except users.DoesNotExist:
            raise CommandError(f"No user {username!r} (--as).") from None
    user, created = users.objects.get_or_create(
        **{users.USERNAME_FIELD: SYSTEM_USERNAME}, defaults={"is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
