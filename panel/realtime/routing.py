"""WebSocket URL routes."""

from django.urls import path

from panel.realtime import consumers, vnc

websocket_urlpatterns = [
    path("ws/events/", consumers.EventsConsumer.as_asgi()),
    path("ws/instances/<int:instance_id>/console/", consumers.ConsoleConsumer.as_asgi()),
    path("ws/instances/<int:instance_id>/vnc/", vnc.VncConsumer.as_asgi()),
]
