"""Forms of the customer panel."""

from django import forms
from django.core.exceptions import ValidationError

from panel.catalog.models import Image, Plan
from panel.instances.validators import validate_hostname


class PlanChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, plan: Plan) -> str:
        return (
            f"{plan.name} — {plan.vcpus} vCPU, {plan.memory_mib} MiB, {plan.disk_gib} GiB"
            f" ({plan.get_kind_display().lower()}, {plan.price_monthly}/month)"
        )


class OrderForm(forms.Form):
    plan = PlanChoiceField(
        queryset=Plan.objects.filter(is_active=True),
        empty_label=None,
        error_messages={"invalid_choice": "Choose one of the plans listed."},
    )
    image = forms.ModelChoiceField(
        queryset=Image.objects.filter(is_active=True),
        empty_label=None,
        error_messages={"invalid_choice": "Choose one of the images listed."},
    )
    hostname = forms.CharField(
        max_length=63,
        help_text="Letters, digits and hyphens; up to 63 characters.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false",
                                      "pattern": "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"}),
    )

    def clean_hostname(self) -> str:
        return validate_hostname(self.cleaned_data["hostname"])

    def clean(self):
        data = super().clean()
        plan, image = data.get("plan"), data.get("image")
        if plan and image and plan.kind != image.kind:
            raise ValidationError(
                {"image": f"{image.name} is a {image.get_kind_display().lower()} image; "
                          f"the plan {plan.name} is for {plan.get_kind_display().lower()}s."}
            )
        return data
