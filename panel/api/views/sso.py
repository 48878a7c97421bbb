"""The page a single sign-on link opens: logs the customer in once, then shows the instance."""

from django.contrib.auth import get_user_model, login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from panel.api.services.sso import redeem_sso_token

GONE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Link expired</title></head>
<body><h1>This sign-in link has expired or was already used</h1>
<p>Sign-in links work once and only for a few minutes. Go back to your billing account and
open the panel from there again.</p></body></html>"""


@never_cache
@require_GET
def sso_login(request: HttpRequest, token: str) -> HttpResponse:
    claims = redeem_sso_token(token=token)
    user = None
    if claims is not None:
        user = get_user_model().objects.filter(pk=claims.user_id, is_active=True).first()
    if user is None:
        return HttpResponse(GONE_PAGE, status=410)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect("instance-detail", pk=claims.instance_id)
