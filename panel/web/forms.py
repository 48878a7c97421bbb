"""Forms of the customer panel: ordering, the instance list's filter, and the actions that
need a confirmation or a choice (terminate, rebuild, change plan, upgrade)."""

from __future__ import annotations

import shlex

from django import forms
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db.models import Case, IntegerField, Value, When

from panel.accounts.credentials import hash_root_password
from panel.accounts.models import Customer, SshKey
from panel.catalog import oci
from panel.catalog.models import Image, InstanceKind, Plan
from panel.catalog.selectors import orderable_images
from panel.instances.models import Instance, InstanceState
from panel.instances.validators import validate_hostname

ACCESS_KEYS, ACCESS_PASSWORD = "keys", "password"


class PlanChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, plan: Plan) -> str:
        return (
            f"{plan.name} — {plan.vcpus} vCPU, {plan.memory_mib} MiB, {plan.disk_gib} GiB"
            f" ({plan.get_kind_display().lower()}, {plan.price_monthly}/month)"
        )


class OrderForm(forms.Form):
    kind = forms.ChoiceField(choices=InstanceKind.choices, required=False, widget=forms.RadioSelect,
                             error_messages={"invalid_choice": "Choose a container or a virtual machine."})
    plan = PlanChoiceField(
        queryset=Plan.objects.filter(is_active=True),
        empty_label=None,
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose one of the plans listed.",
                        "required": "Choose a plan."},
    )
    image = forms.ModelChoiceField(
        queryset=Image.objects.filter(is_active=True),
        empty_label=None,
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose one of the images listed.",
                        "required": "Choose an image."},
    )
    hostname = forms.CharField(
        max_length=63,
        help_text="Letters, digits and hyphens; up to 63 characters; not starting or ending "
                  "with a hyphen.",
        error_messages={"required": "Enter a hostname.",
                        "max_length": "A hostname is at most 63 characters long."},
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false",
                                      "autocapitalize": "none"}),
    )
    access = forms.ChoiceField(
        label="Log in with",
        choices=[(ACCESS_KEYS, "My SSH keys"), (ACCESS_PASSWORD, "A root password")],
        widget=forms.RadioSelect, required=False,  # installer ISOs: the installer asks (clean())
    )
    ssh_keys = forms.ModelMultipleChoiceField(
        label="SSH keys", queryset=SshKey.objects.none(), required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "Choose among your own keys.",
                        "invalid_pk_value": "Choose among your own keys."},
    )
    root_password = forms.CharField(
        label="Root password", required=False, strip=False, max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters. Only a hash of it is kept.",
    )
    root_password_again = forms.CharField(
        label="Root password again", required=False, strip=False, max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    command = forms.CharField(
        label="Command", required=False, strip=True, max_length=oci.MAX_TOTAL,
        help_text="Application images only, optional: replaces the image's command; words are "
                  "split as a shell splits them, e.g. sh -c 'echo hello'.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false",
                                      "autocapitalize": "none"}),
    )
    env = forms.CharField(
        label="Environment variables", required=False, max_length=oci.MAX_TOTAL,
        help_text="Application images only, optional: one NAME=value per line, added to the "
                  "image's own.",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocapitalize": "none"}),
    )
    # One per rendering of the form: a second post of the same form (a double click, a retry
    # after a timeout) is recognised by the order service and makes no second instance.
    order_token = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args, customer: Customer, **kwargs):
        super().__init__(*args, **kwargs)
        self.customer = customer
        self.fields["ssh_keys"].queryset = SshKey.objects.filter(customer=customer)
        self.fields["image"].queryset = orderable_images(customer)  # others' own ISOs: not listed

    def clean_hostname(self) -> str:
        return validate_hostname(self.cleaned_data["hostname"])

    def clean_command(self) -> list[str] | None:
        text = self.cleaned_data["command"]
        if not text:
            return None
        try:
            words = shlex.split(text)
        except ValueError:
            raise ValidationError("A quotation mark is not closed, or a backslash ends the "
                                  "command.") from None
        try:
            return oci.clean_command(words)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def clean_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["env"].splitlines(), 1):
            if not line.strip():
                continue
            name, eq, value = line.partition("=")
            if not eq:
                raise ValidationError(f"Line {number} is not NAME=value.")
            env[name.strip()] = value
        try:
            return oci.clean_env(env)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def clean_root_password(self) -> str:
        password = self.cleaned_data["root_password"]
        if any(ord(c) < 32 or ord(c) == 127 for c in password):
            raise ValidationError("The password cannot contain control characters.")
        return password

    def clean(self):
        data = super().clean()
        plan, image, kind = data.get("plan"), data.get("image"), data.get("kind")
        if plan and kind and plan.kind != kind:
            self.add_error("plan", f"The plan {plan.name} is for {plan.get_kind_display().lower()}s; "
                                   f"choose a {InstanceKind(kind).label.lower()} plan.")
        elif plan and image and plan.kind != image.kind:
            self.add_error("image", f"{image.name} is a {image.get_kind_display().lower()} image; "
                                    f"the plan {plan.name} is for {plan.get_kind_display().lower()}s.")
        if image is not None:
            problems = oci.app_option_errors(image, command=data.get("command"), env=data.get("env"))
            for field, message in problems.items():
                if field not in self.errors:
                    self.add_error(field, message)
        access = data.get("access")
        if not access and "access" not in self.errors and not (
                image is not None and image.source == Image.Source.ISO):
            self.add_error("access", "Choose how you will log in.")
        if access == ACCESS_KEYS and not data.get("ssh_keys") and "ssh_keys" not in self.errors:
            self.add_error("ssh_keys", "Choose at least one SSH key, or log in with a root password."
                           if self.fields["ssh_keys"].queryset.exists() else
                           "You have no SSH keys yet: add one, or log in with a root password.")
        if access == ACCESS_PASSWORD:
            self._clean_password(data)
        return data

    def _clean_password(self, data: dict) -> None:
        password = data.get("root_password", "")
        if "root_password" in self.errors:
            return
        if not password:
            self.add_error("root_password", "Enter a root password.")
            return
        try:
            validate_password(password)
        except ValidationError as exc:
            self.add_error("root_password", exc)
            return
        if password != data.get("root_password_again"):
            self.add_error("root_password_again", "The two passwords are not the same.")
            return
        if not self.errors:  # hashing costs a process; only for an order that can go ahead
            data["root_password_hash"] = hash_root_password(password)

    def order_arguments(self) -> dict:
        """Keyword arguments for ``order_instance`` from a valid form: credentials as the
        instance keeps them (keys as authorized_keys lines, the password only hashed)."""
        data = self.cleaned_data
        keys = data["ssh_keys"] if data.get("access") == ACCESS_KEYS else []
        return {
            "plan": data["plan"],
            "image": data["image"],
            "hostname": data["hostname"],
            "ssh_keys": "\n".join(key.public_key for key in keys),
            "root_password_hash": data.get("root_password_hash", ""),
            "idempotency_key": data["order_token"],
            "command": data.get("command"),
            "env": data.get("env") or {},
        }


class InstanceFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=100,
                        widget=forms.SearchInput(attrs={"placeholder": "Hostname or IP address"}))
    state = forms.ChoiceField(label="State", required=False,
                              choices=[("", "All but terminated"), *InstanceState.choices])
    kind = forms.ChoiceField(label="Kind", required=False,
                             choices=[("", "All kinds"), *InstanceKind.choices])


class ConfirmHostnameForm(forms.Form):
    """Destructive actions ask for the hostname, typed, as Proxmox asks for the VM id."""

    confirm = forms.CharField(
        label="Type the hostname to confirm", max_length=63,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false",
                                      "autocapitalize": "none"}),
        error_messages={"required": "Type the hostname to confirm."},
    )

    def __init__(self, *args, instance: Instance, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = instance

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"].strip().lower()
        if typed != self.instance.hostname:
            raise ValidationError(f"That is not {self.instance.hostname}; nothing was done.")
        return typed

    def params(self) -> dict:
        return {}


class ChangePlanForm(forms.Form):
    plan = PlanChoiceField(
        label="New plan", queryset=Plan.objects.none(), empty_label=None, widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose one of the plans listed.",
                        "required": "Choose the new plan."},
    )

    def __init__(self, *args, instance: Instance, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = instance
        self.fields["plan"].queryset = (
            Plan.objects.filter(is_active=True, kind=instance.kind).exclude(pk=instance.plan_id)
        )

    def params(self) -> dict:
        return {"plan": self.cleaned_data["plan"].pk}


class ImageChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, image: Image) -> str:
        created = image.config.get("created", "")[:10] if isinstance(image.config, dict) else ""
        return f"{image.name}{f' (built {created})' if created else ''}"


class UpgradeForm(forms.Form):
    """Another application image for an application container (its next version, usually)."""

    image = ImageChoiceField(
        label="New image", queryset=Image.objects.none(), empty_label=None, widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Choose one of the images listed.",
                        "required": "Choose the image to run."},
    )

    def __init__(self, *args, instance: Instance, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = instance
        self.fields["image"].queryset = upgrade_images(instance)

    def params(self) -> dict:
        return {"image": self.cleaned_data["image"].pk}


def upgrade_images(instance: Instance):
    """The images an application container can be upgraded to: the other application images,
    those of the same repository first."""
    repository = instance.image.name.rpartition(":")[0]
    images = (Image.objects.filter(is_active=True, kind=instance.kind, source=Image.Source.OCI)
              .exclude(pk=instance.image_id))
    same = [i.pk for i in images if i.name.rpartition(":")[0] == repository]
    return images.annotate(same=Case(When(pk__in=same, then=Value(0)), default=Value(1),
                                     output_field=IntegerField())).order_by("same", "-created_at")
