from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "panel.core"
    label = "core"

    def ready(self) -> None:
        # Signal receivers: failed and successful logins (throttle), uncaught exceptions (503).
        from panel.core import login_throttle, outage  # noqa: F401, PLC0415
