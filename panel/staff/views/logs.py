"""The audit log and the operations log (failures first), both searchable."""

from django.core.paginator import Paginator
from django.shortcuts import render

from panel.staff import selectors
from panel.staff.forms import AuditSearchForm, OperationSearchForm
from panel.staff.permissions import staff_required


def _query(request) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@staff_required
def audit_log(request):
    form = AuditSearchForm(request.GET or None)
    entries = selectors.search_audit(**(form.cleaned_data if form.is_valid() else {}))
    page = Paginator(entries, 100).get_page(request.GET.get("page"))
    return render(request, "staff/logs/audit.html", {"form": form, "page": page, "query": _query(request)})


@staff_required
def operation_log(request):
    form = OperationSearchForm(request.GET or None)
    operations = selectors.search_operations(**(form.cleaned_data if form.is_valid() else {}))
    page = Paginator(operations, 100).get_page(request.GET.get("page"))
    return render(request, "staff/logs/operations.html", {"form": form, "page": page, "query": _query(request)})
