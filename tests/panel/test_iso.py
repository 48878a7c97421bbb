"""Installer ISOs in the catalogue (issue 11): ``manage.py import_iso`` and the staff upload
check the file (ISO 9660, El Torito for BIOS, the sha256 given), keep it in the image store
and register a VM image; refusals say why and leave nothing behind; ordering one sends the
host the ISO's store path and checksum; the order form asks for no credentials for it."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from panel.audit.models import AuditEntry
from panel.catalog.iso import IsoImportError, import_iso
from panel.catalog.models import Image, InstanceKind
from panel.instances.services.ordering import order_instance
from tests.factories import PlanFactory
from tests.workers.drivers.iso_fixtures import (
    build_data_iso,
    build_small_bootable_iso,
    build_uefi_only_iso,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(settings, tmp_path):
    settings.BERTH_IMAGE_DIR = tmp_path / "images"
    return settings.BERTH_IMAGE_DIR


@pytest.fixture
def small_iso(tmp_path) -> Path:
    return build_small_bootable_iso(tmp_path / "small.iso")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_contents(store: Path) -> list[str]:
    root = store / "iso"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --- the service and the command ------------------------------------------------------------

def test_import_iso_command_verifies_stores_and_registers(store, small_iso):
    out = io.StringIO()
    call_command("import_iso", str(small_iso), "--name", "netinst", "--sha256", sha256(small_iso),
                 stdout=out)
    image = Image.objects.get(name="netinst")
    assert (image.kind, image.source) == (InstanceKind.VM, Image.Source.ISO)
    assert image.checksum == f"sha256:{sha256(small_iso)}" and image.path == f"iso/{sha256(small_iso)}"
    assert (store / image.path / "installer.iso").read_bytes() == small_iso.read_bytes()
    assert image.size_bytes == small_iso.stat().st_size and image.config["volume_id"] == "SMALLBOOT"
    assert "netinst (image #" in out.getvalue() and "(verified)" in out.getvalue()
    entry = AuditEntry.objects.get(action="image.import")
    assert entry.source == "cli" and "given sha256 verified" in entry.message
    # again: the same row, nothing new
    again, stored = import_iso(small_iso, name="netinst")
    assert again.pk == image.pk and stored.reused
    assert Image.objects.count() == 1 and AuditEntry.objects.filter(action="image.import").count() == 1


@pytest.mark.parametrize("case", ["mismatch", "not-iso", "data", "uefi", "missing"])
def test_import_iso_command_refusals_leave_nothing(case, store, small_iso, tmp_path):
    args = ["--name", "refused"]
    if case == "mismatch":
        path, needle = small_iso, "Checksum mismatch: the file's sha256 is " + sha256(small_iso)
        args += ["--sha256", "f" * 64]
    elif case == "not-iso":
        path, needle = tmp_path / "x.img", "this is not an ISO file"
        path.write_bytes(b"\x7fELF" + b"\0" * 100_000)
    elif case == "data":
        path, needle = build_data_iso(tmp_path / "data.iso"), "no El Torito boot record"
    elif case == "uefi":
        path, needle = build_uefi_only_iso(tmp_path / "uefi.iso"), "bootable entries: UEFI"
    else:
        path, needle = tmp_path / "nope.iso", "is not a file"
    with pytest.raises(CommandError, match="was not imported") as exc:
        call_command("import_iso", str(path), *args, stdout=io.StringIO())
    assert needle in str(exc.value)
    assert not Image.objects.exists() and not AuditEntry.objects.exists()
    assert store_contents(store) == []


def test_a_name_taken_by_other_contents_is_refused(store, small_iso, tmp_path):
    Image.objects.create(name="taken", kind=InstanceKind.VM, path="tiny", checksum="sha256:00")
    with pytest.raises(IsoImportError) as exc:
        import_iso(small_iso, name="taken")
    assert exc.value.field == "name" and "already taken by a VM image" in str(exc.value)
    import_iso(small_iso, name="first")
    other = build_small_bootable_iso(tmp_path / "other.iso", volume="OTHER")
    with pytest.raises(IsoImportError, match="already taken by an installer ISO"):
        import_iso(other, name="first")
    assert store_contents(store) == [sha256(small_iso), f"{sha256(small_iso)}/installer.iso",
                                     f"{sha256(small_iso)}/metadata.json"]


# --- the staff page -------------------------------------------------------------------------

@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("iso-admin", password="x" * 20, is_staff=True)
    client.force_login(user)
    return client


def upload(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes(), "application/x-iso9660-image")


def test_staff_upload_an_iso(staff, store, small_iso):
    page = staff.get(reverse("staff-image-import-iso")).content.decode()
    assert 'name="sha256"' in page and 'enctype="multipart/form-data"' in page
    response = staff.post(reverse("staff-image-import-iso"), {
        "iso": upload(small_iso), "name": "debian-netinst", "sha256": f"sha256:{sha256(small_iso)}"})
    assert response.status_code == 302 and response["Location"] == reverse("staff-image-list")
    image = Image.objects.get(name="debian-netinst")
    assert image.source == Image.Source.ISO and image.kind == InstanceKind.VM
    assert (store / image.path / "installer.iso").read_bytes() == small_iso.read_bytes()
    # received into the store's own upload directory, and gone once the request ended
    assert list((store / "iso" / ".uploads").iterdir()) == []
    listing = staff.get(reverse("staff-image-list")).content.decode()
    assert 'debian-netinst <span class="help">(installer ISO)</span>' in listing
    assert "Add an installer ISO" in listing


@pytest.mark.parametrize("case", ["not-iso", "data", "mismatch", "bad-sha", "no-name", "no-file"])
def test_staff_upload_refusals_are_shown_next_to_the_field(case, staff, store, small_iso, tmp_path):
    data = {"name": "x", "iso": upload(small_iso), "sha256": ""}
    if case == "not-iso":
        bogus = tmp_path / "photo.iso"
        bogus.write_bytes(b"\x89PNG" + b"\0" * 50_000)
        data["iso"], field, needle = upload(bogus), "iso", "photo.iso was not imported: No ISO 9660"
    elif case == "data":
        data["iso"], field, needle = upload(build_data_iso(tmp_path / "d.iso")), "iso", "no El Torito"
    elif case == "mismatch":
        data["sha256"], field, needle = "0" * 64, "sha256", "Checksum mismatch"
    elif case == "bad-sha":
        data["sha256"], field, needle = "md5:abc", "sha256", "64 hexadecimal digits"
    elif case == "no-name":
        data["name"], field, needle = "", "name", "Give the image a name."
    else:
        data["iso"], field, needle = io.BytesIO(b""), "iso", "The file is empty"
    response = staff.post(reverse("staff-image-import-iso"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and needle in errors[field][0], errors
    assert needle.split(":")[0] in response.content.decode()
    assert not Image.objects.exists()
    assert [p for p in store_contents(store) if p != ".uploads"] == []


def test_customers_cannot_upload_isos(client, customer, store, small_iso):
    client.force_login(customer.user)
    response = client.post(reverse("staff-image-import-iso"), {"iso": upload(small_iso), "name": "x"})
    assert response.status_code == 403 and not Image.objects.exists()


# --- ordering -------------------------------------------------------------------------------

@pytest.fixture
def iso_image(store, small_iso):
    return import_iso(small_iso, name="installer")[0]


def test_ordering_an_iso_sends_its_store_path_and_checksum(customer, host, iso_image, sent_tasks,
                                                           django_capture_on_commit_callbacks):
    plan = PlanFactory(kind=InstanceKind.VM, disk_gib=5)
    with django_capture_on_commit_callbacks(execute=True):
        instance = order_instance(customer=customer, plan=plan, image=iso_image, hostname="inst")
    (task,) = sent_tasks
    spec = task["kwargs"]["spec"]
    assert spec["kind"] == "vm" and spec["disk_gib"] == 5
    assert spec["image"] == {"name": "installer", "path": iso_image.path, "checksum": iso_image.checksum}
    assert instance.image == iso_image


def test_the_order_form_needs_no_credentials_for_an_iso(client, customer, host, iso_image, sent_tasks,
                                                        django_capture_on_commit_callbacks):
    plan = PlanFactory(kind=InstanceKind.VM)
    client.force_login(customer.user)
    base = {"kind": "vm", "plan": plan.pk, "hostname": "installme", "order_token": "iso-1"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("instance-order"), {**base, "image": iso_image.pk})
    assert response.status_code == 302, response.context["form"].errors
    assert len(sent_tasks) == 1
    # a system image still needs a way to log in
    tiny = Image.objects.create(name="tiny", kind=InstanceKind.VM, path="tiny")
    response = client.post(reverse("instance-order"), {**base, "image": tiny.pk, "order_token": "iso-2"})
    assert response.status_code == 200
    assert response.context["form"].errors["access"] == ["Choose how you will log in."]


# --- a customer's own ISOs (when the site allows them) ----------------------------------------

@pytest.fixture
def customer_isos(settings, store):
    settings.BERTH_CUSTOMER_ISO_UPLOADS = True
    settings.BERTH_CUSTOMER_ISO_MAX = 2
    settings.BERTH_CUSTOMER_ISO_MAX_MIB = 64
    return settings


def test_customer_isos_are_off_unless_the_site_allows_them(client, customer, store, small_iso):
    client.force_login(customer.user)
    assert client.get(reverse("iso-list")).status_code == 404
    response = client.post(reverse("iso-list"), {"iso": upload(small_iso), "name": "mine"})
    assert response.status_code == 404 and not Image.objects.exists()
    assert not (store / "iso").exists()  # the body was never received
    with pytest.raises(IsoImportError, match="not enabled"):
        import_iso(small_iso, name="mine", owner=customer)
    assert "Add your own installer ISO" not in client.get(reverse("instance-order")).content.decode()


def test_a_customer_adds_an_iso_only_they_can_order(client, customer, other_customer, host,
                                                   customer_isos, small_iso, sent_tasks,
                                                   django_capture_on_commit_callbacks):
    from panel.api.services.tokens import create_token
    from panel.instances.services.errors import InvalidOrder
    from tests.api.conftest import client_for

    client.force_login(customer.user)
    assert "Add your own installer ISO" in client.get(reverse("instance-order")).content.decode()
    response = client.post(reverse("iso-list"), {"iso": upload(small_iso), "name": "my-os",
                                                 "sha256": sha256(small_iso)})
    assert response.status_code == 302
    image = Image.objects.get(name="my-os")
    assert image.owner == customer and image.source == Image.Source.ISO
    assert "my-os" in client.get(reverse("iso-list")).content.decode()
    assert list((store_dir := customer_isos.BERTH_IMAGE_DIR / "iso" / ".uploads").iterdir()) == []
    assert store_dir.parent.joinpath(sha256(small_iso), "installer.iso").exists()

    # Listed for its owner only: order page, API with their token; not billing's shared list.
    page = client.get(reverse("instance-order")).content.decode()
    assert "my-os" in page and "(yours)" in page
    client.force_login(other_customer.user)
    assert "my-os" not in client.get(reverse("instance-order")).content.decode()
    mine = client_for(create_token(name="c", scope="customer", customer=customer)[1])
    theirs = client_for(create_token(name="o", scope="customer", customer=other_customer)[1])
    billing = client_for(create_token(name="b", scope="billing")[1])
    assert image.pk in [i["id"] for i in mine.get("/api/v1/images/").json()]
    assert image.pk not in [i["id"] for i in theirs.get("/api/v1/images/").json()]
    assert image.pk not in [i["id"] for i in billing.get("/api/v1/images/").json()]

    plan = PlanFactory(kind=InstanceKind.VM)
    with pytest.raises(InvalidOrder) as exc:
        order_instance(customer=other_customer, plan=plan, image=image, hostname="nope")
    assert exc.value.errors == {"image": "Choose an image that exists and can be ordered."}
    response = client.post(reverse("instance-order"), {
        "kind": "vm", "plan": plan.pk, "image": image.pk, "hostname": "nope", "order_token": "x1"})
    assert response.status_code == 200 and "image" in response.context["form"].errors
    with django_capture_on_commit_callbacks(execute=True):
        instance = order_instance(customer=customer, plan=plan, image=image, hostname="mine")
    assert instance.image == image and len(sent_tasks) == 1


def test_customer_limits_and_names(client, customer, other_customer, customer_isos, small_iso,
                                   tmp_path):
    import_iso(small_iso, name="taken", owner=other_customer)
    second = build_small_bootable_iso(tmp_path / "second.iso", volume="SECOND")
    client.force_login(customer.user)
    # another customer's name: taken, and nothing more is said about it
    response = client.post(reverse("iso-list"), {"iso": upload(second), "name": "taken"})
    assert response.context["form"].errors["name"] == [
        "second.iso was not added: The name taken is already taken: choose another name."]
    # the same file under another customer's name is not handed over either
    with pytest.raises(IsoImportError, match="already taken: choose another name"):
        import_iso(small_iso, name="taken", owner=customer)
    # size and count limits
    customer_isos.BERTH_CUSTOMER_ISO_MAX_MIB = 0
    response = client.post(reverse("iso-list"), {"iso": upload(second), "name": "big"})
    assert "at most 0 MiB is allowed" in response.context["form"].errors["iso"][0]
    customer_isos.BERTH_CUSTOMER_ISO_MAX_MIB = 64
    import_iso(second, name="one", owner=customer)
    import_iso(small_iso, name="two", owner=customer)
    third = build_small_bootable_iso(tmp_path / "third.iso", volume="THIRD")
    response = client.post(reverse("iso-list"), {"iso": upload(third), "name": "three"})
    assert "You have 2 ISOs already" in response.context["form"].errors["iso"][0]
    assert set(Image.objects.values_list("name", flat=True)) == {"taken", "one", "two"}
    assert sha256(third) not in store_contents(customer_isos.BERTH_IMAGE_DIR)
