"""Host pages: the fleet list, enrolling a host (its commands and credential shown once), a
host's page with live capacity, and the admin's switches."""

from django.contrib import messages
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from panel.hosts import services
from panel.hosts.credentials import CredentialError, issue_credential, redis_username
from panel.hosts.models import Host, PlacementPolicy
from panel.hosts.selectors import fleet_capacity, instance_display_state
from panel.instances.services.moves import evacuation_progress
from panel.staff.forms import EnrolHostForm, HostSettingsForm, WeigherForm
from panel.staff.permissions import staff_required
from panel.staff.selectors import filter_instances, placement_failures, search_operations

GRAPH_POINTS = 240  # an hour of samples at one per 15 s


@staff_required
def host_list(request):
    context = {
        "capacities": fleet_capacity(),
        "weigher_form": WeigherForm(initial={"weigher": PlacementPolicy.current().weigher}),
    }
    return render(request, "staff/hosts/list.html", context)


@staff_required
@never_cache
def host_enrol(request):
    form = EnrolHostForm(request.POST or None, initial={"uid_base": services.suggest_uid_base()})
    if request.method == "POST" and form.is_valid():
        try:
            host, secret = services.enrol_host(
                name=form.cleaned_data["name"], network=form.cleaned_data["network"],
                bridge=form.cleaned_data["bridge"], state_dir=form.cleaned_data["state_dir"] or None,
                uid_base=form.cleaned_data["uid_base"], actor=request.user,
            )
        except services.HostError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        except CredentialError as exc:
            form.add_error(None, str(exc))
        else:
            return _show_credential(request, host, secret, enrolled=True)
    return render(request, "staff/hosts/enrol.html", {"form": form})


def _show_credential(request, host: Host, secret: str, *, enrolled: bool):
    """The one page that ever shows the secret: rendered, never stored, never cached."""
    context = {
        "host": host,
        "enrolled": enrolled,
        "commands": services.host_commands(host, secret=secret),
        "redis_user": redis_username(host.name),
    }
    response = render(request, "staff/hosts/credential.html", context)
    response["Cache-Control"] = "no-store"
    return response


def _host(pk: int) -> Host:
    host = Host.objects.select_related("ip_pool").filter(pk=pk).first()
    if host is None:
        raise Http404("No such host.")
    return host


@staff_required
def host_detail(request, pk: int):
    host = _host(pk)
    [capacity] = fleet_capacity(Host.objects.filter(pk=pk))
    instances = list(filter_instances(host=host)[:200])
    for instance in instances:
        instance.display_state = instance_display_state(instance)
    operations = search_operations(host=host)
    context = {
        "host": host,
        "capacity": capacity,
        "instances": instances,
        "live_count": host.instances.live().count(),
        "operations": operations[:20],
        "errors": operations.filter(state="failed")[:10],
        "placement_failures": placement_failures(host=host)[:10],
        "orphans": (host.facts or {}).get("orphans", []),
        "addresses": host.ip_pool.addresses.select_related("instance").order_by("id") if hasattr(host, "ip_pool") else [],
        "settings_form": HostSettingsForm(instance=host),
        "facts": host.facts or {},
        "evacuation": evacuation_progress(host),
    }
    return render(request, "staff/hosts/detail.html", context)


@staff_required
def host_live(request, pk: int):
    """Capacity and the graph's points, for the host page's live bars (fetched on host events)."""
    host = _host(pk)
    [capacity] = fleet_capacity(Host.objects.filter(pk=pk))
    samples = list(host.samples.order_by("-at")[:GRAPH_POINTS])[::-1]
    return JsonResponse({
        **capacity.as_dict(),
        "last_heartbeat": host.last_heartbeat.isoformat() if host.last_heartbeat else None,
        "seconds_since_heartbeat": (timezone.now() - host.last_heartbeat).total_seconds() if host.last_heartbeat else None,
        "samples": [
            {"at": s.at.isoformat(), "load1": s.load1, "memory_used_mib": s.memory_used_mib,
             "instances_running": s.instances_running}
            for s in samples
        ],
    })


@staff_required
def fleet_live(request):
    return JsonResponse({"hosts": [c.as_dict() for c in fleet_capacity()]})


SWITCHES = {
    "enable": lambda host, user: services.set_enabled(host, enabled=True, actor=user),
    "disable": lambda host, user: services.set_enabled(host, enabled=False, actor=user),
    "drain": lambda host, user: services.set_draining(host, draining=True, actor=user),
    "undrain": lambda host, user: services.set_draining(host, draining=False, actor=user),
}


@staff_required
@require_POST
def host_switch(request, pk: int, switch: str):
    host = _host(pk)
    if switch not in SWITCHES:
        raise Http404("No such action.")
    host = SWITCHES[switch](host, request.user)
    state = "disabled" if not host.is_enabled else "draining" if host.is_draining else "enabled"
    messages.success(request, f"Host {host.name} is {state}.")
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        return redirect(back)
    return redirect("staff-host-detail", pk=host.pk)


@staff_required
@require_POST
def host_settings(request, pk: int):
    host = _host(pk)
    form = HostSettingsForm(request.POST, instance=Host.objects.get(pk=pk))
    if form.is_valid():
        services.update_host_settings(
            host, cpu_overcommit=form.cleaned_data["cpu_overcommit"],
            memory_overcommit=form.cleaned_data["memory_overcommit"], notes=form.cleaned_data["notes"],
            actor=request.user,
        )
        messages.success(request, f"Settings of {host.name} saved.")
        return redirect("staff-host-detail", pk=pk)
    messages.error(request, "Settings not saved: " + "; ".join(
        f"{form.fields[f].label}: {' '.join(e)}" for f, e in form.errors.items()))
    return redirect("staff-host-detail", pk=pk)


@staff_required
@require_POST
@never_cache
def host_rotate(request, pk: int):
    host = _host(pk)
    try:
        secret = issue_credential(host, actor=request.user)
    except CredentialError as exc:
        messages.error(request, str(exc))
        return redirect("staff-host-detail", pk=pk)
    return _show_credential(request, host, secret, enrolled=False)


@staff_required
@require_POST
def placement_policy(request):
    form = WeigherForm(request.POST)
    if form.is_valid():
        services.set_weigher(weigher=form.cleaned_data["weigher"], actor=request.user)
        messages.success(request, f"New instances are placed by {form.cleaned_data['weigher']}.")
    else:
        messages.error(request, "Choose spread or pack.")
    return redirect("staff-host-list")

