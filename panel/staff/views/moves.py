"""Moving instances between hosts, for staff: "Move to host…" for one instance, and
evacuating a draining host (one move per instance, shown as a progress list on its page).
The work is in ``panel/instances/services/moves.py``; these views only ask and show."""

from django import forms
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from panel.hosts.models import Host
from panel.instances.models import Instance, Operation
from panel.instances.services import moves
from panel.staff.permissions import staff_required

AUTOMATIC = ""


class MoveForm(forms.Form):
    host = forms.ChoiceField(label="Target host", required=False,
                             help_text="Automatic: placement chooses, as for a new order.")

    def __init__(self, *args, targets: list[tuple[Host, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["host"].choices = [(AUTOMATIC, "Automatic (placement chooses)")] + [
            (str(host.pk), host.name + (f" — {problem}" if problem else "")) for host, problem in targets]

    def target(self) -> int | None:
        value = self.cleaned_data.get("host") or AUTOMATIC
        return int(value) if value != AUTOMATIC else None


def _instance(pk: int) -> Instance:
    instance = Instance.objects.select_related("host", "plan", "image", "customer").filter(pk=pk).first()
    if instance is None:
        raise Http404("No such instance.")
    return instance


@staff_required
def instance_move(request, pk: int):
    instance = _instance(pk)
    targets = moves.move_targets(instance)
    form = MoveForm(request.POST or None, targets=targets)
    if request.method == "POST" and form.is_valid():
        try:
            operation = moves.request_move(instance=instance, actor=request.user, target_host=form.target(),
                                           source=Operation.Source.UI)
        except moves.MoveError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            messages.success(request, f"Moving {instance.hostname} to {operation.params['target_name']}: "
                                      "follow it on the instance's page.")
            return redirect("instance-detail", pk=instance.pk)
    return render(request, "staff/moves/move.html", {
        "instance": instance, "form": form, "targets": targets,
        "running": instance.state == "running",
    })


@staff_required
@require_POST
def host_evacuate(request, pk: int):
    host = Host.objects.filter(pk=pk).first()
    if host is None:
        raise Http404("No such host.")
    try:
        operations = moves.evacuate_host(host, actor=request.user)
    except moves.MoveError as exc:
        messages.error(request, str(exc))
    else:
        refused = sum(op.state == Operation.State.FAILED for op in operations)
        if not operations:
            messages.success(request, f"Nothing to move: {host.name} has no instances.")
        else:
            messages.success(request, f"Evacuating {host.name}: {len(operations) - refused} move(s) queued"
                             + (f", {refused} instance(s) could not be moved now (see why below)." if refused else "."))
    return redirect("staff-host-detail", pk=pk)


@staff_required
@require_GET
def host_moves(request, pk: int):
    """The evacuation's progress list alone, re-fetched by the host page while moves run."""
    host = Host.objects.filter(pk=pk).first()
    if host is None:
        raise Http404("No such host.")
    return render(request, "staff/moves/_progress.html", {"host": host, "evacuation": moves.evacuation_progress(host)})
