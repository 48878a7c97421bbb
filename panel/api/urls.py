"""The billing API's URLs (/api/v1/…), as api-contract.md writes them.

The contract writes action URLs without a trailing slash (…/start) and collections with one
(…/services/); each is also answered in the other spelling, left out of the schema, since a
POST cannot follow Django's slash redirect.
"""

from django.urls import path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from panel.api.exceptions import not_found
from panel.api.views import catalogue, customers, operations, services
from panel.backups import api as backups


class IdConverter:
    """A positive id that fits a bigint; anything else is no URL (→ the 404 below)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(IdConverter, "api_id")


def both(route: str, view, name: str) -> list:
    """``route`` in the schema, and the same without/with its trailing slash outside it."""
    other = route[:-1] if route.endswith("/") else route + "/"
    return [
        path(route, view.as_view(), name=name),
        path(other, view.as_view(schema=None)),
    ]


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    *both("plans/", catalogue.PlanList, "api-plans"),
    *both("images/", catalogue.ImageList, "api-images"),
    *both("customers/", customers.CustomerListCreate, "api-customers"),
    *both("customers/<api_id:id>/", customers.CustomerDetail, "api-customer"),
    *both("services/", services.ServiceListCreate, "api-services"),
    *both("services/<api_id:id>/", services.ServiceDetail, "api-service"),
    *both("services/<api_id:id>/start", services.ServiceStart, "api-service-start"),
    *both("services/<api_id:id>/stop", services.ServiceStop, "api-service-stop"),
    *both("services/<api_id:id>/reboot", services.ServiceReboot, "api-service-reboot"),
    *both("services/<api_id:id>/suspend", services.ServiceSuspend, "api-service-suspend"),
    *both("services/<api_id:id>/unsuspend", services.ServiceUnsuspend, "api-service-unsuspend"),
    *both("services/<api_id:id>/change-plan", services.ServiceChangePlan, "api-service-change-plan"),
    *both("services/<api_id:id>/terminate", services.ServiceTerminate, "api-service-terminate"),
    *both("services/<api_id:id>/upgrade", services.ServiceUpgrade, "api-service-upgrade"),
    *both("services/<api_id:id>/rollback", services.ServiceRollback, "api-service-rollback"),
    *both("services/<api_id:id>/sso", services.ServiceSso, "api-service-sso"),
    *both("services/<api_id:id>/console/", services.ServiceConsole, "api-service-console"),
    *both("services/<api_id:id>/usage/", services.ServiceUsage, "api-service-usage"),
    *both("services/<api_id:id>/snapshots/", backups.SnapshotListCreate, "api-service-snapshots"),
    *both("services/<api_id:id>/snapshots/<str:name>/", backups.SnapshotDetail, "api-service-snapshot"),
    *both("services/<api_id:id>/snapshots/<str:name>/restore/", backups.SnapshotRestore,
          "api-service-snapshot-restore"),
    *both("services/<api_id:id>/backups/", backups.BackupListCreate, "api-service-backups"),
    *both("services/<api_id:id>/backups/<api_id:backup_id>/", backups.BackupDetail, "api-service-backup"),
    *both("services/<api_id:id>/backups/<api_id:backup_id>/restore/", backups.BackupRestore,
          "api-service-backup-restore"),
    *both("services/<api_id:id>/backup-schedule/", backups.ScheduleDetail, "api-service-backup-schedule"),
    *both("operations/<api_id:id>/", operations.OperationDetail, "api-operation"),
    re_path(r"^[\s\S]*$", not_found),  # [\s\S]: a URL may carry an encoded newline
]
