"""Lists are paginated with ``limit`` and ``offset``; bad values are a 400, not ignored."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 10**9


class LimitOffset(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

    def _parse(self, request, name: str, *, minimum: int, maximum: int, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
            raise serializers.ValidationError(
                {name: [f"A whole number from {minimum} to {maximum} is required."]}
            )
        return int(raw)

    def get_limit(self, request) -> int:
        return self._parse(request, self.limit_query_param, minimum=1, maximum=self.max_limit,
                           default=self.default_limit)

    def get_offset(self, request) -> int:
        return self._parse(request, self.offset_query_param, minimum=0, maximum=MAX_OFFSET, default=0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters
