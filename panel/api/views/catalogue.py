"""What can be ordered: plans and images."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from panel.api import selectors
from panel.api.serializers import ImageSerializer, PlanSerializer
from panel.api.views.base import ApiView


class PlanList(ApiView):
    @extend_schema(operation_id="plans_list", tags=["Catalogue"], summary="Plans that can be ordered",
                   responses=PlanSerializer(many=True))
    def get(self, request):
        return Response(PlanSerializer(selectors.active_plans(), many=True).data)


class ImageList(ApiView):
    @extend_schema(operation_id="images_list", tags=["Catalogue"], summary="Images that can be ordered",
                   responses=ImageSerializer(many=True))
    def get(self, request):
        return Response(ImageSerializer(selectors.active_images(request.auth), many=True).data)
