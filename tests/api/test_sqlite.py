"""The API on SQLite, `make run`'s database: GET a service reads it with hand-written SQL
(panel/api/selectors.read_service), which must answer there as on PostgreSQL."""

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


def test_get_a_service_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'berth.sqlite3'}",
        "BERTH_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "panel.settings",
    }
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    shell = subprocess.run([sys.executable, "manage.py", "shell", "-c", SCRIPT], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0, shell.stderr
    reads = json.loads(shell.stdout.split("RESULT ", 1)[1])
    for scope in ("billing", "customer"):
        detail = reads[scope]["detail"]
        assert reads[scope]["list"] == [detail]
        assert reads[scope]["missing"] == 404
        assert detail["uuid"] == reads["uuid"] and detail["customer_external_id"] == "cust-sqlite"
        assert detail["host"] and len(detail["ipv4"]) == 1 and detail["state"] == "pending"
        assert detail["created_at"].endswith("Z") and detail["command"] is None

