from django.urls import re_path

from chat.consumers import ChatConsumer
from chat.validators import ROOM_PATTERN

websocket_urlpatterns = [
    re_path(rf"^ws/chat/(?P<room>{ROOM_PATTERN})/$", ChatConsumer.as_asgi()),
]
