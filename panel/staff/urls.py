"""URLs of the admin pages, under /staff/."""

from django.urls import path

from panel.staff.views import catalog, customers, dashboard, hosts, instances, logs, moves

urlpatterns = [
    path("", dashboard.dashboard, name="staff-dashboard"),
    path("fleet.json", hosts.fleet_live, name="staff-fleet-live"),
    path("hosts/", hosts.host_list, name="staff-host-list"),
    path("hosts/enrol/", hosts.host_enrol, name="staff-host-enrol"),
    path("hosts/placement/", hosts.placement_policy, name="staff-placement-policy"),
    path("hosts/<int:pk>/", hosts.host_detail, name="staff-host-detail"),
    path("hosts/<int:pk>/live.json", hosts.host_live, name="staff-host-live"),
    path("hosts/<int:pk>/settings/", hosts.host_settings, name="staff-host-settings"),
    path("hosts/<int:pk>/credential/", hosts.host_rotate, name="staff-host-rotate"),
    path("hosts/<int:pk>/evacuate/", moves.host_evacuate, name="staff-host-evacuate"),
    path("hosts/<int:pk>/moves/", moves.host_moves, name="staff-host-moves"),
    path("hosts/<int:pk>/<slug:switch>/", hosts.host_switch, name="staff-host-switch"),
    path("plans/", catalog.plan_list, name="staff-plan-list"),
    path("plans/new/", catalog.plan_edit, name="staff-plan-new"),
    path("plans/<int:pk>/", catalog.plan_edit, name="staff-plan-edit"),
    path("images/", catalog.image_list, name="staff-image-list"),
    path("images/build/", catalog.image_build, name="staff-image-build"),
    path("images/import/", catalog.image_import, name="staff-image-import"),
    path("images/import-iso/", catalog.image_import_iso, name="staff-image-import-iso"),
    path("images/<int:pk>/<slug:switch>/", catalog.image_switch, name="staff-image-switch"),
    path("customers/", customers.customer_list, name="staff-customer-list"),
    path("customers/<int:pk>/", customers.customer_detail, name="staff-customer-detail"),
    path("customers/<int:pk>/suspend/", customers.customer_suspend, name="staff-customer-suspend"),
    path("customers/<int:pk>/unsuspend/", customers.customer_unsuspend, name="staff-customer-unsuspend"),
    path("instances/", instances.instance_list, name="staff-instance-list"),
    path("instances/bulk/", instances.instance_bulk, name="staff-instance-bulk"),
    path("instances/<int:pk>/move/", moves.instance_move, name="staff-instance-move"),
    path("audit/", logs.audit_log, name="staff-audit"),
    path("operations/", logs.operation_log, name="staff-operations"),
]
