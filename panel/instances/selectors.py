"""Reading instances the way each caller may see them: customers only their own, staff all."""

from django.http import Http404

from panel.instances.models import Instance


def visible_instances(user):
    qs = Instance.objects.select_related("plan", "image", "host", "customer__user").prefetch_related(
        "ip_addresses"
    )
    if user.is_staff:
        return qs
    return qs.filter(customer__user=user)


def get_visible_instance(user, pk: int) -> Instance:
    """The instance when ``user`` may see it; Http404 otherwise (never 403: no existence leak)."""
    instance = visible_instances(user).filter(pk=pk).first()
    if instance is None:
        raise Http404("No such instance.")
    return instance
