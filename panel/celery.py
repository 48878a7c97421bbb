"""The panel's Celery app: consumes the `panel` queue (operation results, host reports) and
runs beat. Host workers use their own app (workers.hostworker) without Django."""

import os
import warnings

from celery import Celery
from celery.exceptions import SecurityWarning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

if os.environ.get("BERTH_QUIET_ROOT_WARNING"):
    # `make run` runs the whole local stack as root; production runs this worker as its own user.
    warnings.filterwarnings("ignore", category=SecurityWarning)

app = Celery("panel")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
