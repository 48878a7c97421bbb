"""Issue 11's VMs from an ISO on the live stack: an admin uploads a bootable ISO on the staff
page (real HTTP to the running panel, the file received into the stack's image store), billing
orders a VM from it through the API, and the customer's serial console shows the ISO's own
system booting from the CD-ROM of a VM with an empty disk and no config disk; terminating it
leaves no domain and keeps the ISO in the store."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time

import httpx
import pytest
from django.contrib.auth import get_user_model

from panel.api.services.tokens import create_token
from panel.catalog.models import Image
from panel.instances.models import Instance
from tests.stack.helpers import ConsoleClient, session_headers
from tests.workers.drivers.iso_fixtures import ISO_PROMPT, ISO_READY, build_bootable_iso
from tests.workers.drivers.vm_fixtures import IMAGE_DIR
from workers.drivers.vm.naming import domain_name

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.stack,
              pytest.mark.django_db(transaction=True)]

BOOT = 150  # seconds: SeaBIOS, isolinux and a compressed kernel under TCG on shared cores


def wait_instance(instance_id: int, state: str, stack, timeout: float) -> Instance:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instance = Instance.objects.get(pk=instance_id)
        if instance.state == state:
            return instance
        if instance.state == "error":
            break
        time.sleep(0.3)
    pytest.fail(f"instance {instance_id} is {instance.state}, not {state}\n{stack.all_logs()}")


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=False)


def test_upload_an_iso_order_a_vm_from_it_and_use_its_console(stack, tmp_path):
    rows = stack.seed()
    stack.wait_for_vms()
    iso = build_bootable_iso(tmp_path / "installer.iso", IMAGE_DIR,
                             stack.image_dir / "tiny" / "initrd.img")
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()

    # The admin's upload, through the running panel (so the stack's image store receives it).
    admin = get_user_model().objects.create_user("iso-stack-admin", password="x" * 20, is_staff=True)
    cookies = dict(h.split("=", 1) for _, h in session_headers(admin, stack.url)[:1])
    with httpx.Client(base_url=stack.url, cookies=cookies, timeout=120) as web:
        page = web.get("/staff/images/import-iso/")
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        headers = {"Origin": stack.url.rstrip("/"), "Referer": f"{stack.url.rstrip('/')}/staff/images/import-iso/"}
        refused = web.post("/staff/images/import-iso/", headers=headers, data={
            "csrfmiddlewaretoken": token, "name": "netinst", "sha256": "0" * 64},
            files={"iso": ("installer.iso", iso.read_bytes(), "application/x-iso9660-image")})
        assert refused.status_code == 200 and "Checksum mismatch" in refused.text
        assert not Image.objects.filter(name="netinst").exists()
        assert not (stack.image_dir / "iso" / digest).exists()
        response = web.post("/staff/images/import-iso/", headers=headers, data={
            "csrfmiddlewaretoken": token, "name": "netinst", "sha256": digest},
            files={"iso": ("installer.iso", iso.read_bytes(), "application/x-iso9660-image")})
        assert response.status_code == 302, response.text[-2000:]
    image = Image.objects.get(name="netinst")
    assert image.source == Image.Source.ISO and image.checksum == f"sha256:{digest}"
    stored = stack.image_dir / "iso" / digest / "installer.iso"
    assert stored.read_bytes() == iso.read_bytes()
    assert list((stack.image_dir / "iso" / ".uploads").iterdir()) == []

    # Billing orders a VM from it, as from any image.
    key = create_token(name="iso-billing", scope="billing")[1]
    api = httpx.Client(base_url=f"{stack.url.rstrip('/')}/api/v1/",
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)
    listed = api.get("images/").json()
    listed = listed.get("results", listed) if isinstance(listed, dict) else listed
    assert {"id": image.pk, "name": "netinst", "kind": "vm"}.items() <= next(
        i for i in listed if i["id"] == image.pk).items()
    customer = api.post("customers/", json={"external_id": "iso-c1", "email": "iso@example.com"}).json()
    created = api.post("services/", json={"external_id": "iso-s1", "customer": customer["id"],
                                          "plan": rows["vm_plan"].pk, "image": image.pk,
                                          "hostname": "installer-vm"})
    assert created.status_code == 202, created.text
    instance = wait_instance(created.json()["id"], "running", stack, BOOT)
    uuid = instance.uuid.hex
    name = domain_name(stack.host_driver("vm").host, uuid)
    try:
        xml = virsh("dumpxml", "--inactive", name).stdout
        assert f"<source file='{stored}'" in xml and "device='cdrom'" in xml
        assert "<kernel>" not in xml and "config.iso" not in xml

        # The customer's console: the ISO's system (its hostname is on the ISO's command line,
        # not Berth's) booted from the CD-ROM, with the plan's empty disk and no config disk.
        console = ConsoleClient(f"{stack.ws_url}ws/instances/{instance.pk}/console/",
                                session_headers(instance.customer.user, stack.url))
        try:
            console.read_until(ISO_READY, BOOT)
            console.read_until(ISO_PROMPT, BOOT)
            assert console.run("cat /sys/block/vda/size", timeout=30).split() == ["2097152"]
            assert console.run("ls /sys/block | grep -c vdb", timeout=30).split() == ["0"]
            # Nothing on the disk's first MiB yet: it is the installer's to fill. (The typed line
            # wraps on the 80-column console, so only the output's last line is looked at.)
            empty = console.run("dd if=/dev/vda bs=1M count=1 2>/dev/null|tr -d '\\000'|wc -c",
                                timeout=30)
            assert empty.strip().splitlines()[-1].strip() == "0", empty
        finally:
            console.close()
    finally:
        response = api.post(f"services/{instance.pk}/terminate")
        assert response.status_code == 202, response.text
        wait_instance(instance.pk, "terminated", stack, 120)
        api.close()
    assert virsh("domstate", name).returncode != 0  # no such domain
    assert stored.exists()  # the image stays for the next order
