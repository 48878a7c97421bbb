"""Customers created by the billing system: a Django user without a password (they log in
through single sign-on links) and its Customer row, idempotent by the billing system's id."""

from __future__ import annotations

import re
import secrets

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from panel.accounts.models import Customer
from panel.audit import services as audit
from panel.instances.models import Operation

_NOT_IN_USERNAME = re.compile(r"[^\w.@+-]")


def _free_username(*, email: str, external_id: str) -> str:
    User = get_user_model()
    candidates = [email.lower(), "billing-" + _NOT_IN_USERNAME.sub("-", external_id)]
    for candidate in candidates:
        candidate = candidate[:150]
        if candidate and not User.objects.filter(username=candidate).exists():
            return candidate
    return f"billing-{secrets.token_hex(6)}"


def ensure_customer(*, external_id: str, email: str, name: str = "") -> tuple[Customer, bool]:
    """The customer with this billing id, created when new; returns (customer, created).

    A retry with the same ``external_id`` returns the existing customer unchanged, also when
    two requests race (the unique constraint decides, the loser reads the winner's row).
    """
    existing = Customer.objects.select_related("user").filter(external_id=external_id).first()
    if existing is not None:
        return existing, False
    username = _free_username(email=email, external_id=external_id)
    for attempt in range(2):
        try:
            return _create(external_id=external_id, email=email, name=name, username=username), True
        except IntegrityError:
            existing = (
                Customer.objects.select_related("user").filter(external_id=external_id).first()
            )
            if existing is not None:
                return existing, False
            if attempt:
                raise
            # Another customer took the same username in the meantime.
            username = f"billing-{secrets.token_hex(6)}"
    raise AssertionError("unreachable")


def _create(*, external_id: str, email: str, name: str, username: str) -> Customer:
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=username,
            email=email,
            password=None,  # unusable: the billing system logs them in with SSO links
        )
        customer = Customer.objects.create(user=user, name=name, external_id=external_id)
        audit.record(
            action="customer.create",
            source=Operation.Source.API,
            target=customer,
            message=f"Created by the billing system as {external_id}.",
            data={"external_id": external_id, "email": email},
        )
    return customer
