"""A customer's own installer ISOs (when the site allows them: BERTH_CUSTOMER_ISO_UPLOADS): the
list and the upload, received straight into the image store. An ISO added here can be ordered
by its owner only."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from panel.accounts.selectors import customer_of
from panel.catalog import iso
from panel.catalog.oci_upload import ImageStoreUploadHandler
from panel.catalog.selectors import private_isos
from panel.staff.forms import ImportIsoForm
from workers.images.iso import iso_upload_dir


def _customer(request):
    if not settings.BERTH_CUSTOMER_ISO_UPLOADS:
        raise Http404("Adding your own ISOs is not enabled on this site.")
    customer = customer_of(request.user)
    if customer is None:
        raise Http404("Only customer accounts have their own ISOs.")
    return customer


@login_required
@csrf_exempt  # checked below, once the upload handler is in place (Django's documented way)
def iso_list(request):
    customer = _customer(request)  # before the body is read: nothing is received otherwise
    if request.method == "POST":
        request.upload_handlers = [ImageStoreUploadHandler(
            request, directory=lambda: iso_upload_dir(settings.BERTH_IMAGE_DIR))]
    return _iso_list(request, customer)


@csrf_protect
def _iso_list(request, customer):
    form = ImportIsoForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["iso"]
        try:
            image, _stored = iso.import_iso(
                Path(upload.temporary_file_path()), name=form.cleaned_data["name"],
                sha256=form.cleaned_data["sha256"], actor=request.user, source_label="ui",
                upload=True, owner=customer,
            )
        except iso.IsoImportError as exc:
            form.add_error(exc.field, f"{upload.name} was not added: {exc}")
        else:
            messages.success(request, f"Added {image.name} ({image.size_bytes / 2**20:.1f} MiB"
                                      f"{', checksum verified' if form.cleaned_data['sha256'] else ''}):"
                                      " choose it when you order a VM.")
            return redirect("iso-list")
    return render(request, "instances/isos.html", {
        "form": form, "isos": private_isos(customer),
        "limit": settings.BERTH_CUSTOMER_ISO_MAX, "max_mib": settings.BERTH_CUSTOMER_ISO_MAX_MIB,
    })
