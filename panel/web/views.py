"""The customer panel's instance pages: the list, the order form, an instance's page with its
live parts (summary, history, usage) and its actions."""

from __future__ import annotations

import shlex
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET

from panel.accounts.selectors import customer_of, quota_usage
from panel.accounts.services import site_settings
from panel.catalog.models import Image, InstanceKind, Plan
from panel.catalog.selectors import orderable_images
from panel.instances.models import Instance, InstanceState, Operation
from panel.instances.selectors import get_visible_instance, visible_instances
from panel.instances.services.actions import active_operation, request_action
from panel.instances.services.errors import (
    CapacityError,
    InstanceStateError,
    InvalidOrder,
    OperationInProgress,
    QuotaExceeded,
)
from panel.instances.services.ordering import order_instance
from panel.instances.states import ACTION_FROM_STATES
from panel.web.forms import (
    ACCESS_KEYS,
    ACCESS_PASSWORD,
    ChangePlanForm,
    ConfirmHostnameForm,
    InstanceFilterForm,
    OrderForm,
    UpgradeForm,
    upgrade_images,
)
from panel.web.selectors import USAGE_WINDOWS, filter_instances, operation_history, usage_series

A = Operation.Action
# The panel adds changing the plan to what customers may do; the order is the buttons' order.
# Upgrade and rollback are for application containers (imported OCI images) only.
PANEL_ACTIONS = (A.START, A.STOP, A.REBOOT, A.CHANGE_PLAN, A.UPGRADE, A.ROLLBACK, A.REBUILD,
                 A.TERMINATE)
ACTION_LABELS = {
    A.START: "Start", A.STOP: "Stop", A.REBOOT: "Reboot", A.CHANGE_PLAN: "Change plan",
    A.UPGRADE: "Upgrade", A.ROLLBACK: "Roll back", A.REBUILD: "Rebuild", A.TERMINATE: "Terminate",
}
# Actions that need a form first: a typed confirmation for those that destroy data.
ACTION_FORMS = {A.REBUILD: ConfirmHostnameForm, A.TERMINATE: ConfirmHostnameForm,
                A.CHANGE_PLAN: ChangePlanForm, A.UPGRADE: UpgradeForm}
DESTRUCTIVE = {A.REBUILD, A.TERMINATE}
PAGE_SIZE = 20
HISTORY_LIMIT = 50


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# --- The list ------------------------------------------------------------------------------

@login_required
def instance_list(request: HttpRequest) -> HttpResponse:
    form = InstanceFilterForm(request.GET or None)
    if form.is_bound:
        form.is_valid()  # a bad value is refused next to its field; the valid ones still filter
    filters = getattr(form, "cleaned_data", {})
    instances = filter_instances(
        visible_instances(request.user),
        q=filters.get("q", ""), state=filters.get("state", ""), kind=filters.get("kind", ""),
    )
    page = Paginator(instances, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("part", None)
    rows = query.copy()
    rows["page"], rows["part"] = str(page.number), "rows"
    context = {
        "form": form, "page": page, "query": query.urlencode(), "rows_url": "?" + rows.urlencode(),
        "page_numbers": page.paginator.get_elided_page_range(page.number),
        "filtered": any(filters.values()),
        "has_any": visible_instances(request.user).exists(),
    }
    if request.GET.get("part") == "rows":  # the page's script refreshes the table with this
        return render(request, "instances/_table.html", context)
    return render(request, "instances/list.html", context)


# --- Ordering ------------------------------------------------------------------------------

def _order_context(form: OrderForm, customer) -> dict:
    quota = quota_usage(customer)
    plans = [
        {"plan": plan, "fits": quota.fits(vcpus=plan.vcpus, memory_mib=plan.memory_mib)}
        for plan in Plan.objects.filter(is_active=True)
    ]
    kinds = [
        {"value": value, "label": label,
         "available": any(p["plan"].kind == value for p in plans)
         and orderable_images(customer).filter(kind=value).exists()}
        for value, label in InstanceKind.choices
    ]
    return {
        "form": form, "customer": customer, "quota": quota, "plans": plans, "kinds": kinds,
        "images": orderable_images(customer),
        "has_apps": orderable_images(customer).filter(source=Image.Source.OCI).exists(),
        "iso_uploads": settings.BERTH_CUSTOMER_ISO_UPLOADS,
        "has_keys": customer.ssh_keys.exists(),
        "ACCESS_KEYS": ACCESS_KEYS, "ACCESS_PASSWORD": ACCESS_PASSWORD,
    }


@login_required
@sensitive_post_parameters("root_password", "root_password_again")
def instance_order(request: HttpRequest) -> HttpResponse:
    customer = customer_of(request.user)
    if customer is None:
        messages.error(request, "Only customer accounts can order instances.")
        return redirect("instance-list")
    if request.method == "POST":
        form = OrderForm(request.POST, customer=customer)
        if form.is_valid():
            try:
                instance = order_instance(
                    customer=customer, actor=request.user, source=Operation.Source.UI,
                    **form.order_arguments(),
                )
            except InvalidOrder as exc:
                for field, message in exc.errors.items():
                    form.add_error(field if field in form.fields else None, message)
                if "order" in exc.errors:  # this form's token is spent: the next post is a new order
                    form.data = form.data.copy()
                    form.data["order_token"] = uuid.uuid4().hex
            except (QuotaExceeded, CapacityError) as exc:
                form.add_error(None, str(exc))
            else:
                return redirect("instance-detail", pk=instance.pk)
    else:
        kind = request.GET.get("kind")
        kind = kind if kind in InstanceKind.values else InstanceKind.CONTAINER
        quota = quota_usage(customer)
        plan = next((p for p in Plan.objects.filter(is_active=True, kind=kind)
                     if quota.fits(vcpus=p.vcpus, memory_mib=p.memory_mib)), None)
        form = OrderForm(customer=customer, initial={
            "kind": kind,
            "plan": plan.pk if plan else None,
            "image": orderable_images(customer).filter(kind=kind).values_list("pk", flat=True).first(),
            "access": ACCESS_KEYS if customer.ssh_keys.exists() else ACCESS_PASSWORD,
            "ssh_keys": list(customer.ssh_keys.values_list("pk", flat=True)[:1]),
            "order_token": uuid.uuid4().hex,
        })
    return render(request, "instances/order.html", _order_context(form, customer))


# --- An instance's page --------------------------------------------------------------------

def _refusal(instance: Instance, user) -> str | None:
    """Why the owner may take no action at all now, or None."""
    if user.is_staff:
        return None
    if instance.state == InstanceState.SUSPENDED:
        return "This instance is suspended; only your provider can lift that. Contact them."
    if instance.customer.is_suspended:
        return "Your account is suspended; contact your provider."
    return None


def _offered(instance: Instance) -> list[str]:
    """The panel's actions that make sense for this instance at all (enabled or not)."""
    hidden = set()
    if not Plan.objects.filter(is_active=True, kind=instance.kind).exclude(pk=instance.plan_id).exists():
        hidden.add(A.CHANGE_PLAN)
    if not instance.image.is_app or not upgrade_images(instance).exists():
        hidden.add(A.UPGRADE)
    if not instance.image.is_app or instance.previous_image_id is None:
        hidden.add(A.ROLLBACK)
    return [action for action in PANEL_ACTIONS if action not in hidden]


def _action_forms(instance: Instance) -> dict:
    offered = _offered(instance)
    return {action: form_class(instance=instance, auto_id=f"id_{action}_%s")
            for action, form_class in ACTION_FORMS.items() if action in offered}


def _actions(instance: Instance, busy: Operation | None) -> list[dict]:
    return [
        {
            "name": action,
            "label": (f"Roll back to {instance.previous_image.name}" if action == A.ROLLBACK
                      else ACTION_LABELS[action]),
            "enabled": busy is None and instance.state in ACTION_FROM_STATES[action],
            "destructive": action in DESTRUCTIVE,
            "needs_form": action in ACTION_FORMS,
        }
        for action in _offered(instance)
    ]


def _summary_context(instance: Instance, user) -> dict:
    context = {
        "instance": instance,
        "refusal": _refusal(instance, user),
        "support_email": site_settings().support_email,
    }
    if instance.image.is_app:  # what the container runs: the image's command or the order's
        config = instance.image.config
        argv = config.get("entrypoint", []) + (instance.app_command or config.get("cmd", []))
        context["app_runs"] = shlex.join(argv)
    return context


@login_required
def instance_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instance = get_visible_instance(request.user, pk)
    busy = active_operation(instance)
    context = {
        **_summary_context(instance, request.user),
        "actions": _actions(instance, busy),
        "action_forms": _action_forms(instance),
        "busy": busy,
        "history": operation_history(instance, request.user, limit=HISTORY_LIMIT),
        "action_states": {a: sorted(ACTION_FROM_STATES[a]) for a in PANEL_ACTIONS},
        "windows": list(USAGE_WINDOWS),
    }
    return render(request, "instances/detail.html", context)


PARTS = {"summary": "instances/_summary.html", "history": "instances/_history.html"}


@login_required
@require_GET
def instance_part(request: HttpRequest, pk: int, part: str) -> HttpResponse:
    """One part of the instance page, re-rendered when a live event says it changed."""
    if part not in PARTS:
        raise Http404("No such part.")
    instance = get_visible_instance(request.user, pk)
    context = _summary_context(instance, request.user)
    if part == "history":
        context["history"] = operation_history(instance, request.user, limit=HISTORY_LIMIT)
    return render(request, PARTS[part], context)


@login_required
@require_GET
def instance_usage(request: HttpRequest, pk: int) -> JsonResponse:
    instance = get_visible_instance(request.user, pk)
    window = request.GET.get("window", "hour")
    if window not in USAGE_WINDOWS:
        return JsonResponse({"detail": f"window must be one of: {', '.join(USAGE_WINDOWS)}."}, status=400)
    return JsonResponse(usage_series(instance, window=window))


def _answer(request: HttpRequest, instance: Instance, *, status: int, detail: str,
            errors: dict | None = None, level: int = messages.WARNING) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"detail": detail, **({"errors": errors} if errors else {})}, status=status)
    messages.add_message(request, level, detail)
    return redirect("instance-detail", pk=instance.pk)


@login_required
def instance_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Actions post here; the page's script asks for JSON so the console stays open. Without
    script, an action that needs a confirmation or a choice shows its form on a page first."""
    instance = get_visible_instance(request.user, pk)
    if action not in PANEL_ACTIONS:
        if _wants_json(request):
            return JsonResponse({"detail": "That action is not available."}, status=404)
        raise Http404("That action is not available.")
    label = ACTION_LABELS[action]
    form_class = ACTION_FORMS.get(action)
    form = None
    if form_class is not None:
        form = form_class(request.POST if request.method == "POST" else None, instance=instance)
    if request.method != "POST":
        if form is None:
            return redirect("instance-detail", pk=pk)
        return render(request, "instances/confirm_action.html",
                      {"instance": instance, "action": action, "label": label, "form": form,
                       "destructive": action in DESTRUCTIVE})
    refusal = _refusal(instance, request.user)
    if refusal:
        return _answer(request, instance, status=409, detail=refusal)
    if form is not None and not form.is_valid():
        if _wants_json(request):
            errors = {field: [str(e) for e in errs] for field, errs in form.errors.items()}
            return JsonResponse({"detail": next(iter(errors.values()))[0], "errors": errors}, status=400)
        return render(request, "instances/confirm_action.html",
                      {"instance": instance, "action": action, "label": label, "form": form,
                       "destructive": action in DESTRUCTIVE})
    try:
        operation = request_action(
            instance=instance, action=action, actor=request.user, source=Operation.Source.UI,
            params=form.params() if form is not None else None,
        )
    except (InstanceStateError, OperationInProgress) as exc:
        return _answer(request, instance, status=409, detail=f"{exc} The page shows the current state.")
    except InvalidOrder as exc:
        return _answer(request, instance, status=400, detail=" ".join(exc.errors.values()),
                       errors={k: [v] for k, v in exc.errors.items()})
    except (QuotaExceeded, CapacityError) as exc:
        return _answer(request, instance, status=409, detail=str(exc))
    if _wants_json(request):
        return JsonResponse({"operation": operation.pk, "state": operation.state}, status=202)
    messages.success(request, f"{label} requested.")
    return redirect("instance-detail", pk=pk)
