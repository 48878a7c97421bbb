"""Template filters and tags of the panel: durations, uptimes and sizes written for people,
and whether sign-up is open."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone

from panel.accounts.services import signup_is_open

register = template.Library()


def _span(seconds: float, parts: int = 2) -> str:
    seconds = int(seconds)
    if seconds < 1:
        return "under 1 s"
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if seconds >= size)
    out = []
    for name, size in units[first:first + parts]:  # 3 h 0 min, not 3 h 55 s
        out.append(f"{seconds // size} {name}")
        seconds %= size
    return " ".join(out)


@register.filter
def duration(value: timedelta | None) -> str:
    """12 s, 1 min 5 s, 2 h 3 min; an empty string for None."""
    if value is None:
        return ""
    return _span(value.total_seconds())


@register.filter
def since(value: datetime | None) -> str:
    """How long ago ``value`` was, as an uptime: 3 d 4 h."""
    if value is None:
        return ""
    return _span((timezone.now() - value).total_seconds())


@register.filter
def mib(value: int | None) -> str:
    """Memory given in MiB: 512 MiB, 2 GiB, 1.5 GiB."""
    if value is None:
        return ""
    if value >= 1024:
        gib = value / 1024
        return f"{gib:.0f} GiB" if gib == int(gib) else f"{gib:.1f} GiB"
    return f"{value} MiB"


@register.simple_tag
def signup_open() -> bool:
    """Whether to offer "Sign up" links (the provider may have closed sign-up)."""
    return signup_is_open()
