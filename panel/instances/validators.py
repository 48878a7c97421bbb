"""Input rules shared by the order form, the API and the services."""

import re

from django.core.exceptions import ValidationError

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_hostname(value: str) -> str:
    """An RFC 1123 host label: 1-63 letters, digits and hyphens, not starting or ending with '-'.

    Returns the normalised (lower-case) hostname.
    """
    hostname = (value or "").strip().lower()
    if not hostname:
        raise ValidationError("Enter a hostname.", code="required")
    if len(hostname) > 63:
        raise ValidationError("A hostname is at most 63 characters long.", code="max_length")
    if not _LABEL.match(hostname):
        raise ValidationError(
            "Use only letters, digits and hyphens, and do not start or end with a hyphen.",
            code="invalid",
        )
    if hostname.isdigit():
        raise ValidationError("A hostname cannot be only digits.", code="invalid")
    return hostname
