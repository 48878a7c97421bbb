"""WebSocket URL routes."""

from django.urls import path

from panel.realtime import consumers

websocket_urlpatterns = [
    path("ws/events/", consumers.EventsConsumer.as_asgi()),
    path("ws/instances/<int:instance_id>/console/", consumers.ConsoleConsumer.as_asgi()),
]
