"""Staff views of the stored settings and messages, through the chat's own services."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from chat import services, validators
from chat.identity import author_id_for, guest_name_for
from chat.models import Message, VisitorSettings


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


@admin.register(VisitorSettings)
class VisitorSettingsAdmin(admin.ModelAdmin):
    form = VisitorSettingsForm
    list_display = ["username", "session_id", "author_id", "read_at", "updated_at", "created_at"]
    search_fields = ["username", "session_id"]
    list_filter = [StaleFilter]
    readonly_fields = ["author_id", "read_at", "created_at", "updated_at"]
    actions = ["purge_stale"]
    ordering = ["-updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: VisitorSettings | None = None) -> list[str]:
        # A row belongs to one browser: its session_id is fixed once created.
        return self.readonly_fields + (["session_id"] if obj else [])

    @admin.display(description="author id")
    def author_id(self, obj: VisitorSettings) -> str:
        return author_id_for(obj.session_id)

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

    @admin.action(description="Purge all stale settings (not read for the configured days)")
    def purge_stale(self, request: HttpRequest, queryset: QuerySet) -> None:
        deleted = services.purge_stale_settings()
        self.message_user(request, f"Purged {deleted} stale settings row(s).", messages.SUCCESS)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "username", "verified", "short_text", "created_at"]
    list_filter = ["verified", "created_at"]
    search_fields = ["text", "=room__name", "username"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    readonly_fields = ["room", "author_id", "username", "verified", "text", "client_id", "created_at"]
    list_select_related = ["room"]

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are written in the chat, not here

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        services.delete_messages(ids=[obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.delete_messages(ids=list(queryset.values_list("id", flat=True)))
