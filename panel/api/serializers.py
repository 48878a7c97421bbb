"""What the billing API reads and writes (api-contract.md), field by field."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from panel.accounts.models import Customer
from panel.api.fields import MAX_ID, IdReferenceField, StrictCharField, ensure_text
from panel.catalog import oci
from panel.catalog.models import Image, InstanceKind, Plan
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.validators import validate_hostname

# An RFC 1123 label that is not only digits (what validate_hostname accepts), spelled without
# lookaheads so that OpenAPI tools can generate from it: a letter first; or digits, then a
# letter or hyphen, then anything ending in a letter or digit; or digits then a letter.
HOSTNAME_PATTERN = (
    r"^(?:[A-Za-z]|[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]"
    r"|[0-9]+[A-Za-z-][A-Za-z0-9-]*[A-Za-z0-9]|[0-9]+[A-Za-z])$"
)
HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
EXTERNAL_ID_HELP = "The billing system's own id (1-100 characters); Berth keeps it unique."


# --- Catalogue ------------------------------------------------------------------------------

class PlanSerializer(serializers.ModelSerializer):
    price_hourly = serializers.DecimalField(
        max_digits=10, decimal_places=4, read_only=True, help_text="Price per hour, as a decimal string."
    )
    price_monthly = serializers.DecimalField(
        max_digits=10, decimal_places=2, read_only=True, help_text="Price per month, as a decimal string."
    )

    class Meta:
        model = Plan
        fields = ["id", "name", "kind", "vcpus", "memory_mib", "disk_gib", "price_hourly", "price_monthly"]
        read_only_fields = fields


class ImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Image
        fields = ["id", "name", "kind"]
        read_only_fields = fields


# --- Customers ------------------------------------------------------------------------------

class CustomerCreateSerializer(serializers.Serializer):
    external_id = StrictCharField(min_length=1, max_length=100, help_text=EXTERNAL_ID_HELP)
    email = serializers.EmailField(max_length=254)
    name = StrictCharField(max_length=200, required=False, default="", allow_blank=True)

    def validate_email(self, value: str) -> str:
        ensure_text(value)
        return value


class CustomerSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)
    external_id = serializers.CharField(read_only=True, allow_null=True)

    class Meta:
        model = Customer
        fields = ["id", "external_id", "email", "name", "is_suspended", "created_at"]
        read_only_fields = fields


class CustomerFilterSerializer(serializers.Serializer):
    external_id = StrictCharField(
        required=False, min_length=1, max_length=100, help_text="Only the customer with this billing id."
    )


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_ID, "description": "Berth's customer id."},
            {"type": "string", "minLength": 1, "maxLength": 100,
             "description": "The billing system's customer id (external_id)."},
        ]
    }
)
class CustomerReferenceField(serializers.Field):
    """A customer by Berth's id (a JSON integer) or by the billing system's id (a string).

    A string is looked up as ``external_id`` first; a string of digits that is nobody's
    external_id is then tried as Berth's id.
    """

    default_error_messages = {
        "invalid": "Give the customer's id (integer) or external_id (string).",
        "does_not_exist": "No such customer.",
    }

    def to_internal_value(self, data) -> Customer:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("invalid")
        customers = Customer.objects.select_related("user")
        found = None
        if isinstance(data, str):
            if not 1 <= len(data) <= 100:
                self.fail("invalid")
            ensure_text(data)
            found = customers.filter(external_id=data).first()
            if found is None and data.isascii() and data.isdigit() and int(data) <= MAX_ID:
                found = customers.filter(pk=int(data)).first()
        elif 1 <= data <= MAX_ID:
            found = customers.filter(pk=data).first()
        if found is None:
            self.fail("does_not_exist")
        return found

    def to_representation(self, value: Customer) -> int:
        return value.pk


# --- Services -------------------------------------------------------------------------------

@extend_schema_field({"type": "string", "minLength": 1, "maxLength": 63, "pattern": HOSTNAME_PATTERN})
class HostnameField(StrictCharField):
    pass


@extend_schema_field({
    "type": "array", "minItems": 1, "maxItems": oci.MAX_ARGS,
    "items": {"type": "string", "maxLength": oci.MAX_TEXT},
    "description": "Application images only: replaces the image's Cmd (its Entrypoint stays, "
                   "as with `docker run IMAGE COMMAND`). The program first.",
})
class CommandField(serializers.Field):
    def to_internal_value(self, data) -> list[str]:
        for arg in data if isinstance(data, list) else []:
            if isinstance(arg, str):
                ensure_text(arg)
        try:
            return oci.clean_command(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value) -> list[str]:
        return list(value)


@extend_schema_field({
    "type": "object", "maxProperties": oci.MAX_VARS,
    "propertyNames": {"pattern": oci.ENV_NAME_RE.pattern},
    "additionalProperties": {"type": "string", "maxLength": oci.MAX_TEXT},
    "description": "Application images only: environment variables added to the image's Env "
                   "(and replacing those of the same name). Not shown again by GET: values may "
                   "be secrets.",
})
class EnvField(serializers.Field):
    def to_internal_value(self, data) -> dict[str, str]:
        if isinstance(data, dict):
            for key, value in data.items():
                ensure_text(key)
                if isinstance(value, str):
                    ensure_text(value)
        try:
            return oci.clean_env(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value) -> dict[str, str]:
        return dict(value)


class ServiceCreateSerializer(serializers.Serializer):
    external_id = StrictCharField(min_length=1, max_length=100, help_text=EXTERNAL_ID_HELP)
    customer = CustomerReferenceField()
    plan = IdReferenceField(queryset=Plan.objects.all(), name="plan")
    image = IdReferenceField(queryset=Image.objects.all(), name="image")
    hostname = HostnameField(
        min_length=1, max_length=63,
        help_text="An RFC 1123 label: letters, digits and hyphens, not only digits; stored in lower case.",
    )
    command = CommandField(required=False)
    env = EnvField(required=False)

    def validate_hostname(self, value: str) -> str:
        # The pattern first (as the schema says), so " web" is refused, not quietly stripped.
        if not HOSTNAME_RE.fullmatch(value):
            if value.isascii() and value.isdigit():
                raise serializers.ValidationError("A hostname cannot be only digits.")
            raise serializers.ValidationError(
                "Use only letters, digits and hyphens, and do not start or end with a hyphen."
            )
        try:
            return validate_hostname(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


_DATETIME = serializers.DateTimeField()  # its to_representation reads no state of its own


def _datetime(value) -> str | None:
    return None if value is None else _DATETIME.to_representation(value)


class ServiceSerializer(serializers.Serializer):
    """A service as GET returns it. Declared field by field rather than a ModelSerializer:
    building a ModelSerializer's fields from the model costs ~1 ms per request on this path."""

    id = serializers.IntegerField(read_only=True)
    uuid = serializers.UUIDField(read_only=True, format="hex")
    external_id = serializers.CharField(read_only=True, allow_null=True)
    customer = serializers.IntegerField(source="customer_id", read_only=True, help_text="Berth's customer id.")
    customer_external_id = serializers.CharField(
        source="customer.external_id", read_only=True, allow_null=True,
        help_text="The billing system's customer id, when it has one.",
    )
    kind = serializers.ChoiceField(choices=InstanceKind.choices, read_only=True)
    plan = serializers.IntegerField(source="plan_id", read_only=True)
    image = serializers.IntegerField(source="image_id", read_only=True)
    hostname = serializers.CharField(read_only=True)
    state = serializers.ChoiceField(choices=InstanceState.choices, read_only=True)
    host = serializers.SerializerMethodField(help_text="The host's name; null until placed.")
    ipv4 = serializers.SerializerMethodField(help_text="Addresses held; empty once terminated.")
    error = serializers.CharField(read_only=True, help_text="Why the service is in the error state.")
    suspended_reason = serializers.CharField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    terminated_at = serializers.DateTimeField(read_only=True, allow_null=True)
    command = serializers.ListField(
        source="app_command", child=serializers.CharField(), read_only=True, allow_null=True,
        help_text="Application images: the command ordered (null: the image's own).",
    )
    previous_image = serializers.IntegerField(
        source="previous_image_id", read_only=True, allow_null=True,
        help_text="Application images: the image before the last upgrade, what rollback returns to.",
    )

    @extend_schema_field({"type": "string", "nullable": True})
    def get_host(self, instance: Instance) -> str | None:
        return instance.host.name if instance.host_id else None

    @extend_schema_field({"type": "array", "items": {"type": "string", "format": "ipv4"}})
    def get_ipv4(self, instance: Instance) -> list[str]:
        loaded = getattr(instance, "ipv4_loaded", None)  # selectors.read_service
        return instance.ipv4 if loaded is None else loaded

    def to_representation(self, instance: Instance) -> dict:
        """What DRF's field-by-field to_representation returns (a test holds the two equal),
        spelled out: DRF first deep-copies the 21 declared fields for every service it shows,
        0.5 ms a service, nearly as much as reading it from the database."""
        return {
            "id": instance.id,
            "uuid": instance.uuid.hex,
            "external_id": instance.external_id,
            "customer": instance.customer_id,
            "customer_external_id": instance.customer.external_id,
            "kind": instance.kind,
            "plan": instance.plan_id,
            "image": instance.image_id,
            "hostname": instance.hostname,
            "state": instance.state,
            "host": self.get_host(instance),
            "ipv4": self.get_ipv4(instance),
            "error": instance.error,
            "suspended_reason": instance.suspended_reason,
            "created_at": _datetime(instance.created_at),
            "updated_at": _datetime(instance.updated_at),
            "started_at": _datetime(instance.started_at),
            "terminated_at": _datetime(instance.terminated_at),
            "command": None if instance.app_command is None else [str(arg) for arg in instance.app_command],
            "previous_image": instance.previous_image_id,
        }


class ServiceOrderedSerializer(ServiceSerializer):
    operation = serializers.SerializerMethodField(
        help_text="The create operation: follow it at /api/v1/operations/{id}/."
    )

    @extend_schema_field(OpenApiTypes.INT)
    def get_operation(self, instance: Instance) -> int | None:
        return self.context["operation_id"]

    def to_representation(self, instance: Instance) -> dict:
        return {**super().to_representation(instance), "operation": self.get_operation(instance)}


class ServiceFilterSerializer(serializers.Serializer):
    external_id = StrictCharField(
        required=False, min_length=1, max_length=100, help_text="The billing system's service id."
    )
    customer = StrictCharField(
        required=False, min_length=1, max_length=100,
        help_text="Berth's customer id or the billing system's customer id.",
    )
    state = serializers.ChoiceField(choices=InstanceState.choices, required=False, help_text="Only services in this state.")


class ChangePlanSerializer(serializers.Serializer):
    plan = IdReferenceField(queryset=Plan.objects.all(), name="plan")


class UpgradeSerializer(serializers.Serializer):
    image = IdReferenceField(
        queryset=Image.objects.all(), name="image",
        help_text="Another application image (e.g. the application's next version).",
    )


class SuspendSerializer(serializers.Serializer):
    reason = StrictCharField(
        max_length=500, required=False, default="", allow_blank=True,
        help_text="Why (shown to the admin and in the audit log).",
    )


class ActionAcceptedSerializer(serializers.Serializer):
    operation = serializers.IntegerField(help_text="Follow it at /api/v1/operations/{id}/.")
    service = serializers.IntegerField()
    state = serializers.ChoiceField(choices=InstanceState.choices, help_text="The service's state now.")


class LinkSerializer(serializers.Serializer):
    url = serializers.CharField()
    expires_at = serializers.DateTimeField()


class UsageQuerySerializer(serializers.Serializer):
    from_ = serializers.DateTimeField(
        required=False, help_text="Start of the period (ISO 8601); default: when the service was created."
    )
    to = serializers.DateTimeField(required=False, help_text="End of the period (ISO 8601); default: now.")

    def get_fields(self):
        # "from" is a Python keyword: declared as from_, published as from, kept first.
        fields = super().get_fields()
        return {"from" if name == "from_" else name: field for name, field in fields.items()}

    def validate(self, attrs):
        start, end = attrs.get("from"), attrs.get("to")
        if start is not None and end is not None and end < start:
            raise serializers.ValidationError({"to": ["The end of the period is before its start."]})
        return attrs


class UsageSerializer(serializers.Serializer):
    from_ = serializers.DateTimeField()
    to = serializers.DateTimeField()
    running_seconds = serializers.FloatField(help_text="Seconds the service was running or rebooting.")
    cpu_seconds = serializers.FloatField(help_text="CPU time used.")
    memory_mib_hours = serializers.FloatField(help_text="Memory in use, integrated over time.")
    net_rx_bytes = serializers.IntegerField(help_text="Bytes received.")
    net_tx_bytes = serializers.IntegerField(help_text="Bytes sent.")
    disk_used_bytes = serializers.IntegerField(help_text="The most disk space used during the period.")

    def get_fields(self):
        # "from" is a Python keyword: declared as from_, published as from, kept first.
        fields = super().get_fields()
        return {"from" if name == "from_" else name: field for name, field in fields.items()}


# --- Operations -----------------------------------------------------------------------------

class OperationSerializer(serializers.ModelSerializer):
    service = serializers.IntegerField(source="instance_id", read_only=True)
    started_at = serializers.DateTimeField(read_only=True, allow_null=True)
    finished_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = Operation
        fields = [
            "id", "action", "state", "error", "progress", "source", "created_at", "started_at",
            "finished_at", "service",
        ]
        read_only_fields = fields


# --- Errors (for the schema) ----------------------------------------------------------------

class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details, the body of every error."""

    type = serializers.CharField(help_text="A URI naming the kind of problem.")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="Validation problems, by field (dotted paths for nested fields).",
    )
    state = serializers.ChoiceField(
        choices=InstanceState.choices, required=False,
        help_text="409 for an illegal state change: the service's current state.",
    )
    service = serializers.IntegerField(
        required=False, help_text="409 for a reused external_id: the service that has it."
    )

