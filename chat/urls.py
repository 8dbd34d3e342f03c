from django.urls import path, re_path
from django.views.generic import RedirectView

from chat import views
from chat.validators import ROOM_PATTERN

app_name = "chat"

urlpatterns = [
    path("", RedirectView.as_view(url="/chat/lobby/", permanent=False), name="index"),
    re_path(rf"^chat/(?P<room>{ROOM_PATTERN})/$", views.room, name="room"),
    path("socket-opened", views.socket_opened, name="socket_opened"),
]
