"""Every instance, filtered by host, customer, state and kind, with bulk actions."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from panel.hosts.selectors import instance_display_state
from panel.staff import services
from panel.staff.forms import BulkActionForm, InstanceFilterForm
from panel.staff.permissions import staff_required
from panel.staff.selectors import filter_instances


@staff_required
def instance_list(request):
    form = InstanceFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    instances = filter_instances(**{k: v for k, v in filters.items() if v not in (None, "")})
    page = Paginator(instances, 100).get_page(request.GET.get("page"))
    for instance in page:
        instance.display_state = instance_display_state(instance)
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "staff/instances/list.html", {
        "filter_form": form, "page": page, "bulk_form": BulkActionForm(), "query": query.urlencode(),
    })


@staff_required
@require_POST
def instance_bulk(request):
    form = BulkActionForm(request.POST)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = ""
    if not form.is_valid():
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
        return redirect(back or "staff-instance-list")
    action = form.cleaned_data["action"]
    result = services.bulk_action(
        instances=form.cleaned_data["instances"], action=action, actor=request.user,
        reason=form.cleaned_data["reason"],
    )
    (messages.warning if result.refused else messages.success)(request, result.summary(action.replace("_", " ").capitalize()))
    return redirect(back or "staff-instance-list")
