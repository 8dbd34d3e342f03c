"""Staff views of the stored settings, messages and blocks, through the chat's own services (and ``moderation``)."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest

from chat import moderation, services, validators
from chat.identity import author_id_for, guest_name_for
from chat.models import Block, Message, VisitorSettings

# How the admin's moderation shows in the history (``LogEntry``), beside the command's.
VIA = "admin"


class VisitorSettingsForm(forms.ModelForm):
    class Meta:
        model = VisitorSettings
        fields = ["session_id", "username"]

    def clean_username(self) -> str:
        try:
            return validators.check_username(self.cleaned_data["username"])
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc


class StaleFilter(admin.SimpleListFilter):
    title = "staleness"
    parameter_name = "stale"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", f"Stale (unread {settings.CHAT_STALE_SETTINGS_DAYS}+ days)"), ("no", "Active")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        cutoff = services.stale_cutoff()
        if self.value() == "yes":
            return queryset.filter(read_at__lt=cutoff)
        if self.value() == "no":
            return queryset.filter(read_at__gte=cutoff)
        return queryset


class ModerationAdmin(admin.ModelAdmin):
    """What the settings and message lists share: blocking, and reporting what moderation did.

    The moderation services record every action in the admin's history
    themselves (the command's too), so the admin's own deletion entries
    are not written twice.
    """

    def has_block_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(["chat.add_block", "chat.delete_block"])

    def log_deletions(self, request: HttpRequest, queryset: object) -> None:
        pass  # chat.moderation records it

    def block_authors(self, request: HttpRequest, author_ids: list[str]) -> None:
        blocked = moderation.block(author_ids=author_ids, by=request.user, via=VIA)
        self.message_user(
            request,
            f"Blocked {len(blocked)} browser(s); {len(set(author_ids)) - len(blocked)} already were. "
            "Their open tabs are closed.",
            messages.SUCCESS,
        )

    def report_deleted(self, request: HttpRequest, *results: moderation.Deleted) -> None:
        count = sum(len(ids) for deleted in results for ids in deleted.values())
        rooms = ", ".join(sorted({room for deleted in results for room in deleted})) or "none"
        self.message_user(request, f"Deleted {count} message(s) (rooms: {rooms}).", messages.SUCCESS)


class BlockedFilter(admin.SimpleListFilter):
    title = "blocked"
    parameter_name = "blocked"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Blocked"), ("no", "Not blocked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(is_blocked=self.value() == "yes")
        return queryset


@admin.register(VisitorSettings)
class VisitorSettingsAdmin(ModerationAdmin):
    form = VisitorSettingsForm
    list_display = ["username", "author_id", "blocked", "read_at", "updated_at", "created_at"]
    search_fields = ["username", "=author_id", "=session_id"]
    list_filter = [StaleFilter, BlockedFilter]
    readonly_fields = ["author_id", "read_at", "created_at", "updated_at"]
    actions = ["block", "unblock", "delete_everything_written", "purge_stale"]
    ordering = ["-updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(is_blocked=Exists(Block.objects.filter(author_id=OuterRef("author_id"))))
        )

    def get_readonly_fields(self, request: HttpRequest, obj: VisitorSettings | None = None) -> list[str]:
        # A row belongs to one browser: its session_id is fixed once created.
        return self.readonly_fields + (["session_id"] if obj else [])

    @admin.display(description="blocked", boolean=True, ordering="is_blocked")
    def blocked(self, obj: VisitorSettings) -> bool:
        return bool(getattr(obj, "is_blocked", False))

    def save_model(self, request: HttpRequest, obj: VisitorSettings, form: forms.ModelForm, change: bool) -> None:
        previous = form.initial.get("username") or guest_name_for(author_id_for(obj.session_id))
        services.rename_visitor(session_id=obj.session_id, username=obj.username, previous=previous)
        # The service upserts its own row, not ``obj``: on an add, take the new
        # row's primary key (the admin's redirect and history need it), then
        # load what was saved (the normalized name, the times).
        if not change:
            obj.pk = VisitorSettings.objects.values_list("pk", flat=True).get(session_id=obj.session_id)
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: VisitorSettings) -> None:
        services.delete_visitor_settings(session_ids=[obj.session_id])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.delete_visitor_settings(session_ids=list(queryset.values_list("session_id", flat=True)))

    def log_deletions(self, request: HttpRequest, queryset: object) -> None:
        admin.ModelAdmin.log_deletions(self, request, queryset)  # a settings row is deleted for real

    @admin.action(description="Block the selected browsers (their tabs close; no new ones)", permissions=["block"])
    def block(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.block_authors(request, list(queryset.values_list("author_id", flat=True)))

    @admin.action(description="Unblock the selected browsers", permissions=["block"])
    def unblock(self, request: HttpRequest, queryset: QuerySet) -> None:
        unblocked = moderation.unblock(
            author_ids=queryset.values_list("author_id", flat=True), by=request.user, via=VIA
        )
        self.message_user(request, f"Unblocked {len(unblocked)} browser(s).", messages.SUCCESS)

    @admin.action(description="Delete everything the selected browsers wrote (in every room)", permissions=["delete"])
    def delete_everything_written(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.report_deleted(
            request,
            *(
                moderation.delete_written_by(author_id=author_id, room=None, by=request.user, via=VIA)
                for author_id in queryset.values_list("author_id", flat=True)
            ),
        )

    @admin.action(description="Purge all stale settings (not read for the configured days)")
    def purge_stale(self, request: HttpRequest, queryset: QuerySet) -> None:
        deleted = services.purge_stale_settings()
        self.message_user(request, f"Purged {deleted} stale settings row(s).", messages.SUCCESS)


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted by staff"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Deleted"), ("no", "Shown")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


@admin.register(Message)
class MessageAdmin(ModerationAdmin):
    list_display = ["id", "room", "username", "author_id", "verified", "short_text", "created_at", "deleted"]
    list_filter = [DeletedFilter, "verified", "created_at"]
    search_fields = ["text", "=room__name", "username", "=author_id"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    readonly_fields = [
        "room",
        "author_id",
        "username",
        "verified",
        "text",
        "client_id",
        "created_at",
        "deleted_at",
        "deleted_by",
    ]
    list_select_related = ["room"]
    actions = ["delete_selected", "delete_everything_written", "block_writers"]

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    @admin.display(description="deleted", boolean=True, ordering="deleted_at")
    def deleted(self, obj: Message) -> bool:
        return obj.deleted_at is not None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are written in the chat, not here

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        moderation.delete_messages(ids=[obj.pk], by=request.user, via=VIA)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.report_deleted(
            request, moderation.delete_messages(ids=queryset.values_list("id", flat=True), by=request.user, via=VIA)
        )

    @admin.action(
        description="Delete everything the selected messages' authors wrote in those rooms", permissions=["delete"]
    )
    def delete_everything_written(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.report_deleted(
            request,
            *(
                moderation.delete_written_by(author_id=author_id, room=room, by=request.user, via=VIA)
                for author_id, room in set(queryset.values_list("author_id", "room_id"))
            ),
        )

    @admin.action(description="Block the selected messages' authors", permissions=["block"])
    def block_writers(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.block_authors(request, list(set(queryset.values_list("author_id", flat=True))))


@admin.register(Block)
class BlockAdmin(ModerationAdmin):
    """The blocked browsers; deleting one unblocks it (``moderation.unblock``)."""

    list_display = ["author_id", "created_at", "created_by"]
    search_fields = ["=author_id"]
    ordering = ["-created_at"]
    readonly_fields = ["author_id", "created_at", "created_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # blocked from the settings or message list, or `manage.py moderate block`

    def has_change_permission(self, request: HttpRequest, obj: Block | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Block) -> None:
        moderation.unblock(author_ids=[obj.author_id], by=request.user, via=VIA)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        moderation.unblock(author_ids=queryset.values_list("author_id", flat=True), by=request.user, via=VIA)
