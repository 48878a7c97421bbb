"""Plans (sizes, prices, which hosts may run them) and images (build, import, enable, retire)."""

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from panel.catalog import iso, oci, services
from panel.catalog.models import Image, Plan
from panel.catalog.oci_upload import ImageStoreUploadHandler
from panel.staff.forms import BuildImageForm, ImportImageForm, ImportIsoForm, PlanForm
from panel.staff.permissions import staff_required
from workers.images.iso import iso_upload_dir


@staff_required
def plan_list(request):
    plans = Plan.objects.prefetch_related("hosts")
    return render(request, "staff/plans/list.html", {"plans": plans})


@staff_required
def plan_edit(request, pk: int | None = None):
    plan = None
    if pk is not None:
        plan = Plan.objects.filter(pk=pk).first()
        if plan is None:
            raise Http404("No such plan.")
    form = PlanForm(request.POST or None, instance=plan)
    if request.method == "POST" and form.is_valid():
        try:
            saved = services.save_plan(form.save(commit=False), hosts=form.cleaned_data["hosts"], actor=request.user)
        except services.CatalogError as exc:
            form.add_error(exc.field, str(exc))
        else:
            messages.success(request, f"Plan {saved.name} saved.")
            return redirect("staff-plan-list")
    return render(request, "staff/plans/edit.html", {"form": form, "plan": plan})


@staff_required
def image_list(request):
    images = Image.objects.all()
    return render(request, "staff/images/list.html", {"images": images, "build_form": BuildImageForm()})


@staff_required
@require_POST
def image_build(request):
    form = BuildImageForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose an image to build.")
        return redirect("staff-image-list")
    name, kind = form.name_and_kind()
    try:
        services.queue_image_build(name=name, kind=kind, actor=request.user)
    except services.CatalogError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Building {name} ({kind}) on the panel worker; the audit log says when it is done.")
    return redirect("staff-image-list")


@staff_required
@require_POST
def image_switch(request, pk: int, switch: str):
    image = Image.objects.filter(pk=pk).first()
    if image is None or switch not in ("enable", "retire"):
        raise Http404("No such image or action.")
    image = services.set_image_active(image, active=switch == "enable", actor=request.user)
    messages.success(request, f"Image {image} {'enabled' if image.is_active else 'retired'}.")
    return redirect("staff-image-list")


@staff_required
@csrf_exempt  # checked below, once the upload handler is in place (Django's documented way)
def image_import(request):
    request.upload_handlers = [ImageStoreUploadHandler(request)]
    return _image_import(request)


@csrf_protect
def _image_import(request):
    form = ImportImageForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["archive"]
        try:
            image, imported = oci.import_image(
                Path(upload.temporary_file_path()), name=form.cleaned_data["name"] or None,
                actor=request.user, source_label="ui",
            )
        except oci.ImageImportError as exc:
            form.add_error("archive", f"{upload.name} was not imported: {exc}")
        else:
            notes = f" Note: {'; '.join(imported.notes)}." if imported.notes else ""
            messages.success(request, f"Imported {image.name} ({image.size_bytes / 2**20:.1f} MiB)"
                                      f"{' (already in the image store)' if imported.reused else ''}."
                                      f"{notes}")
            return redirect("staff-image-list")
    return render(request, "staff/images/import.html", {"form": form})


@staff_required
@csrf_exempt  # checked below, once the upload handler is in place (Django's documented way)
def image_import_iso(request):
    request.upload_handlers = [ImageStoreUploadHandler(
        request, directory=lambda: iso_upload_dir(settings.BERTH_IMAGE_DIR))]
    return _image_import_iso(request)


@csrf_protect
def _image_import_iso(request):
    form = ImportIsoForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["iso"]
        try:
            image, stored = iso.import_iso(
                Path(upload.temporary_file_path()), name=form.cleaned_data["name"],
                sha256=form.cleaned_data["sha256"], actor=request.user, source_label="ui",
                upload=True,
            )
        except iso.IsoImportError as exc:
            form.add_error(exc.field, f"{upload.name} was not imported: {exc}")
        else:
            messages.success(request, f"Imported installer ISO {image.name} "
                                      f"({image.size_bytes / 2**20:.1f} MiB, {image.checksum[:19]}…"
                                      f"{', checksum verified' if form.cleaned_data['sha256'] else ''})"
                                      f"{' (already in the image store)' if stored.reused else ''}.")
            return redirect("staff-image-list")
    return render(request, "staff/images/import_iso.html", {"form": form})
