"""Customers: list and search, quotas, suspending and unsuspending (all their instances)."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from panel.accounts.models import Customer
from panel.staff import services
from panel.staff.forms import QuotaForm, SuspendForm
from panel.staff.permissions import staff_required
from panel.staff.selectors import filter_instances


@staff_required
def customer_list(request):
    q = request.GET.get("q", "").strip()
    customers = Customer.objects.select_related("user").annotate(
        live=Count("instances", filter=~Q(instances__state="terminated"))
    )
    if q:
        customers = customers.filter(
            Q(name__icontains=q) | Q(user__username__icontains=q) | Q(user__email__icontains=q)
            | Q(external_id=q)
        )
    page = Paginator(customers.order_by("name", "id"), 50).get_page(request.GET.get("page"))
    return render(request, "staff/customers/list.html", {"page": page, "q": q})


def _customer(pk: int) -> Customer:
    customer = Customer.objects.select_related("user").filter(pk=pk).first()
    if customer is None:
        raise Http404("No such customer.")
    return customer


@staff_required
def customer_detail(request, pk: int):
    customer = _customer(pk)
    form = QuotaForm(request.POST or None, instance=customer)
    if request.method == "POST" and form.is_valid():
        services.update_quotas(customer, actor=request.user, **form.cleaned_data)
        messages.success(request, "Quota saved.")
        return redirect("staff-customer-detail", pk=pk)
    context = {
        "customer": customer,
        "quota_form": form,
        "suspend_form": SuspendForm(),
        "instances": filter_instances(customer=customer)[:200],
    }
    return render(request, "staff/customers/detail.html", context)


def _report(request, result: services.BulkResult, verb: str) -> None:
    (messages.warning if result.refused else messages.success)(request, result.summary(verb))


@staff_required
@require_POST
def customer_suspend(request, pk: int):
    customer = _customer(pk)
    form = SuspendForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason for the suspension.")
        return redirect("staff-customer-detail", pk=pk)
    result = services.suspend_customer(customer, reason=form.cleaned_data["reason"], actor=request.user)
    _report(request, result, f"{customer} suspended; instances to suspend")
    return redirect("staff-customer-detail", pk=pk)


@staff_required
@require_POST
def customer_unsuspend(request, pk: int):
    customer = _customer(pk)
    result = services.unsuspend_customer(customer, actor=request.user)
    _report(request, result, f"{customer} unsuspended; instances to bring back")
    return redirect("staff-customer-detail", pk=pk)
