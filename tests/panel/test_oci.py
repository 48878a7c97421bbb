"""Application images in the panel: importing one into the catalogue (service and manage.py
import_image), ordering it with a command and environment, and the upgrade and rollback
actions through the state machine (the host's side is the fake of ``sent_tasks``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from panel.audit.models import AuditEntry
from panel.catalog.models import Image
from panel.catalog.oci import ImageImportError, app_option_errors, import_image
from panel.instances.dispatch import build_spec
from panel.instances.models import InstanceState
from panel.instances.services import results
from panel.instances.services.actions import request_action
from panel.instances.services.errors import InstanceStateError, InvalidOrder
from panel.instances.services.ordering import order_instance
from tests.factories import ImageFactory
from tests.workers.images import oci_layouts as L

pytestmark = pytest.mark.django_db
S = InstanceState


def tiny_layout(dest: Path, greeting: str, *, name: str | None = "shop:v1"):
    layer = L.layer_tar([L.directory("app"), L.file("app/run", f"#!/bin/sh\necho {greeting}\n", 0o755)])
    return L.oci_layout(dest, [layer], name=name, Entrypoint=["/app/run"], Cmd=["serve"],
                        Env=[f"GREETING={greeting}"], ExposedPorts={"8080/tcp": {}})


@pytest.fixture
def store(settings, tmp_path):
    settings.BERTH_IMAGE_DIR = tmp_path / "images"
    return settings.BERTH_IMAGE_DIR


@pytest.fixture
def app_images(store, tmp_path):
    v1, _ = import_image(tiny_layout(tmp_path / "v1", "one").dest)
    v2, _ = import_image(tiny_layout(tmp_path / "v2", "two", name="shop:v2").dest)
    return v1, v2


def finish(operation, *, ok=True, power_state="running", error=""):
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=ok, power_state=power_state, error=error)
    operation.refresh_from_db()
    return operation


# --- import ---------------------------------------------------------------------------------

def test_import_registers_an_application_image(store, tmp_path):
    image, imported = import_image(tiny_layout(tmp_path / "l", "hi").dest)
    assert (image.name, image.kind, image.source, image.is_app) == ("shop:v1", "container", "oci", True)
    assert image.digest == imported.image_id and image.path == f"oci/{image.digest.split(':')[1]}"
    assert (store / image.path / "rootfs" / "app" / "run").is_file()
    assert image.config["entrypoint"] == ["/app/run"] and image.config["exposed_ports"] == ["8080/tcp"]
    assert image.size_bytes > 0 and image.checksum.startswith("sha256:")
    entry = AuditEntry.objects.get(action="image.import")
    assert entry.target_id == str(image.pk) and "Imported shop:v1" in entry.message


def test_the_same_import_again_returns_the_same_row(store, tmp_path):
    layout = tiny_layout(tmp_path / "l", "hi")
    first, _ = import_image(layout.dest)
    again, imported = import_image(layout.dest)
    assert again.pk == first.pk and imported.reused
    assert Image.objects.count() == 1 and AuditEntry.objects.filter(action="image.import").count() == 1


def test_a_name_taken_by_other_contents_is_refused_before_unpacking(store, tmp_path):
    import_image(tiny_layout(tmp_path / "a", "first").dest)
    before = sorted(p.name for p in (store / "oci").iterdir())
    with pytest.raises(ImageImportError, match="An image named shop:v1 already exists with other contents"):
        import_image(tiny_layout(tmp_path / "b", "second").dest)
    assert sorted(p.name for p in (store / "oci").iterdir()) == before
    assert Image.objects.count() == 1


def test_a_refused_archive_leaves_no_row_and_no_files(store, tmp_path):
    layout = tiny_layout(tmp_path / "l", "hi")
    manifest = json.loads(layout.blob_path(layout.manifests[0]).read_text())
    layout.blob_path(manifest["layers"][0]).write_bytes(b"not the layer")
    with pytest.raises(ImageImportError, match="layer 1 .* is 13 bytes"):
        import_image(layout.dest)
    assert not Image.objects.exists() and not AuditEntry.objects.filter(action="image.import").exists()
    assert not (store / "oci").exists() or not any((store / "oci").iterdir())


def test_manage_py_import_image(store, tmp_path, capsys):
    archive = L.tar_directory(tiny_layout(tmp_path / "l", "hi", name=None).dest, tmp_path / "a.tar")
    call_command("import_image", str(archive), "--name", "tools/shop:2.0")
    out = capsys.readouterr().out
    assert "tools/shop:2.0 (image #" in out and "runs /app/run serve as root, ports 8080/tcp" in out
    assert Image.objects.get(name="tools/shop:2.0").source == "oci"
    with pytest.raises(CommandError, match="was not imported: the archive does not name its image"):
        call_command("import_image", str(archive))
    (tmp_path / "junk").write_text("junk")
    with pytest.raises(CommandError, match="not a tar archive"):
        call_command("import_image", str(tmp_path / "junk"))


# --- ordering -------------------------------------------------------------------------------

def test_an_application_is_ordered_with_a_command_and_env(customer, plan, host, app_images, sent_tasks,
                                                        django_capture_on_commit_callbacks):
    v1, _ = app_images
    with django_capture_on_commit_callbacks(execute=True):
        instance = order_instance(customer=customer, plan=plan, image=v1, hostname="shop",
                                  command=["/app/run", "once"], env={"GREETING": "ordered", "X_1": "a=b"})
    assert instance.app_command == ["/app/run", "once"]
    spec = sent_tasks[-1]["kwargs"]["spec"]
    assert spec["command"] == ["/app/run", "once"] and spec["env"] == {"GREETING": "ordered", "X_1": "a=b"}
    assert spec["image"]["path"] == v1.path


def test_a_system_image_spec_carries_no_command(customer, plan, image, host, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="plain")
    assert "command" not in build_spec(instance) and "env" not in build_spec(instance)


@pytest.mark.parametrize(("command", "env", "field", "message"), [
    (["x"], None, "command", "is a system image; only application images"),
    (None, {"A": "b"}, "env", "is a system image"),
])
def test_a_system_image_takes_no_command_or_env(customer, plan, image, host, command, env, field, message):
    with pytest.raises(InvalidOrder) as caught:
        order_instance(customer=customer, plan=plan, image=image, hostname="x", command=command, env=env)
    assert message in caught.value.errors[field]
    assert not customer.instances.exists()


@pytest.mark.parametrize(("command", "env", "message"), [
    ([], None, "at least a program"),
    ([""], None, "at least a program"),
    (["a"] * 65, None, "At most 64 arguments"),
    (["a", "b\0c"], None, "NUL character"),
    (["a", "x" * 4097], None, "at most 4096 characters"),
    ("sh -c x", None, "a list of strings"),
    (None, {"1BAD": "x"}, "'1BAD' is not a variable name"),
    (None, {"A-B": "x"}, "is not a variable name"),
    (None, {"A": 1}, "an object of strings"),
    (None, {"A": "x\0"}, "NUL character"),
    (None, {f"V{i}": "x" for i in range(65)}, "At most 64"),
])
def test_app_options_are_checked(app_images, command, env, message):
    errors = app_option_errors(app_images[0], command=command, env=env)
    assert message in " ".join(errors.values())


# --- upgrade and rollback -------------------------------------------------------------------

@pytest.fixture
def app(customer, plan, host, app_images, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=app_images[0], hostname="shop")
    finish(instance.operations.get())
    instance.refresh_from_db()
    return instance


def test_upgrade_switches_the_image_and_keeps_the_previous_one(app, app_images, sent_tasks,
                                                              django_capture_on_commit_callbacks):
    v1, v2 = app_images
    with django_capture_on_commit_callbacks(execute=True):
        op = request_action(instance=app, action="upgrade", params={"image": v2.pk})
    assert op.params == {"image": v2.pk, "previous_image": v1.pk, "kept_previous_image": None,
                         "start": True}
    task = sent_tasks[-1]["kwargs"]
    assert task["action"] == "upgrade" and task["spec"]["image"]["path"] == v2.path
    results.record_operation_started(op.pk)
    app.refresh_from_db()
    assert app.state == S.PROVISIONING
    finish(op)
    app.refresh_from_db()
    assert (app.state, app.image_id, app.previous_image_id) == (S.RUNNING, v2.pk, v1.pk)

    with django_capture_on_commit_callbacks(execute=True):
        op = request_action(instance=app, action="rollback")
    assert sent_tasks[-1]["kwargs"]["spec"]["image"]["path"] == v1.path
    finish(op)
    app.refresh_from_db()  # a rollback is undone by another rollback
    assert (app.state, app.image_id, app.previous_image_id) == (S.RUNNING, v1.pk, v2.pk)


def test_a_failed_upgrade_goes_back_to_the_image_before(app, app_images):
    v1, v2 = app_images
    op = request_action(instance=app, action="upgrade", params={"image": v2.pk})
    finish(op, ok=False, error="shop:v2 did not start: ... shop:v1 runs again", power_state="running")
    app.refresh_from_db()
    assert (app.state, app.image_id, app.previous_image_id) == (S.RUNNING, v1.pk, None)
    op = request_action(instance=app, action="upgrade", params={"image": v2.pk})
    finish(op, ok=False, error="the host is gone", power_state=None)
    app.refresh_from_db()
    assert (app.state, app.image_id, app.error) == (S.ERROR, v1.pk, "the host is gone")
    # from error an upgrade is still possible: the way to fix a broken application
    finish(request_action(instance=app, action="upgrade", params={"image": v2.pk}))
    app.refresh_from_db()
    assert (app.state, app.image_id) == (S.RUNNING, v2.pk)


def test_upgrading_a_stopped_instance_keeps_it_stopped(app, app_images, sent_tasks):
    finish(request_action(instance=app, action="stop"), power_state="stopped")
    op = request_action(instance=app, action="upgrade", params={"image": app_images[1].pk})
    assert op.params["start"] is False
    finish(op, power_state="stopped")
    app.refresh_from_db()
    assert app.state == S.STOPPED and app.image_id == app_images[1].pk


def test_upgrade_refusals_write_nothing(app, app_images, image):
    v1, v2 = app_images
    cases = [({"image": v1.pk}, "already runs shop:v1"), ({"image": image.pk}, "is not an application image"),
             ({"image": 99999}, "Choose an image that exists"), ({"image": "2"}, "Choose an image that exists")]
    for params, message in cases:
        with pytest.raises(InvalidOrder) as caught:
            request_action(instance=app, action="upgrade", params=params)
        assert message in caught.value.errors["image"]
    Image.objects.filter(pk=v2.pk).update(is_active=False)
    with pytest.raises(InvalidOrder, match="Choose an image that exists"):
        request_action(instance=app, action="upgrade", params={"image": v2.pk})
    with pytest.raises(InstanceStateError, match="no earlier image to roll back to"):
        request_action(instance=app, action="rollback")
    app.refresh_from_db()
    assert app.image_id == v1.pk and app.operations.count() == 1


def test_a_system_container_cannot_be_upgraded(customer, plan, image, host, sent_tasks, app_images):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="sys")
    finish(instance.operations.get())
    with pytest.raises(InvalidOrder, match="system image: rebuild reinstalls it"):
        request_action(instance=instance, action="upgrade", params={"image": app_images[0].pk})


def test_rollback_uses_a_retired_previous_image(app, app_images):
    v1, v2 = app_images
    finish(request_action(instance=app, action="upgrade", params={"image": v2.pk}))
    Image.objects.filter(pk=v1.pk).update(is_active=False)  # kept for the instances using it
    finish(request_action(instance=app, action="rollback"))
    app.refresh_from_db()
    assert app.image_id == v1.pk


def test_an_image_in_use_as_previous_cannot_be_deleted(app, app_images):
    from django.db.models import ProtectedError

    finish(request_action(instance=app, action="upgrade", params={"image": app_images[1].pk}))
    with pytest.raises(ProtectedError):
        ImageFactory._meta.model.objects.filter(pk=app_images[0].pk).delete()
