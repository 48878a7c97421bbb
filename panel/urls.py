"""Top-level URLs: the panel's pages, the Django admin (raw data) and the API."""

from django.contrib import admin
from django.urls import include, path

from panel.api.views.sso import sso_login

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("panel.api.urls")),
    path("sso/<str:token>/", sso_login, name="sso-login"),
    path("", include("panel.web.urls")),
]
