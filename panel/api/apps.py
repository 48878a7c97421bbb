from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "panel.api"
    label = "api"
    verbose_name = "Billing API"

    def ready(self) -> None:
        # Registers the OpenAPI description of the bearer-token authentication.
        from panel.api import schema  # noqa: F401
