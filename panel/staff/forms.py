"""Forms of the admin pages: they check input and say what is wrong in words a person understands."""

from __future__ import annotations

import ipaddress
from decimal import Decimal

from django import forms

from panel.accounts.models import Customer
from panel.audit.models import AuditEntry
from panel.catalog.images import known_images
from panel.catalog.models import InstanceKind, Plan
from panel.hosts.models import Host
from panel.hosts.selectors import UNKNOWN
from panel.hosts.services import HOST_NAME_RE
from panel.instances.models import Instance, InstanceState, Operation
from panel.staff.services import BULK_ACTIONS


class EnrolHostForm(forms.Form):
    name = forms.CharField(max_length=40, help_text="Lowercase letters, digits and hyphens, e.g. fra-2.")
    network = forms.CharField(label="IPv4 pool", max_length=43,
                              help_text="The host's instances get addresses from it, e.g. 10.78.0.0/24.")
    bridge = forms.CharField(max_length=15, initial="berth0", help_text="Bridge on the host, at most 15 characters.")
    state_dir = forms.CharField(label="State directory", max_length=500, required=False,
                                help_text="Where the host keeps instances; empty for the default.")
    uid_base = forms.IntegerField(label="First uid", min_value=100_000, max_value=2**32 - 2**26,
                                  help_text="Containers run as unprivileged uids from here on.")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not HOST_NAME_RE.match(name):
            raise forms.ValidationError(
                "Use lowercase letters, digits and hyphens, not starting or ending with a hyphen."
            )
        return name

    def clean_network(self) -> str:
        value = self.cleaned_data["network"].strip()
        try:
            return str(ipaddress.IPv4Network(value, strict=True))
        except ValueError as exc:
            raise forms.ValidationError(f"Not an IPv4 network in CIDR form ({exc}).") from None


class HostSettingsForm(forms.ModelForm):
    class Meta:
        model = Host
        fields = ["cpu_overcommit", "memory_overcommit", "notes"]
        labels = {"cpu_overcommit": "CPU overcommit", "memory_overcommit": "Memory overcommit",
                  "notes": "Maintenance notes"}
        help_texts = {"cpu_overcommit": "vCPUs sold per real CPU (e.g. 4).",
                      "memory_overcommit": "MiB sold per real MiB (1 = none)."}
        widgets = {"notes": forms.Textarea(attrs={"rows": 3})}

    def _ratio(self, field: str) -> Decimal:
        value = self.cleaned_data[field]
        if value is None or not Decimal("0.1") <= value <= Decimal("100"):
            raise forms.ValidationError("Use a ratio between 0.1 and 100.")
        return value

    def clean_cpu_overcommit(self) -> Decimal:
        return self._ratio("cpu_overcommit")

    def clean_memory_overcommit(self) -> Decimal:
        return self._ratio("memory_overcommit")


class WeigherForm(forms.Form):
    weigher = forms.ChoiceField(label="Place new instances by", choices=Host.Weigher.choices)


class PlanForm(forms.ModelForm):
    hosts = forms.ModelMultipleChoiceField(
        queryset=Host.objects.all(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Hosts that may run this plan. None ticked: every host.",
    )

    class Meta:
        model = Plan
        fields = ["name", "kind", "vcpus", "memory_mib", "disk_gib", "pids_max", "price_hourly",
                  "price_monthly", "is_active", "hosts"]
        labels = {"vcpus": "vCPUs", "memory_mib": "Memory (MiB)", "disk_gib": "Disk (GiB)",
                  "pids_max": "Process limit", "is_active": "Can be ordered"}

    def clean(self):
        data = super().clean()
        for field, low, high in (("vcpus", 1, 256), ("memory_mib", 64, 4 * 2**20), ("disk_gib", 1, 65536)):
            value = data.get(field)
            if value is not None and not low <= value <= high:
                self.add_error(field, f"Use a value from {low} to {high}.")
        for field in ("price_hourly", "price_monthly"):
            value = data.get(field)
            if value is not None and value < 0:
                self.add_error(field, "A price cannot be negative.")
        kind, hosts = data.get("kind"), data.get("hosts") or []
        unable = [h.name for h in hosts if h.cpus and not h.supports(kind)]
        if kind and unable:
            self.add_error("hosts", f"{', '.join(unable)} cannot run {InstanceKind(kind).label.lower()}s.")
        return data


class BuildImageForm(forms.Form):
    image = forms.ChoiceField(choices=[(f"{n}:{k}", f"{n} ({InstanceKind(k).label})") for n, k in known_images()])

    def name_and_kind(self) -> tuple[str, str]:
        name, _, kind = self.cleaned_data["image"].partition(":")
        return name, kind


class ImportImageForm(forms.Form):
    archive = forms.FileField(
        label="Image archive",
        help_text="An oci-archive or docker save tarball (.tar or .tar.gz), e.g. from "
                  "`docker save app:v1 -o app.tar` or `skopeo copy docker://app:v1 oci-archive:app.tar`.",
        error_messages={"required": "Choose the archive to upload.",
                        "empty": "The file is empty: it is not an image archive."},
    )
    name = forms.CharField(
        label="Name", required=False, max_length=100,
        help_text="repository:tag in the catalogue, e.g. shop:1.2; empty to take the archive's own.",
    )


class ImportIsoForm(forms.Form):
    iso = forms.FileField(
        label="Installer ISO",
        help_text="A bootable .iso (ISO 9660 with an El Torito boot record for BIOS), e.g. a "
                  "distribution's netinst image.",
        error_messages={"required": "Choose the ISO to upload.",
                        "empty": "The file is empty: it is not an ISO."},
    )
    name = forms.CharField(label="Name", max_length=100,
                           help_text="The VM image's name in the catalogue, e.g. debian-12-netinst.",
                           error_messages={"required": "Give the image a name."})
    sha256 = forms.CharField(
        label="SHA-256", required=False, max_length=71,
        help_text="The checksum its publisher gives (from SHA256SUMS); the upload is refused if "
                  "the file does not match. Empty: computed and stored, not checked.",
    )

    def clean_sha256(self) -> str:
        from workers.images.iso import parse_sha256  # noqa: PLC0415

        value = self.cleaned_data["sha256"].strip()
        if not value:
            return ""
        try:
            return parse_sha256(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class QuotaForm(forms.ModelForm):
    class Meta:
        model = Customer
        fields = ["max_instances", "max_vcpus", "max_memory_mib"]
        labels = {"max_instances": "Instances", "max_vcpus": "vCPUs", "max_memory_mib": "Memory (MiB)"}


class SuspendForm(forms.Form):
    reason = forms.CharField(max_length=400, help_text="Shown to the customer and kept in the audit log.")


class InstanceFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, help_text="Hostname, IPv4, UUID or billing id.")
    host = forms.ModelChoiceField(queryset=Host.objects.all(), required=False, empty_label="All hosts")
    customer = forms.ModelChoiceField(queryset=Customer.objects.select_related("user"), required=False,
                                      empty_label="All customers")
    state = forms.ChoiceField(required=False, choices=[("", "Live (not terminated)"), *InstanceState.choices,
                                                       (UNKNOWN, "Unknown (host offline)")])
    kind = forms.ChoiceField(required=False, choices=[("", "All kinds"), *InstanceKind.choices])


class BulkActionForm(forms.Form):
    action = forms.ChoiceField(choices=[(a, Operation.Action(a).label) for a in BULK_ACTIONS])
    instances = forms.ModelMultipleChoiceField(
        queryset=Instance.objects.all(), error_messages={"required": "Tick at least one instance."}
    )
    reason = forms.CharField(max_length=400, required=False)


class AuditSearchForm(forms.Form):
    q = forms.CharField(label="Search", required=False, help_text="Words in the message, an action, a user or an id.")
    source = forms.ChoiceField(required=False, choices=[("", "Any source"), *AuditEntry.Source.choices])
    action = forms.CharField(required=False, help_text="Action prefix, e.g. host. or placement.failed")


class OperationSearchForm(forms.Form):
    q = forms.CharField(label="Search", required=False, help_text="Error text, instance hostname, action or host.")
    state = forms.ChoiceField(required=False, choices=[("", "Any state"), *Operation.State.choices])
