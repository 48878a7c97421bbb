"""Prometheus endpoints: /metrics (panel and every host) and /metrics/hosts/<name>.

Staff sessions may read them, and so may a scraper with ``Authorization: Bearer
<BERTH_METRICS_TOKEN>``; everyone else gets 401.
"""

import hmac

from django.conf import settings
from django.http import Http404, HttpResponse

from panel.hosts.models import Host
from panel.staff import metrics


def _allowed(request) -> bool:
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        return True
    token = settings.BERTH_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _refused() -> HttpResponse:
    response = HttpResponse("Metrics need a staff login or the metrics token.\n", status=401,
                            content_type="text/plain; charset=utf-8")
    response["WWW-Authenticate"] = 'Bearer realm="berth-metrics"'
    return response


def panel_metrics(request):
    if not _allowed(request):
        return _refused()
    return HttpResponse(metrics.panel_metrics(), content_type=metrics.CONTENT_TYPE)


def host_metrics(request, name: str):
    if not _allowed(request):
        return _refused()
    host = Host.objects.filter(name=name).first()
    if host is None:
        raise Http404("No such host.")
    return HttpResponse(metrics.single_host_metrics(host), content_type=metrics.CONTENT_TYPE)
