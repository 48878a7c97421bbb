"""While the database is unreachable: a clear 503 with ``Retry-After`` instead of a 500 and a
stack trace — an HTML page for people, problem+json under ``/api/``.

Three ways an outage reaches a response, each handled here:
- a view raises (most requests): ``DatabaseOutageMiddleware.process_exception``;
- an API view raises: DRF catches it first, so the API's exception handler is wrapped
  (``api_exception_handler``, set as DRF's ``EXCEPTION_HANDLER``);
- a middleware raises (the session saved after the view): Django has already turned it into a
  500 before any outer middleware sees it, so ``got_request_exception`` marks the request and
  the middleware swaps that 500 for the 503.
Nothing is half-written: a request's writes are one transaction, and the host tasks go out
only after it commits (``dispatch_operation``).
"""

from __future__ import annotations

import logging
import sys

from django.core.signals import got_request_exception
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from panel.api.exceptions import (
    PROBLEM_CONTENT_TYPE,
    Problem,
    problem_exception_handler,
    problem_response,
)
from panel.core.retry import DATABASE_ERRORS

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
DETAIL = "The panel's database is unreachable right now. Nothing was changed; try again shortly."
_MARK = "_berth_database_outage"


def is_database_outage(exc: BaseException | None) -> bool:
    return isinstance(exc, DATABASE_ERRORS)


def _problem() -> Problem:
    return Problem(503, "database-unavailable", DETAIL, title="Temporarily unavailable",
                   headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def unavailable_response(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        problem = _problem()
        response: HttpResponse = JsonResponse(problem.body(), status=503,
                                              content_type=PROBLEM_CONTENT_TYPE)
    else:
        # Rendered without the request: context processors would ask the database for the user.
        response = HttpResponse(render_to_string("core/unavailable.html", {"detail": DETAIL,
                                                 "retry_after": RETRY_AFTER_SECONDS}), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


def api_exception_handler(exc: Exception, context: dict):
    """DRF's EXCEPTION_HANDLER: the API's own (problem+json), with outages as 503."""
    if is_database_outage(exc):
        from rest_framework.views import set_rollback  # noqa: PLC0415

        logger.warning("database unavailable during %s: %s", context.get("view").__class__.__name__, exc)
        set_rollback()
        return problem_response(_problem())
    return problem_exception_handler(exc, context)


@receiver(got_request_exception)
def _mark_outage(sender, request: HttpRequest | None = None, **kwargs) -> None:
    if request is not None and is_database_outage(sys.exc_info()[1]):
        setattr(request, _MARK, True)


class DatabaseOutageMiddleware:
    """Place it near the top of MIDDLEWARE, so it sees the final response of the ones below."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code == 500 and getattr(request, _MARK, False):
            return unavailable_response(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_outage(exception):
            return None
        logger.warning("database unavailable: %s %s: %s", request.method, request.path, exception)
        return unavailable_response(request)
