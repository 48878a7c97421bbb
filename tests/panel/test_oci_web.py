"""Application images in the browser pages: ordering with a command and environment, the
upgrade dialog and the rollback button on the instance page, and the staff page that imports
an uploaded archive into the image store."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from panel.catalog.models import Image
from panel.instances.models import Instance
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from tests.panel.test_oci import finish, tiny_layout
from tests.workers.images import oci_layouts as L

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(settings, tmp_path):
    settings.BERTH_IMAGE_DIR = tmp_path / "images"
    return settings.BERTH_IMAGE_DIR


@pytest.fixture
def app_images(store, tmp_path):
    from panel.catalog.oci import import_image

    return (import_image(tiny_layout(tmp_path / "v1", "one").dest)[0],
            import_image(tiny_layout(tmp_path / "v2", "two", name="shop:v2").dest)[0])


@pytest.fixture
def logged_in(client, customer):
    client.force_login(customer.user)
    return client


def order_data(plan, image, **changes):
    data = {"kind": plan.kind, "plan": plan.pk, "image": image.pk, "hostname": "shop",
            "access": "password", "root_password": "a long enough secret",
            "root_password_again": "a long enough secret", "order_token": "t-1"}
    data.update(changes)
    return data


def test_the_order_page_offers_application_options(logged_in, plan, image, host, app_images):
    body = logged_in.get(reverse("instance-order")).content.decode()
    assert 'id="app-step"' in body and 'name="command"' in body and 'name="env"' in body
    assert "shop:v1" in body and "application, listens on 8080/tcp" in body


def test_order_an_application_with_a_command_and_env(logged_in, customer, plan, host, app_images):
    response = logged_in.post(reverse("instance-order"), order_data(
        plan, app_images[0], command="sh -c 'echo \"$GREETING\" here'",
        env="GREETING=from the form\n\nEMPTY=\nURL=http://x/?a=b"))
    instance = Instance.objects.get(customer=customer)
    assert response.status_code == 302 and response["Location"] == f"/instances/{instance.pk}/"
    assert instance.app_command == ["sh", "-c", 'echo "$GREETING" here']
    assert instance.app_env == {"GREETING": "from the form", "EMPTY": "", "URL": "http://x/?a=b"}


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"command": "sh -c 'unclosed"}, "command", "A quotation mark is not closed"),
    ({"env": "GOOD=1\nno equals sign"}, "env", "Line 2 is not NAME=value."),
    ({"env": "9LIVES=x"}, "env", "'9LIVES' is not a variable name"),
])
def test_bad_application_options_are_shown_next_to_their_field(logged_in, customer, plan, host,
                                                               app_images, changes, field, message):
    response = logged_in.post(reverse("instance-order"), order_data(plan, app_images[0], **changes))
    assert response.status_code == 200 and message in response.context["form"].errors[field][0]
    assert 'id="app-step" open' in response.content.decode()
    assert not Instance.objects.filter(customer=customer).exists()


def test_a_system_image_takes_no_command(logged_in, customer, plan, image, host, app_images):
    response = logged_in.post(reverse("instance-order"), order_data(plan, image, command="sh"))
    assert "only application images" in response.context["form"].errors["command"][0]
    assert not Instance.objects.filter(customer=customer).exists()


@pytest.fixture
def app(customer, plan, host, app_images, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=app_images[0], hostname="shop")
    finish(instance.operations.get())
    instance.refresh_from_db()
    return instance


def test_the_instance_page_offers_upgrade_then_rollback(logged_in, app, app_images):
    v1, v2 = app_images
    url = reverse("instance-detail", args=[app.pk])
    body = logged_in.get(url).content.decode()
    assert 'data-action="upgrade"' in body and '<dialog id="dialog-upgrade"' in body
    assert f'value="{v2.pk}"' in body and "shop:v2" in body and 'data-action="rollback"' not in body
    assert "<code>/app/run serve</code>" in body and "/data" in body
    response = logged_in.post(reverse("instance-action", args=[app.pk, "upgrade"]),
                              {"image": v2.pk}, HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    finish(app.operations.latest("created_at"))
    body = logged_in.get(url).content.decode()
    assert "Roll back to shop:v1" in body and "before: shop:v1" in body
    response = logged_in.post(reverse("instance-action", args=[app.pk, "rollback"]),
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 202
    finish(app.operations.latest("created_at"))
    app.refresh_from_db()
    assert app.image_id == v1.pk


def test_an_upgrade_without_a_choice_says_so(logged_in, app, app_images):
    response = logged_in.post(reverse("instance-action", args=[app.pk, "upgrade"]), {},
                              HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert response.json()["errors"]["image"] == ["Choose the image to run."]
    page = logged_in.post(reverse("instance-action", args=[app.pk, "upgrade"]), {"image": 999})
    assert page.status_code == 200 and "Choose one of the images listed." in page.content.decode()


def test_a_system_container_has_no_upgrade(logged_in, customer, plan, image, host, sent_tasks, app_images):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="plain")
    finish(instance.operations.get())
    body = logged_in.get(reverse("instance-detail", args=[instance.pk])).content.decode()
    assert 'data-action="upgrade"' not in body and 'dialog-upgrade' not in body
    response = logged_in.post(reverse("instance-action", args=[instance.pk, "upgrade"]),
                              {"image": app_images[0].pk}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and "system image" in response.json()["detail"]


# --- the staff import page ------------------------------------------------------------------

@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("img-admin", password="x" * 20, is_staff=True)
    client.force_login(user)
    return client


def archive_bytes(tmp_path, greeting="hi", name="shop:v1") -> bytes:
    return L.tar_directory(tiny_layout(tmp_path / greeting, greeting, name=name).dest,
                           tmp_path / f"{greeting}.tar").read_bytes()


def test_staff_import_an_uploaded_archive(staff, store, tmp_path):
    assert staff.get(reverse("staff-image-import")).status_code == 200
    upload = SimpleUploadedFile("shop.tar", archive_bytes(tmp_path), "application/x-tar")
    response = staff.post(reverse("staff-image-import"), {"archive": upload, "name": "web/shop:1"})
    assert response.status_code == 302 and response["Location"] == reverse("staff-image-list")
    image = Image.objects.get(name="web/shop:1")
    assert image.is_app and (store / image.path / "rootfs/app/run").is_file()
    # the upload went to the image store, and is gone once the request ended
    assert list((store / "oci" / ".uploads").iterdir()) == []
    listing = staff.get(reverse("staff-image-list")).content.decode()
    assert "web/shop:1 <span class=\"help\">(application)</span>" in listing


def test_staff_import_refusal_is_shown_and_leaves_nothing(staff, store, tmp_path):
    layout = tiny_layout(tmp_path / "l", "hi")
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    blob = layout.blob_path(manifest["layers"][0])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, another digest
    blob.write_bytes(bytes(data))
    archive = L.tar_directory(layout.dest, tmp_path / "bad.tar").read_bytes()
    upload = SimpleUploadedFile("bad.tar", archive, "application/x-tar")
    response = staff.post(reverse("staff-image-import"), {"archive": upload})
    assert response.status_code == 200
    error = response.context["form"].errors["archive"][0]
    assert error.startswith("bad.tar was not imported:") and "digest" in error
    assert not Image.objects.exists()
    assert [p.name for p in (store / "oci").iterdir()] == [".uploads"]
    assert list((store / "oci" / ".uploads").iterdir()) == []


def test_customers_cannot_import(logged_in, store, tmp_path):
    upload = SimpleUploadedFile("shop.tar", archive_bytes(tmp_path), "application/x-tar")
    assert logged_in.post(reverse("staff-image-import"), {"archive": upload}).status_code == 403
    assert not Image.objects.exists()


def test_the_import_form_needs_a_file(staff, store):
    response = staff.post(reverse("staff-image-import"), {"name": "x:1", "archive": io.BytesIO(b"")})
    assert response.status_code == 200 and response.context["form"].errors["archive"]


def test_results_module_is_untouched_by_failures_of_other_actions(app):
    """A failed stop of an application container does not touch its images."""
    op = app.operations.create(action="stop")
    results.record_operation_finished(op.pk, ok=False, error="x", power_state="running")
    app.refresh_from_db()
    assert app.image.name == "shop:v1" and app.previous_image is None
