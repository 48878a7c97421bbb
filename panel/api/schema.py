"""The OpenAPI document's Berth-specific parts: the bearer scheme, integer ids, every error
response as problem+json, and links from created objects to the endpoints that follow them."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_parameter_type
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from panel.api.fields import MAX_ID
from panel.api.serializers import ProblemSerializer
from panel.api.views.base import ApiView

PROBLEM_MEDIA_TYPE = "application/problem+json"

PROBLEM_DESCRIPTIONS = {
    400: "Invalid input: malformed JSON, wrong types, or field errors listed in `errors`.",
    401: "No token, or an invalid or revoked one (with `WWW-Authenticate: Bearer`).",
    403: "The token's scope does not allow this (customer tokens: only their own services).",
    404: "No such object, or it belongs to another customer.",
    409: "Not allowed in the service's current state, another operation is running, or the "
         "external_id belongs to a different order.",
    415: "The body is not `application/json`.",
    422: "Quota exceeded, or no host has room.",
    429: "Rate limit reached; `Retry-After` says when to try again.",
}
ALWAYS = (401, 429)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "panel.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token: `Authorization: Bearer berth_…` "
                           "(`manage.py create_api_token`, or the admin).",
        }


class BerthAutoSchema(AutoSchema):
    def _resolve_path_parameters(self, variables):
        if "id" not in variables:
            return super()._resolve_path_parameters(variables)
        others = [v for v in variables if v != "id"]
        return [
            build_parameter_type(
                name="id", location=OpenApiParameter.PATH,
                schema={"type": "integer", "minimum": 1, "maximum": MAX_ID},
            ),
            *(super()._resolve_path_parameters(others) if others else []),
        ]

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        declared = getattr(self.view, "problem_statuses", {}).get(self.method.lower(), ())
        if not isinstance(self.view, ApiView):
            return responses  # the schema and docs themselves: public, nothing to document
        for code in sorted({*ALWAYS, *declared}):
            response = OpenApiResponse(response=ProblemSerializer, description=PROBLEM_DESCRIPTIONS[code])
            responses[str(code)] = self._get_response_for_code(
                response, str(code), [PROBLEM_MEDIA_TYPE], direction
            )
            if code == 429:
                responses["429"]["headers"] = {
                    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}
                }
            if code == 401:
                responses["401"]["headers"] = {
                    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge."}
                }
        return responses


# Links let a client (and Schemathesis' stateful tests) follow what one call returns into the
# next: an ordered service into its detail, actions and usage; an action into its operation.
_SERVICE_LINKS = {
    "GetService": "services_retrieve",
    "ServiceUsage": "services_usage",
    "StopService": "services_stop",
    "SuspendService": "services_suspend",
    "TerminateService": "services_terminate",
}


def add_links(result, generator, request, public):
    """drf-spectacular postprocessing hook: add OpenAPI links between operations."""
    operations = {
        op.get("operationId"): (path, method, op)
        for path, methods in result.get("paths", {}).items()
        for method, op in methods.items()
        if isinstance(op, dict)
    }

    def link(source_id: str, codes: tuple[str, ...], links: dict[str, str], expression: str) -> None:
        if source_id not in operations:
            return
        _, _, op = operations[source_id]
        for code in codes:
            response = op.get("responses", {}).get(code)
            if response is None:
                continue
            response.setdefault("links", {}).update({
                name: {"operationId": target, "parameters": {"id": expression}}
                for name, target in links.items() if target in operations
            })

    link("services_create", ("200", "202"), _SERVICE_LINKS, "$response.body#/id")
    link("services_create", ("200", "202"), {"GetOperation": "operations_retrieve"},
         "$response.body#/operation")
    for action in ("start", "stop", "reboot", "suspend", "unsuspend", "terminate", "change_plan"):
        link(f"services_{action}", ("202",), {"GetOperation": "operations_retrieve"},
             "$response.body#/operation")
    for operation_id in ("snapshots_create", "snapshots_restore", "snapshots_destroy", "backups_create",
                         "backups_restore"):  # panel/backups/api.py
        link(operation_id, ("202",), {"GetOperation": "operations_retrieve"}, "$response.body#/operation")
    link("customers_create", ("200", "201"), {"GetCustomer": "customers_retrieve"}, "$response.body#/id")
    return result
