"""The admin's dashboard: fleet capacity used and free, instances by state, failed operations
of the last day, hosts offline, orders that could not be placed."""

from django.shortcuts import render

from panel.instances.models import InstanceState
from panel.staff import selectors
from panel.staff.permissions import staff_required


@staff_required
def dashboard(request):
    data = selectors.dashboard()
    states = [*InstanceState.values, "unknown"]
    data["state_rows"] = [(s, data["by_state"].get(s, 0)) for s in states if s != InstanceState.TERMINATED]
    return render(request, "staff/dashboard.html", data)
