"""Top-level URLs: the panel's pages, the staff pages, the Django admin (raw data), the API
and the Prometheus metrics."""

from django.contrib import admin
from django.urls import include, path

from panel.api.views.sso import sso_login
from panel.staff.views import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("panel.api.urls")),
    path("sso/<str:token>/", sso_login, name="sso-login"),
    path("staff/", include("panel.staff.urls")),
    path("metrics", metrics.panel_metrics, name="metrics"),
    path("metrics/hosts/<slug:name>", metrics.host_metrics, name="metrics-host"),
    path("", include("panel.backups.urls")),  # before panel.web's instances/<pk>/<action>/
    path("", include("panel.web.urls")),
]
