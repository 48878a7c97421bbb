"""Bearer-token authentication for the API: ``Authorization: Bearer <token>``."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from panel.api.exceptions import AUTH_CHALLENGE
from panel.api.models import ApiToken
from panel.api.services.tokens import authenticate_key


class BearerTokenAuthentication(BaseAuthentication):
    """``request.auth`` is the ApiToken; ``request.user`` is the customer's user for a customer
    token, and nobody (anonymous) for a billing token, which acts for no person."""

    def authenticate(self, request) -> tuple[object, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <token>'.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is invalid or revoked.") from None
        token = authenticate_key(key)
        if token is None:
            raise exceptions.AuthenticationFailed("The token is invalid or revoked.")
        user = token.customer.user if token.customer_id is not None else AnonymousUser()
        return user, token

    def authenticate_header(self, request) -> str:
        return AUTH_CHALLENGE
