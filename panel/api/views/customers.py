"""Customers, created and looked up by the billing system (billing tokens only)."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response

from panel.api import selectors
from panel.api.pagination import LimitOffset
from panel.api.permissions import IsBillingToken
from panel.api.serializers import (
    CustomerCreateSerializer,
    CustomerFilterSerializer,
    CustomerSerializer,
)
from panel.api.services.customers import ensure_customer
from panel.api.views.base import ApiView


class CustomerListCreate(ApiView):
    permission_classes = [IsBillingToken]
    pagination_class = LimitOffset
    serializer_class = CustomerSerializer
    problem_statuses = {"get": (400, 403), "post": (400, 403, 415)}

    @extend_schema(
        operation_id="customers_list", tags=["Customers"], summary="List customers",
        parameters=[CustomerFilterSerializer],
        responses=CustomerSerializer(many=True),
    )
    def get(self, request):
        filters = CustomerFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        page = self.paginate_queryset(selectors.filter_customers(**filters.validated_data))
        return self.get_paginated_response(CustomerSerializer(page, many=True).data)

    @extend_schema(
        operation_id="customers_create", tags=["Customers"],
        summary="Create a customer (idempotent by external_id)",
        description="201 with a new customer; 200 with the existing one when `external_id` is known.",
        request=CustomerCreateSerializer,
        responses={201: CustomerSerializer, 200: CustomerSerializer},
    )
    def post(self, request):
        data = CustomerCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer, created = ensure_customer(**data.validated_data)
        return Response(
            CustomerSerializer(customer).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class CustomerDetail(ApiView):
    permission_classes = [IsBillingToken]
    problem_statuses = {"get": (403, 404)}

    @extend_schema(operation_id="customers_retrieve", tags=["Customers"], summary="One customer",
                   responses=CustomerSerializer)
    def get(self, request, id: int):
        return Response(CustomerSerializer(selectors.get_customer(id)).data)
