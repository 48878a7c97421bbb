"""Issue 11's application containers on the live stack: an OCI image built here (v1 uploaded on
the staff page over real HTTP, v2 given to ``manage.py import_image``, both into the stack's
image store), ordered through the billing API with the order's own command and environment,
its output read live on the console WebSocket, upgraded to v2 and rolled back to v1 with the
same address and data volume, terminated; and a bad archive refused on the upload page with
nothing left in the image store or the catalogue."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from panel.api.services.tokens import create_token
from panel.catalog.models import Image
from panel.instances.models import Instance
from tests.stack.conftest import VENV_BIN
from tests.stack.helpers import ConsoleClient, host_leftovers, session_headers
from tests.workers.images import oci_layouts as L
from workers.images.busybox import build_busybox

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

WAIT = 60  # seconds: an operation on 2 cores shared with the other stacks

# The order's command: the image's entrypoint (/app/start.sh) runs anything but "serve" as
# given, so this shell says which version it is and what it finds on the data volume (writing
# the note the first time only), then hands over to the application itself.
COMMAND = ["sh", "-c",
           'echo "order $WHO v$(cat /app/VERSION) note=$(cat /data/note 2>/dev/null || echo none)"; '
           '[ -f /data/note ] || echo "$NOTE" > /data/note; exec /app/start.sh serve']


def wait_instance(instance_id: int, state: str, stack, timeout: float = WAIT) -> Instance:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instance = Instance.objects.get(pk=instance_id)
        if instance.state == state:
            return instance
        if instance.state == "error":
            break
        time.sleep(0.2)
    pytest.fail(f"instance {instance_id} is {instance.state} ({instance.error}), not {state}\n"
                f"{stack.all_logs()}")


def wait_operation(api: httpx.Client, operation_id: int, stack, timeout: float = WAIT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = api.get(f"operations/{operation_id}/").json()
        if operation["state"] in ("succeeded", "failed"):
            assert operation["state"] == "succeeded", (operation, stack.all_logs())
            return operation
        time.sleep(0.2)
    pytest.fail(f"operation {operation_id} did not finish\n{stack.all_logs()}")


def store_contents(stack) -> set[str]:
    """Everything in the image store's OCI part (blobs, unpacked images, uploads)."""
    oci = stack.image_dir / "oci"
    return {str(p.relative_to(oci)) for p in oci.rglob("*")} if oci.exists() else set()


def addresses_inside(stack, uuid: str) -> str:
    """The container's own view of its addresses (its network namespace's routing table)."""
    pid = stack.host_driver().status(uuid).pid
    return Path(f"/proc/{pid}/net/fib_trie").read_text()


class StaffUpload:
    """The staff import page, over HTTP to the running panel, as a logged-in admin."""

    def __init__(self, stack, user) -> None:
        cookies = dict(h.split("=", 1) for _, h in session_headers(user, stack.url)[:1])
        self.web = httpx.Client(base_url=stack.url, cookies=cookies, timeout=120)
        self.headers = {"Origin": stack.url.rstrip("/"),
                        "Referer": f"{stack.url.rstrip('/')}/staff/images/import/"}

    def post(self, archive: Path, name: str = "") -> httpx.Response:
        page = self.web.get("/staff/images/import/")
        assert page.status_code == 200, page.text[-1000:]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return self.web.post("/staff/images/import/", headers=self.headers,
                             data={"csrfmiddlewaretoken": token, "name": name},
                             files={"archive": (archive.name, archive.read_bytes(), "application/x-tar")})

    def close(self) -> None:
        self.web.close()


def manage_import(stack, path: Path) -> subprocess.CompletedProcess:
    """``manage.py import_image`` against the stack's database and image store."""
    db = connection.settings_dict
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "panel.settings",
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}/{db['NAME']}",
           "BERTH_IMAGE_DIR": str(stack.image_dir), "CONN_MAX_AGE": "0"}
    return subprocess.run([str(VENV_BIN / "python"), "manage.py", "import_image", str(path)],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_import_order_upgrade_rollback_an_application(stack, tmp_path):
    rows = stack.seed()
    busybox = build_busybox(stack.image_dir, lambda _: None)  # already there: the stack's own
    v1_archive = L.tar_directory(L.app_image(tmp_path / "v1", busybox.rootfs, 1).dest,
                                 tmp_path / "app-v1.tar")
    v2_layout = L.app_image(tmp_path / "v2", busybox.rootfs, 2).dest
    admin = get_user_model().objects.create_user("oci-stack-admin", password="x" * 20, is_staff=True)

    # v1: uploaded by an admin; v2: imported on the command line. Both into the stack's store.
    upload = StaffUpload(stack, admin)
    try:
        response = upload.post(v1_archive)
        assert response.status_code == 302, response.text[-2000:]
    finally:
        upload.close()
    imported = manage_import(stack, v2_layout)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "app:v2" in imported.stdout and "runs /app/start.sh serve as app" in imported.stdout
    v1, v2 = Image.objects.get(name="app:v1"), Image.objects.get(name="app:v2")
    for image in (v1, v2):
        assert image.source == Image.Source.OCI and (stack.image_dir / image.path).is_dir()
    assert list((stack.image_dir / "oci" / ".uploads").iterdir()) == []

    # Billing orders the application with its own command and environment.
    key = create_token(name="oci-billing", scope="billing")[1]
    api = httpx.Client(base_url=f"{stack.url.rstrip('/')}/api/v1/",
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)
    note = f"kept-{secrets.token_hex(4)}"
    customer = api.post("customers/", json={"external_id": "oci-c1", "email": "oci@example.com"}).json()
    refused = api.post("services/", json={
        "external_id": "oci-s0", "customer": customer["id"], "plan": rows["plan"].pk,
        "image": v1.pk, "hostname": "shop", "command": " ".join(COMMAND), "env": {"A B": "x"}})
    assert refused.status_code == 400 and refused.headers["Content-Type"] == "application/problem+json"
    assert {"command", "env"} <= set(refused.json()["errors"]), refused.json()
    assert not Instance.objects.exists()
    created = api.post("services/", json={
        "external_id": "oci-s1", "customer": customer["id"], "plan": rows["plan"].pk,
        "image": v1.pk, "hostname": "shop", "command": COMMAND,
        "env": {"WHO": "billing", "NOTE": note}})
    assert created.status_code == 202, created.text
    assert created.json()["command"] == COMMAND
    instance = wait_instance(created.json()["id"], "running", stack)
    uuid = instance.uuid.hex
    [address] = instance.ipv4
    viewer = session_headers(instance.customer.user, stack.url)
    console_url = f"{stack.ws_url}ws/instances/{instance.pk}/console/"
    terminated = False
    try:
        # v1's output, live: the order's command and env, then the image's own process.
        console = ConsoleClient(console_url, viewer)
        try:
            console.read_until(b"order billing v1 note=none", WAIT)
            console.read_until(b"app hello from v1 pid=", WAIT)
            console.read_until(b"starts=1 layer=fresh", WAIT)
            console.read_until(b"tick hello from v1", WAIT)
            console.buffer = b""  # and the next tick, as it is printed
            console.read_until(b"tick hello from v1", WAIT)
        finally:
            console.close()
        assert address in addresses_inside(stack, uuid)
        same = api.post(f"services/{instance.pk}/upgrade", json={"image": v1.pk})
        assert same.status_code == 400 and "already runs" in same.text, same.text

        # Upgrade to v2: the same address, the data volume kept, v2's output on the console.
        response = api.post(f"services/{instance.pk}/upgrade", json={"image": v2.pk})
        assert response.status_code == 202, response.text
        wait_operation(api, response.json()["operation"], stack)
        body = api.get(f"services/{instance.pk}/").json()
        assert (body["image"], body["previous_image"], body["state"]) == (v2.pk, v1.pk, "running")
        assert body["ipv4"] == [address] and body["command"] == COMMAND
        console = ConsoleClient(console_url, viewer)
        try:
            console.read_until(f"order billing v2 note={note}".encode(), WAIT)
            console.read_until(b"app hello from v2 pid=", WAIT)
            console.read_until(b"starts=2 layer=fresh", WAIT)
            console.read_until(b"tick hello from v2", WAIT)
        finally:
            console.close()
        assert address in addresses_inside(stack, uuid)

        # Roll back: v1 again, with what v1 and v2 wrote to the volume.
        response = api.post(f"services/{instance.pk}/rollback")
        assert response.status_code == 202, response.text
        wait_operation(api, response.json()["operation"], stack)
        body = api.get(f"services/{instance.pk}/").json()
        assert (body["image"], body["state"], body["ipv4"]) == (v1.pk, "running", [address])
        console = ConsoleClient(console_url, viewer)
        try:
            console.read_until(f"order billing v1 note={note}".encode(), WAIT)
            console.read_until(b"starts=3 layer=fresh", WAIT)
            console.read_until(b"tick hello from v1", WAIT)
        finally:
            console.close()
        assert address in addresses_inside(stack, uuid)
        pid = stack.host_driver().status(uuid).pid
        starts = Path(f"/proc/{pid}/root/data/starts.log").read_text()
        assert starts == "hello from v1\nhello from v2\nhello from v1\n"
        assert Path(f"/proc/{pid}/root/app/VERSION").read_text() == "1\n"

        response = api.post(f"services/{instance.pk}/terminate")
        assert response.status_code == 202, response.text
        wait_instance(instance.pk, "terminated", stack)
        terminated = True
    finally:
        if not terminated:
            api.post(f"services/{instance.pk}/terminate")
        api.close()
    assert stack.host_driver().status(uuid).state == "absent"
    assert host_leftovers(uuid, f"bv{uuid[:12]}") == {}
    assert (stack.image_dir / v1.path).is_dir() and (stack.image_dir / v2.path).is_dir()


def test_a_bad_archive_is_refused_and_leaves_nothing(stack, tmp_path):
    stack.seed()
    busybox = build_busybox(stack.image_dir, lambda _: None)
    layout = L.app_image(tmp_path / "bad", busybox.rootfs, 3)
    # A layer whose bytes no longer match its digest (a truncated or tampered download).
    [entry] = json.loads((layout.dest / "index.json").read_text())["manifests"]
    layer = json.loads(layout.blob_path(entry).read_bytes())["layers"][-1]
    path = layout.blob_path(layer)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    archive = L.tar_directory(layout.dest, tmp_path / "bad.tar")
    # A layer writing outside the image's root.
    escape = tmp_path / "escape.tar"
    L.tar_directory(L.oci_layout(tmp_path / "escape", [L.layer_tar([L.file("../../evil", "x")])],
                                 name="evil:v1", Cmd=["/evil"]).dest, escape)

    before = store_contents(stack)
    admin = get_user_model().objects.create_user("oci-stack-admin2", password="x" * 20, is_staff=True)
    upload = StaffUpload(stack, admin)
    try:
        for bad, reason in ((archive, "tampered with"), (escape, "path traversal")):
            response = upload.post(bad)
            assert response.status_code == 200, response.text[-2000:]
            message = re.search(r"[^<>]*was not imported:[^<>]*", response.text)
            assert message and bad.name in message.group(0), response.text[-3000:]
            assert reason in message.group(0).lower(), message.group(0)
    finally:
        upload.close()
    assert not Image.objects.filter(name__in=["app:v3", "evil:v1"]).exists()
    assert store_contents(stack) - before <= {".uploads"}
    assert list((stack.image_dir / "oci" / ".uploads").iterdir()) == []
    assert not (stack.image_dir.parent / "evil").exists() and not Path("/var/tmp/evil").exists()
