"""Every API error as RFC 9457 problem details (``application/problem+json``), in one place:
DRF's own exceptions and the instance services' domain errors alike."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response

from panel.api.services.provisioning import IdempotencyConflict
from panel.instances.services.errors import (
    CapacityError,
    InstanceStateError,
    InvalidOrder,
    OperationInProgress,
    QuotaExceeded,
)

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:berth:problem:"
AUTH_CHALLENGE = 'Bearer realm="berth"'


@dataclass
class Problem:
    status: int
    slug: str
    detail: str
    title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "type": TYPE_PREFIX + self.slug,
            "title": self.title or HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error structure as {"field.sub": ["message", ...]}."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    messages = [str(item) for item in detail] if isinstance(detail, list) else [str(detail)]
    return {prefix or "non_field_errors": messages} if messages else {}


def validation_problem(errors: dict[str, list[str]]) -> Problem:
    return Problem(
        400, "validation-error", "The request has invalid fields; see errors.",
        title="Invalid request", extra={"errors": errors},
    )


def problem_for(exc: Exception) -> Problem | None:
    """The problem an exception stands for; None for a real bug (a 500)."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, exceptions.ValidationError):
        return validation_problem(_flatten(exc.detail))
    if isinstance(exc, InvalidOrder):
        return validation_problem({name: [message] for name, message in exc.errors.items()})
    if isinstance(exc, DjangoValidationError):
        return validation_problem(_flatten(exc.message_dict if hasattr(exc, "error_dict") else exc.messages))
    if isinstance(exc, IdempotencyConflict):
        return Problem(409, "idempotency-conflict", str(exc), title="Conflicting external_id",
                       extra={"service": exc.instance.pk,
                              "errors": {k: [v] for k, v in exc.differences.items()}})
    if isinstance(exc, InstanceStateError):
        return Problem(409, "invalid-state", str(exc), title="Not allowed in this state",
                       extra={"state": exc.instance.state})
    if isinstance(exc, OperationInProgress):
        return Problem(409, "operation-in-progress", str(exc), title="Another operation is running")
    if isinstance(exc, QuotaExceeded):
        return Problem(422, "quota-exceeded", str(exc), title="Quota exceeded")
    if isinstance(exc, CapacityError):
        # The per-host reasons name hosts: for the admin's eyes, not the API's.
        return Problem(422, "no-capacity", str(exc), title="No capacity")
    if isinstance(exc, exceptions.Throttled):
        wait = math.ceil(exc.wait) if exc.wait is not None else 60
        return Problem(429, "rate-limited", f"Too many requests; try again in {wait} s.",
                       headers={"Retry-After": str(wait)})
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        challenge = AUTH_CHALLENGE
        if isinstance(exc, exceptions.AuthenticationFailed):
            challenge += ', error="invalid_token"'
        return Problem(401, "unauthorized", str(exc.detail), headers={"WWW-Authenticate": challenge})
    if isinstance(exc, exceptions.APIException):
        slugs = {400: "malformed-request", 403: "forbidden", 404: "not-found",
                 405: "method-not-allowed", 406: "not-acceptable", 415: "unsupported-media-type"}
        status = exc.status_code
        return Problem(status, slugs.get(status, HTTPStatus(status).phrase.lower().replace(" ", "-")),
                       str(exc.detail))
    return None


def problem_response(problem: Problem) -> Response:
    return Response(problem.body(), status=problem.status, headers=problem.headers,
                    content_type=PROBLEM_CONTENT_TYPE)


def problem_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's EXCEPTION_HANDLER for the API."""
    from rest_framework.views import set_rollback  # noqa: PLC0415 (views imports the auth classes)

    problem = problem_for(exc)
    if problem is None:
        logger.exception("unexpected error in %s", context.get("view").__class__.__name__)
        problem = Problem(500, "server-error", "Something went wrong on our side; it was logged.")
    set_rollback()
    return problem_response(problem)


@csrf_exempt  # token-authenticated API: a POST to a wrong URL is a 404, not a CSRF failure
def not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Any path under /api/v1/ that names nothing (including ids that are not numbers)."""
    problem = Problem(404, "not-found", "No API endpoint or object at this URL.")
    return JsonResponse(problem.body(), status=404, content_type=PROBLEM_CONTENT_TYPE)
