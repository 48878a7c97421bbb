"""Operations: the progress and result of every action, to follow after a 202."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from panel.api import selectors
from panel.api.serializers import OperationSerializer
from panel.api.views.base import ApiView


class OperationDetail(ApiView):
    problem_statuses = {"get": (404,)}

    @extend_schema(operation_id="operations_retrieve", tags=["Operations"], summary="One operation",
                   responses=OperationSerializer)
    def get(self, request, id: int):
        return Response(OperationSerializer(selectors.get_operation(request.auth, id)).data)
