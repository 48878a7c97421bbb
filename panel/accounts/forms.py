"""Forms of the account pages: sign-up, profile, SSH keys and API tokens."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError

from panel.accounts.credentials import PublicKey, parse_public_key
from panel.accounts.models import Customer, SshKey

PASSWORD_HELP = ("At least 8 characters; not a common password, not only digits, "
                 "not close to your username or email.")


def _email_taken(email: str, *, except_user=None) -> bool:
    users = get_user_model().objects.filter(email__iexact=email)
    if except_user is not None:
        users = users.exclude(pk=except_user.pk)
    return users.exists()


class SignupForm(UserCreationForm):
    name = forms.CharField(
        label="Your name or company", max_length=200, required=False,
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    field_order = ("name", "username", "email", "password1", "password2")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["email"].required = True
        self.fields["email"].help_text = "For password resets; never shown to anyone else."
        self.fields["email"].widget.attrs["autocomplete"] = "email"
        self.fields["username"].help_text = "You log in with it. Letters, digits and @ . + - _ only."
        self.fields["username"].widget.attrs["autocomplete"] = "username"
        self.fields["password1"].help_text = PASSWORD_HELP
        self.fields["password2"].label = "Password again"
        self.fields["password2"].help_text = ""

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if _email_taken(email):
            raise ValidationError("An account with this email exists already. Log in, or reset "
                                  "its password if you forgot it.")
        return email


class ProfileForm(forms.Form):
    name = forms.CharField(label="Name or company", max_length=200, required=False,
                           widget=forms.TextInput(attrs={"autocomplete": "organization"}))
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "email"}),
                             help_text="Password reset links are sent here.")

    def __init__(self, *args, user, customer: Customer | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        if customer is None:  # staff without a customer account have no name here
            del self.fields["name"]

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if _email_taken(email, except_user=self.user):
            raise ValidationError("Another account uses this email.")
        return email


class SshKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, required=False,
        help_text="To recognise it by, e.g. “laptop”. Empty: the key's comment.",
    )
    public_key = forms.CharField(
        label="Public key",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off",
                                     "placeholder": "ssh-ed25519 AAAA… you@laptop"}),
        help_text="The contents of your .pub file, e.g. ~/.ssh/id_ed25519.pub. "
                  "Ed25519, ECDSA, RSA (2048 bits or more) and security keys (sk-…) are accepted.",
    )

    def __init__(self, *args, customer: Customer, **kwargs):
        super().__init__(*args, **kwargs)
        self.customer = customer
        self.parsed: PublicKey | None = None

    def clean_public_key(self) -> str:
        self.parsed = parse_public_key(self.cleaned_data["public_key"])
        if SshKey.objects.filter(customer=self.customer, fingerprint=self.parsed.fingerprint).exists():
            raise ValidationError("You have already added this key.")
        return self.parsed.line

    def clean(self):
        data = super().clean()
        if self.parsed is not None:
            name = data.get("name", "").strip() or self.parsed.comment or self.parsed.key_type
            if SshKey.objects.filter(customer=self.customer, name=name).exists():
                self.add_error("name", f"You already have a key named {name}; choose another name.")
        return data


class ApiTokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What will use it, e.g. “deploy script”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise ValidationError("Give the token a name.")
        return name
