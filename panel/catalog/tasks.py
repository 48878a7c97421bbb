"""Panel-side catalogue tasks: building images on the panel worker (they can take minutes)."""

from celery import shared_task

from panel.catalog import services


@shared_task(name=services.BUILD_IMAGE_TASK)
def build_image(name: str, kind: str) -> int:
    return services.build_image_now(name=name, kind=kind).pk
