"""Changing accounts: sign-up, profile, SSH keys and the provider's site settings."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from panel.accounts.credentials import PublicKey
from panel.accounts.models import Customer, SiteSettings, SshKey
from panel.audit import services as audit

SOURCE_UI = "ui"


class SignupClosed(Exception):
    """The provider does not let people create accounts themselves."""


class DuplicateKey(Exception):
    """The customer already has this key, or a key of this name."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def site_settings() -> SiteSettings:
    return SiteSettings.objects.get_or_create(pk=1)[0]


def signup_is_open() -> bool:
    """The site setting when the admin set one, else ``BERTH_SIGNUP_OPEN``."""
    row = SiteSettings.objects.filter(pk=1).values_list("signup_open", flat=True).first()
    return settings.BERTH_SIGNUP_OPEN if row is None else row


def set_signup_open(*, open: bool | None, actor=None) -> SiteSettings:
    """Open or close sign-up; None goes back to following ``BERTH_SIGNUP_OPEN``."""
    row = site_settings()
    row.signup_open = open
    row.save(update_fields=["signup_open"])
    audit.record(action="site.signup", source=SOURCE_UI, actor=actor, target=row,
                 message=f"Sign-up set to {'the default' if open is None else 'open' if open else 'closed'}.")
    return row


def sign_up(*, username: str, email: str, password: str, name: str = "") -> Customer:
    """A new user and their customer account with the default quotas.

    Raises SignupClosed when sign-up is off (checked here too: the form is not the only caller).
    """
    if not signup_is_open():
        raise SignupClosed("Sign-up is closed.")
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, email=email, password=password)
        customer = Customer.objects.create(user=user, name=name)
        audit.record(action="customer.signup", source=SOURCE_UI, actor=user, target=customer,
                     message=f"{username} signed up.")
    return customer


def update_profile(*, user, name: str, email: str) -> None:
    with transaction.atomic():
        user.email = email
        user.save(update_fields=["email"])
        customer = Customer.objects.filter(user=user).first()
        if customer is not None and customer.name != name:
            customer.name = name
            customer.save(update_fields=["name"])
        audit.record(action="account.profile", source=SOURCE_UI, actor=user, target=user,
                     message="Profile updated.")


def add_ssh_key(*, customer: Customer, name: str, key: PublicKey, actor=None) -> SshKey:
    """Store a checked key (see credentials.parse_public_key). Raises DuplicateKey."""
    name = name.strip() or key.comment or key.key_type
    if SshKey.objects.filter(customer=customer, fingerprint=key.fingerprint).exists():
        raise DuplicateKey("public_key", "You have already added this key.")
    if SshKey.objects.filter(customer=customer, name=name).exists():
        raise DuplicateKey("name", f"You already have a key named {name}.")
    try:
        with transaction.atomic():
            ssh_key = SshKey.objects.create(
                customer=customer, name=name, public_key=key.line, fingerprint=key.fingerprint
            )
    except IntegrityError:  # the same key added twice at once
        raise DuplicateKey("public_key", "You have already added this key.") from None
    audit.record(action="account.ssh_key.add", source=SOURCE_UI, actor=actor, target=ssh_key,
                 message=f"SSH key {name} ({key.fingerprint}) added.")
    return ssh_key


def delete_ssh_key(*, ssh_key: SshKey, actor=None) -> None:
    """Instances made with the key keep it; new orders can no longer choose it."""
    audit.record(action="account.ssh_key.delete", source=SOURCE_UI, actor=actor, target=ssh_key,
                 message=f"SSH key {ssh_key.name} ({ssh_key.fingerprint}) deleted.")
    ssh_key.delete()
