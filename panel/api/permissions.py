"""Who may call what: any valid token, or only a billing token (scope ``billing``)."""

from rest_framework.permissions import BasePermission

from panel.api.models import ApiToken


class HasApiToken(BasePermission):
    message = "Authentication with an API token is required."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiToken)


class IsBillingToken(BasePermission):
    message = "This needs a billing token; a customer token may only use its own services."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiToken) and request.auth.is_billing
