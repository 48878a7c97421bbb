"""The customer panel's pages: instance list, order form, instance page and its actions."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from panel.accounts.models import Customer
from panel.instances.models import Operation
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
from panel.instances.states import ACTION_FROM_STATES, CUSTOMER_ACTIONS
from panel.web.forms import OrderForm

ACTION_LABELS = {
    Operation.Action.START: "Start",
    Operation.Action.STOP: "Stop",
    Operation.Action.REBOOT: "Reboot",
    Operation.Action.REBUILD: "Rebuild",
    Operation.Action.TERMINATE: "Terminate",
}
DESTRUCTIVE = {Operation.Action.REBUILD, Operation.Action.TERMINATE}


@login_required
def instance_list(request):
    instances = visible_instances(request.user).exclude(state="terminated")
    return render(request, "instances/list.html", {"instances": instances})


@login_required
def instance_order(request):
    customer = Customer.objects.filter(user=request.user).first()
    if customer is None:
        messages.error(request, "Only customer accounts can order instances.")
        return redirect("instance-list")
    form = OrderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            instance = order_instance(
                customer=customer,
                plan=form.cleaned_data["plan"],
                image=form.cleaned_data["image"],
                hostname=form.cleaned_data["hostname"],
                actor=request.user,
                source=Operation.Source.UI,
            )
        except InvalidOrder as exc:
            for field, message in exc.errors.items():
                form.add_error(field if field in form.fields else None, message)
        except (QuotaExceeded, CapacityError) as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("instance-detail", pk=instance.pk)
    return render(request, "instances/order.html", {"form": form})


@login_required
def instance_detail(request, pk: int):
    instance = get_visible_instance(request.user, pk)
    actions = [
        {
            "name": action,
            "label": ACTION_LABELS[action],
            "enabled": instance.state in ACTION_FROM_STATES[action],
            "destructive": action in DESTRUCTIVE,
        }
        for action in CUSTOMER_ACTIONS
    ]
    context = {
        "instance": instance,
        "actions": actions,
        "operations": instance.operations.select_related("requested_by")[:20],
        "busy": active_operation(instance),
        "action_states": {a: sorted(ACTION_FROM_STATES[a]) for a in CUSTOMER_ACTIONS},
    }
    return render(request, "instances/detail.html", context)


@login_required
@require_POST
def instance_action(request, pk: int, action: str):
    """Pages post here; the page's script asks for JSON so the console stays open."""
    instance = get_visible_instance(request.user, pk)
    wants_json = "application/json" in request.headers.get("Accept", "")
    if action not in CUSTOMER_ACTIONS:
        if wants_json:
            return JsonResponse({"detail": "That action is not available."}, status=404)
        messages.error(request, "That action is not available.")
        return redirect("instance-detail", pk=pk)
    try:
        operation = request_action(
            instance=instance, action=action, actor=request.user, source=Operation.Source.UI
        )
    except (InstanceStateError, OperationInProgress) as exc:
        detail = f"{exc} The page shows the current state."
        if wants_json:
            return JsonResponse({"detail": detail}, status=409)
        messages.warning(request, detail)
    else:
        if wants_json:
            return JsonResponse({"operation": operation.pk, "state": operation.state}, status=202)
    return redirect("instance-detail", pk=pk)
