"""Strict serializer fields: the API accepts exactly the JSON types its OpenAPI schema
promises (DRF's own fields quietly turn 5 into "5" and "5" into 5)."""

from __future__ import annotations

from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# Ids are PostgreSQL bigints; anything larger cannot exist and must not reach the database.
MAX_ID = 2**63 - 1


def ensure_text(value: str) -> None:
    """Refuse what survives JSON decoding but not the database: lone surrogates and NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError("Use valid Unicode text.") from None
    if "\x00" in value:
        raise serializers.ValidationError("Text may not contain NUL characters.")


class StrictCharField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        ensure_text(data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "A whole number (a JSON integer) is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ID})
class IdReferenceField(serializers.Field):
    """A JSON integer id of one row of ``queryset``."""

    default_error_messages = {
        "invalid": "A whole number (a JSON integer) id is required.",
        "does_not_exist": "No {name} with this id can be used.",
    }

    def __init__(self, *, queryset: QuerySet, name: str, **kwargs):
        self.queryset, self.object_name = queryset, name
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> Model:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        obj = self.queryset.filter(pk=data).first() if 1 <= data <= MAX_ID else None
        if obj is None:
            self.fail("does_not_exist", name=self.object_name)
        return obj

    def to_representation(self, value) -> int:
        return value.pk
