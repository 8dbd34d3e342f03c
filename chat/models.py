"""What the chat stores: per-browser settings, rooms and messages."""

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from chat import validators
from chat.identity import author_id_for


class VisitorSettings(models.Model):
    """The settings of one browser, keyed by the ``session_id`` in its session.

    A visitor who never picked a name has no row: the guest name is derived.
    """

    session_id = models.UUIDField(unique=True)
    # The public id of the browser (``identity.author_id_for(session_id)``), kept so staff can search by it.
    # Unique as session_id is, but not declared so: a second unique index would
    # make concurrent upserts of one browser (``rename_visitor``) fail on it
    # instead of meeting in ON CONFLICT (session_id).
    author_id = models.CharField(max_length=32, db_index=True)
    username = models.CharField(max_length=validators.USERNAME_MAX_LENGTH)
    read_at = models.DateTimeField(
        default=timezone.now, db_index=True, help_text="Last time these settings were resolved."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name = "visitor settings"
        verbose_name_plural = "visitor settings"

    def __str__(self) -> str:
        return f"{self.username} ({self.session_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.author_id = author_id_for(self.session_id)  # derived, never chosen
        super().save(*args, **kwargs)


class Room(models.Model):
    """A chat room. Its row also serializes the inserts of its messages."""

    name = models.CharField(primary_key=True, max_length=50, validators=[validators.check_room])
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return self.name


class MessageQuerySet(models.QuerySet):
    def shown(self) -> "MessageQuerySet":
        """The messages the chat shows anywhere: all but those staff deleted (``chat.moderation``)."""
        return self.filter(deleted_at=None)


class Message(models.Model):
    """One chat message, with the author's name as it was when sent."""

    objects = MessageQuerySet.as_manager()

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages", db_column="room")
    author_id = models.CharField(max_length=32, db_index=True)
    username = models.CharField(max_length=validators.USERNAME_MAX_LENGTH)
    verified = models.BooleanField(default=False)
    text = models.TextField(max_length=validators.TEXT_MAX_LENGTH)
    client_id = models.CharField(max_length=validators.CLIENT_ID_MAX_LENGTH, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set when staff delete the message (``chat.moderation``): it is shown nowhere
    # any more, but its row and id stay, so ids stay gapless for ``resume``
    # and a resent ``client_id`` cannot store it again.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            # A client re-sending a message it had no acknowledgement for
            # must not store it twice.
            models.UniqueConstraint(
                fields=["author_id", "client_id"],
                condition=Q(client_id__isnull=False),
                name="chat_message_unique_client_id",
            )
        ]
        indexes = [
            models.Index(fields=["room", "id"], name="chat_message_room_id"),
            # The deleted messages of a room, for a `resume` answer's `deleted`.
            models.Index(
                fields=["room", "id"], condition=Q(deleted_at__isnull=False), name="chat_message_room_deleted"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.username}: {self.text[:40]}"


class Block(models.Model):
    """A browser staff have blocked (by its public ``author_id``): it cannot open sockets."""

    author_id = models.CharField(max_length=32, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "blocked browser"

    def __str__(self) -> str:
        return f"blocked {self.author_id}"
