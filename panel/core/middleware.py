"""The panel's own middleware: security headers on every response, and the login throttle
(``panel/core/login_throttle.py``). The 503 for database outages is in ``outage.py``."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve

from panel.core import login_throttle

# Every script is a file under static/ (no inline script), so the policy can forbid inline
# scripts. Inline styles stay allowed: xterm.js and uPlot set element styles.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
# drf-spectacular's Swagger page starts Swagger UI from an inline script.
POLICY_BY_PREFIX = {
    "/api/v1/docs/": CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'"),
}
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()"
DYNAMIC_TYPES = ("text/html", "application/json", "application/problem+json")


class SecurityHeadersMiddleware:
    """Headers Django's SecurityMiddleware does not set: Content-Security-Policy,
    Permissions-Policy, and ``Cache-Control: no-store`` on dynamic pages (a shared computer's
    back button must not show an API token or a console)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            policy = next((p for prefix, p in POLICY_BY_PREFIX.items() if request.path.startswith(prefix)),
                          CONTENT_SECURITY_POLICY)
            response["Content-Security-Policy"] = policy
        response.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        if response.get("Content-Type", "").startswith(DYNAMIC_TYPES):
            response.setdefault("Cache-Control", "no-store")
        return response


class LoginThrottleMiddleware:
    """Refuses a sign-in POST (the panel's or the admin's) with 429 and a clear message while
    its address is throttled. Place it after the session, auth and message middleware."""

    MESSAGE = ("Too many failed sign-in attempts. Wait {minutes} minutes and try again, or reset "
               "your password.")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            view = self._login_view(request)
            if view is not None:
                username = request.POST.get("username", "")
                wait = login_throttle.refused_for(request, username)
                if wait:
                    return self._refuse(request, view, username, wait)
        return self.get_response(request)

    @staticmethod
    def _login_view(request: HttpRequest) -> str | None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return None
        if match.view_name in ("login", "admin:login"):
            return match.view_name
        return None

    def _refuse(self, request: HttpRequest, view: str, username: str, wait: int) -> HttpResponse:
        messages.error(request, self.MESSAGE.format(minutes=max(1, round(wait / 60))))
        form = AuthenticationForm(request, initial={"username": username})
        if view == "admin:login":
            context = {**admin.site.each_context(request), "title": "Log in", "form": form,
                       "app_path": request.get_full_path(), "username": username}
            response = render(request, "admin/login.html", context, status=429)
        else:
            context = {"form": form, "next": request.POST.get("next", "")}
            response = render(request, "registration/login.html", context, status=429)
        response["Retry-After"] = str(wait)
        return response
