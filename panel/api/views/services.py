"""Services (instances): order, read, list, act on, meter, and open a console or the panel."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from panel.api import selectors
from panel.api.pagination import LimitOffset
from panel.api.permissions import HasApiToken, IsBillingToken
from panel.api.serializers import (
    ActionAcceptedSerializer,
    ChangePlanSerializer,
    LinkSerializer,
    ServiceCreateSerializer,
    ServiceFilterSerializer,
    ServiceOrderedSerializer,
    ServiceSerializer,
    SuspendSerializer,
    UpgradeSerializer,
    UsageQuerySerializer,
    UsageSerializer,
)
from panel.api.services.consoles import console_url, open_console
from panel.api.services.provisioning import order_service
from panel.api.services.sso import issue_sso_link
from panel.api.views.base import ApiView
from panel.instances.models import InstanceState, Operation
from panel.instances.services.actions import request_action
from panel.usage.services import usage_for_period

A = Operation.Action
TAGS = ["Services"]


class ServiceListCreate(ApiView):
    pagination_class = LimitOffset
    serializer_class = ServiceSerializer
    problem_statuses = {"get": (400,), "post": (400, 403, 409, 415, 422)}

    def get_permissions(self):
        # Ordering is the billing system's job; reading lists is open to both scopes.
        return [IsBillingToken()] if self.request.method == "POST" else [HasApiToken()]

    @extend_schema(
        operation_id="services_list", tags=TAGS, summary="List services",
        description="Customer tokens see only their own services. Paginated with limit/offset.",
        parameters=[ServiceFilterSerializer],
        responses=ServiceSerializer(many=True),
    )
    def get(self, request):
        filters = ServiceFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        services = selectors.filter_services(request.auth, **filters.validated_data)
        page = self.paginate_queryset(services)
        return self.get_paginated_response(ServiceSerializer(page, many=True).data)

    @extend_schema(
        operation_id="services_create", tags=TAGS, summary="Order a service (idempotent by external_id)",
        description=(
            "202 when a new service was ordered. The same `external_id` with the same order again "
            "returns that service: 202 while it is still pending, 200 after. The same "
            "`external_id` with a different order is a 409."
        ),
        request=ServiceCreateSerializer,
        responses={202: ServiceOrderedSerializer, 200: ServiceOrderedSerializer},
    )
    def post(self, request):
        data = ServiceCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = order_service(**data.validated_data, actor=self.actor())
        instance = result.instance
        code = (status.HTTP_202_ACCEPTED if result.created or instance.state == InstanceState.PENDING
                else status.HTTP_200_OK)
        body = ServiceOrderedSerializer(
            selectors.get_service(request.auth, instance.pk),
            context={"operation_id": selectors.create_operation_id(instance)},
        ).data
        return Response(body, status=code)


class ServiceDetail(ApiView):
    problem_statuses = {"get": (404,)}

    @extend_schema(operation_id="services_retrieve", tags=TAGS, summary="One service",
                   responses=ServiceSerializer)
    def get(self, request, id: int):
        return Response(ServiceSerializer(selectors.read_service(request.auth, id)).data)


class ServiceAction(ApiView):
    """POST …/<action>: accepted (202) with the operation to follow."""

    action_name: str = ""
    request_serializer = None

    def get_permissions(self):
        return [HasApiToken()]

    def parse(self, request) -> tuple[dict, str]:
        return {}, ""

    def post(self, request, id: int):
        instance = selectors.get_service(request.auth, id)
        params, reason = self.parse(request)
        operation = request_action(
            instance=instance, action=self.action_name, actor=self.actor(),
            source=Operation.Source.API, params=params, reason=reason,
        )
        body = {"operation": operation.pk, "service": instance.pk, "state": operation.instance.state}
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _action_schema(action: str, summary: str, request=None):
    return extend_schema(
        operation_id=f"services_{action}", tags=TAGS, summary=summary, request=request,
        responses={202: ActionAcceptedSerializer},
    )


class ServiceStart(ServiceAction):
    action_name = A.START
    problem_statuses = {"post": (404, 409)}

    @_action_schema("start", "Start a stopped service")
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceStop(ServiceAction):
    action_name = A.STOP
    problem_statuses = {"post": (404, 409)}

    @_action_schema("stop", "Stop a running service")
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceReboot(ServiceAction):
    action_name = A.REBOOT
    problem_statuses = {"post": (404, 409)}

    @_action_schema("reboot", "Reboot a running service")
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceTerminate(ServiceAction):
    action_name = A.TERMINATE
    problem_statuses = {"post": (404, 409)}

    @_action_schema(
        "terminate", "Terminate a service (resources and IPs freed; the row stays as terminated)"
    )
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceSuspend(ServiceAction):
    action_name = A.SUSPEND
    problem_statuses = {"post": (400, 403, 404, 409, 415)}

    def get_permissions(self):
        return [IsBillingToken()]

    def parse(self, request) -> tuple[dict, str]:
        # The body is optional: no body at all means no reason.
        data = SuspendSerializer(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        return {}, data.validated_data["reason"]

    @_action_schema("suspend", "Suspend: the service stops; its owner can neither start it nor "
                               "open its console until it is unsuspended", request=SuspendSerializer)
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceUnsuspend(ServiceAction):
    action_name = A.UNSUSPEND
    problem_statuses = {"post": (403, 404, 409)}

    def get_permissions(self):
        return [IsBillingToken()]

    @_action_schema("unsuspend", "Unsuspend: back to the state it was suspended from")
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceChangePlan(ServiceAction):
    action_name = A.CHANGE_PLAN
    problem_statuses = {"post": (400, 403, 404, 409, 415, 422)}

    def get_permissions(self):
        return [IsBillingToken()]

    def parse(self, request) -> tuple[dict, str]:
        data = ChangePlanSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return {"plan": data.validated_data["plan"].pk}, ""

    @_action_schema("change_plan", "Change the plan (same kind only)", request=ChangePlanSerializer)
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceUpgrade(ServiceAction):
    action_name = A.UPGRADE
    problem_statuses = {"post": (400, 404, 409, 415)}

    def parse(self, request) -> tuple[dict, str]:
        data = UpgradeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return {"image": data.validated_data["image"].pk}, ""

    @_action_schema(
        "upgrade", "Run another application image (a new version) with the same address and "
                   "volumes; the writable layer starts afresh", request=UpgradeSerializer)
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceRollback(ServiceAction):
    action_name = A.ROLLBACK
    problem_statuses = {"post": (400, 404, 409)}

    @_action_schema("rollback", "Back to the image before the last upgrade (409 when there is none)")
    def post(self, request, id: int):
        return super().post(request, id)


class ServiceSso(ApiView):
    problem_statuses = {"post": (404,)}

    @extend_schema(
        operation_id="services_sso", tags=TAGS, request=None, responses={201: LinkSerializer},
        summary="A one-time link that logs the customer into the service's page",
        description="The link works once and expires after 5 minutes.",
    )
    def post(self, request, id: int):
        instance = selectors.get_service(request.auth, id)
        link = issue_sso_link(instance=instance)
        url = request.build_absolute_uri(reverse("sso-login", args=[link.token]))
        return Response({"url": url, "expires_at": link.expires_at}, status=status.HTTP_201_CREATED)


class ServiceConsole(ApiView):
    problem_statuses = {"post": (404, 409)}

    @extend_schema(
        operation_id="services_console", tags=TAGS, request=None, responses={201: LinkSerializer},
        summary="A console ticket: a WebSocket URL that works once, for 60 s",
        description="409 when the service is suspended or not running.",
    )
    def post(self, request, id: int):
        instance = selectors.get_service(request.auth, id)
        user = self.actor()
        ticket = open_console(instance=instance, user_id=user.pk if user else None)
        return Response({"url": console_url(instance, ticket), "expires_at": ticket.expires_at},
                        status=status.HTTP_201_CREATED)


class ServiceUsage(ApiView):
    problem_statuses = {"get": (400, 404)}

    @extend_schema(
        operation_id="services_usage", tags=TAGS, summary="Usage over a period",
        parameters=[UsageQuerySerializer], responses=UsageSerializer,
        description="Adjacent periods add up exactly. The end is clamped to now.",
    )
    def get(self, request, id: int):
        query = UsageQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        instance = selectors.get_service(request.auth, id)
        usage = usage_for_period(
            instance=instance, start=query.validated_data.get("from"), end=query.validated_data.get("to")
        )
        return Response(UsageSerializer({
            "from": usage.start, "to": usage.end, "running_seconds": usage.running_seconds,
            "cpu_seconds": usage.cpu_seconds, "memory_mib_hours": usage.memory_mib_hours,
            "net_rx_bytes": usage.net_rx_bytes, "net_tx_bytes": usage.net_tx_bytes,
            "disk_used_bytes": usage.disk_used_bytes,
        }).data)
