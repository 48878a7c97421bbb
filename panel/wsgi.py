"""WSGI entry point (HTTP only; WebSockets need the ASGI one)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
application = get_wsgi_application()

from panel.core.warmup import prepare_process  # noqa: E402  (needs the apps loaded)

prepare_process()
