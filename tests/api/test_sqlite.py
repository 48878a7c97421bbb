"""The API on SQLite, `make run`'s database: GET a service reads it with hand-written SQL
(panel/api/selectors.read_service), and webhook deliveries are claimed with a correlated
subquery in an UPDATE; both must work there as on PostgreSQL."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs in a `manage.py shell` on a fresh SQLite database: a service with a host and an address,
# read by a billing token and by its customer's token, detail and list.
SCRIPT = """
import json
from rest_framework.test import APIClient
from panel.api.services.tokens import create_token
from panel.instances import dispatch
from panel.instances.models import Operation
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

dispatch.celery_app.send_task = lambda *args, **kwargs: None  # no host runs it
HostFactory()
customer = CustomerFactory(external_id="cust-sqlite")
service = order_instance(customer=customer, plan=PlanFactory(), image=ImageFactory(), hostname="web",
                         source=Operation.Source.API, external_id="svc-sqlite")
reads = {}
for scope, owner in (("billing", None), ("customer", customer)):
    client = APIClient(SERVER_NAME="localhost")
    client.credentials(HTTP_AUTHORIZATION="Bearer " + create_token(name=scope, scope=scope, customer=owner)[1])
    reads[scope] = {"detail": client.get(f"/api/v1/services/{service.pk}/").json(),
                    "list": client.get("/api/v1/services/").json()["results"],
                    "missing": client.get(f"/api/v1/services/{service.pk + 1}/").status_code}
reads["uuid"] = service.uuid.hex
print("RESULT " + json.dumps(reads))
"""


# Two state changes of one service for an endpoint that was switched off: the later delivery
# waits for the earlier one, which is given up on at once and lets it go.
WEBHOOK_SCRIPT = """
import json
from panel.instances import dispatch
from panel.instances.models import InstanceState
from panel.instances.services.ordering import order_instance
from panel.instances.states import transition
from panel.webhooks import services
from panel.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

dispatch.celery_app.send_task = lambda *args, **kwargs: None
HostFactory()
endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")
service = order_instance(customer=CustomerFactory(), plan=PlanFactory(), image=ImageFactory(), hostname="web")
transition(service.pk, InstanceState.PROVISIONING)
WebhookEndpoint.objects.update(is_active=False)
first, second = WebhookDelivery.objects.order_by("pk")
steps = [services.attempt_delivery(delivery_id=second.pk) is None]
steps.append(services.attempt_delivery(delivery_id=first.pk).status)
steps.append(services.attempt_delivery(delivery_id=second.pk).status)
steps.append(services.send_due_deliveries())
print("RESULT " + json.dumps(steps))
"""


def _sqlite_shell(tmp_path, script: str):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'berth.sqlite3'}",
        "BERTH_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "panel.settings",
    }
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    shell = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0, shell.stderr
    return json.loads(shell.stdout.split("RESULT ", 1)[1])


def test_webhook_deliveries_go_in_order_on_sqlite(tmp_path):
    assert _sqlite_shell(tmp_path, WEBHOOK_SCRIPT) == [True, "failed", "failed", 0]


def test_get_a_service_on_sqlite(tmp_path):
    reads = _sqlite_shell(tmp_path, SCRIPT)
    for scope in ("billing", "customer"):
        detail = reads[scope]["detail"]
        assert reads[scope]["list"] == [detail]
        assert reads[scope]["missing"] == 404
        assert detail["uuid"] == reads["uuid"] and detail["customer_external_id"] == "cust-sqlite"
        assert detail["host"] and len(detail["ipv4"]) == 1 and detail["state"] == "pending"
        assert detail["created_at"].endswith("Z") and detail["command"] is None

