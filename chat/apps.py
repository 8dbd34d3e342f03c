from django.apps import AppConfig
from django.http import HttpRequest


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out

        from chat import services
        from chat.sessions import keep

        def keep_signed_in_session(sender: object, request: HttpRequest | None, **kwargs: object) -> None:
            # Staff who sign in without ever opening a socket keep their session.
            if request is not None and hasattr(request, "session"):
                keep(request.session)

        user_logged_in.connect(keep_signed_in_session, dispatch_uid="chat.keep_signed_in_session")

        def close_verified_sockets(sender: object, request: HttpRequest | None, **kwargs: object) -> None:
            # Nothing from this browser may stay verified (PROTOCOL.md §2).
            if request is not None and hasattr(request, "session"):
                services.sign_out_visitor(session=request.session)

        user_logged_out.connect(close_verified_sockets, dispatch_uid="chat.close_verified_sockets")
