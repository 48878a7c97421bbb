"""Reading the catalogue: which images a customer may order (everyone's, and their own ISOs)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from panel.catalog.models import Image


def orderable_images(customer=None) -> QuerySet[Image]:
    """Active images ``customer`` may order: the shared catalogue plus their own installer
    ISOs (none without a customer: a billing token's listing shows the shared catalogue)."""
    mine = Q(owner=customer) if customer is not None else Q(pk__in=[])
    return Image.objects.filter(Q(owner__isnull=True) | mine, is_active=True)


def private_isos(customer) -> QuerySet[Image]:
    return Image.objects.filter(owner=customer, source=Image.Source.ISO)
