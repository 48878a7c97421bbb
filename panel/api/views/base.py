"""What every API view shares: token authentication, JSON only, problem+json errors (all set
in REST_FRAMEWORK), and the list of errors each method documents in the schema."""

from __future__ import annotations

from rest_framework.generics import GenericAPIView

from panel.api.permissions import HasApiToken


class ApiView(GenericAPIView):
    permission_classes = [HasApiToken]
    pagination_class = None
    # Error statuses each method can answer besides 401 and 429 (which all can), for the schema.
    problem_statuses: dict[str, tuple[int, ...]] = {}

    def actor(self):
        """The person behind the request for the audit log: a customer token's user, or None."""
        user = self.request.user
        return user if user is not None and user.is_authenticated else None
