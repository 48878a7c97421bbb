"""Account pages: sign-up, log in, password reset and change, profile, SSH keys, API tokens."""

import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.contrib.auth import get_user_model
from django.core import mail
from django.urls import reverse

from panel.accounts.credentials import parse_public_key
from panel.accounts.models import Customer, SiteSettings, SshKey
from panel.api.models import ApiToken
from panel.api.services.tokens import authenticate_key, forget_cached_tokens
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()


def openssh(private_key, comment: str = "alice@laptop") -> str:
    line = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


@pytest.fixture
def logged_in(client, customer):
    client.force_login(customer.user)
    return client


@pytest.fixture
def signup_open(settings):
    settings.BERTH_SIGNUP_OPEN = True


SIGNUP = {"name": "Shop Ltd", "username": "shop", "email": "ops@shop.example",
          "password1": "a long enough password", "password2": "a long enough password"}


# --- Sign-up --------------------------------------------------------------------------------

def test_signup_is_closed_unless_the_provider_opens_it(client):
    response = client.get(reverse("signup"))
    assert response.status_code == 403 and "Sign-up is closed" in response.content.decode()
    assert client.post(reverse("signup"), SIGNUP).status_code == 403
    assert not User.objects.filter(username="shop").exists()


def test_the_site_setting_overrides_the_environment(client, signup_open):
    SiteSettings.objects.create(signup_open=False)
    assert client.post(reverse("signup"), SIGNUP).status_code == 403
    SiteSettings.objects.filter(pk=1).update(signup_open=None)  # back to BERTH_SIGNUP_OPEN
    assert client.post(reverse("signup"), SIGNUP).status_code == 302


def test_signup_makes_a_customer_with_the_default_quotas_and_logs_in(client, signup_open):
    response = client.post(reverse("signup"), SIGNUP)
    assert response.status_code == 302 and response.url == reverse("instance-order")
    customer = Customer.objects.get(user__username="shop")
    assert customer.name == "Shop Ltd" and customer.user.email == "ops@shop.example"
    assert (customer.max_instances, customer.max_vcpus, customer.max_memory_mib) == (10, 16, 32768)
    assert not customer.user.is_staff and customer.user.check_password("a long enough password")
    assert client.get(reverse("instance-order")).status_code == 200  # logged in


@pytest.mark.parametrize("changes,field,message", [
    ({"username": "TAKEN"}, "username", "already exists"),
    ({"email": "Taken@Example.com"}, "email", "An account with this email exists already"),
    ({"email": ""}, "email", "This field is required."),
    ({"email": "not-an-email"}, "email", "Enter a valid email address."),
    ({"username": "bad name!"}, "username", "Enter a valid username"),
    ({"password1": "short", "password2": "short"}, "password2", "too short"),
    ({"username": "shopkeeper", "password1": "shopkeeper1", "password2": "shopkeeper1"}, "password2",
     "too similar"),
    ({"password2": "another password"}, "password2", "didn’t match"),
])
def test_signup_errors_are_next_to_the_field(client, signup_open, changes, field, message):
    UserFactory(username="taken", email="taken@example.com")
    response = client.post(reverse("signup"), {**SIGNUP, **changes})
    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field]), response.context["form"].errors
    assert f'id="id_{field}_error"' in response.content.decode()
    assert not Customer.objects.filter(user__email__iexact=SIGNUP["email"]).exists()
    assert User.objects.count() == 1


def test_login_page_links_reset_and_sign_up_when_open(client, settings):
    body = client.get(reverse("login")).content.decode()
    assert reverse("password_reset") in body and reverse("signup") not in body
    settings.BERTH_SIGNUP_OPEN = True
    assert reverse("signup") in client.get(reverse("login")).content.decode()
    response = client.post(reverse("login"), {"username": "nobody", "password": "x"})
    assert "do not match an account" in response.content.decode()


# --- Password reset and change --------------------------------------------------------------

def test_password_reset_by_email(client, customer):
    assert client.post(reverse("password_reset"), {"email": "nobody@example.com"}).status_code == 302
    assert mail.outbox == []  # no hint whether the address exists
    client.post(reverse("password_reset"), {"email": customer.user.email})
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [customer.user.email]
    link = re.search(r"http://testserver(/password-reset/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    response = client.post(form_page.redirect_chain[-1][0], {"new_password1": "brand new passphrase",
                                                             "new_password2": "brand new passphrase"})
    assert response.status_code == 302
    customer.user.refresh_from_db()
    assert customer.user.check_password("brand new passphrase")
    assert "no longer works" in client.get(link, follow=True).content.decode()  # used once


def test_password_change(logged_in, customer):
    url = reverse("password_change")
    response = logged_in.post(url, {"old_password": "wrong", "new_password1": "brand new passphrase",
                                    "new_password2": "brand new passphrase"})
    assert response.status_code == 200 and 'id="id_old_password_error"' in response.content.decode()
    response = logged_in.post(url, {"old_password": "correct horse battery",
                                    "new_password1": "brand new passphrase", "new_password2": "brand new passphrase"})
    assert response.status_code == 302
    customer.user.refresh_from_db()
    assert customer.user.check_password("brand new passphrase")


# --- Profile --------------------------------------------------------------------------------

def test_profile_changes_name_and_email(logged_in, customer):
    body = logged_in.get(reverse("profile")).content.decode()
    assert "Your quota" in body and "0 of 10" in body
    response = logged_in.post(reverse("profile"), {"name": "New Name", "email": "new@example.org"})
    assert response.status_code == 302
    customer.refresh_from_db()
    customer.user.refresh_from_db()
    assert (customer.name, customer.user.email) == ("New Name", "new@example.org")


@pytest.mark.parametrize("email,message", [("", "This field is required."),
                                           ("nope", "Enter a valid email address."),
                                           ("OTHER@example.com", "Another account uses this email.")])
def test_profile_errors(logged_in, customer, email, message):
    UserFactory(username="other", email="other@example.com")
    response = logged_in.post(reverse("profile"), {"name": "X", "email": email})
    assert response.status_code == 200 and message in response.context["form"].errors["email"][0]
    customer.refresh_from_db()
    assert customer.name != "X"


def test_staff_without_a_customer_account_have_a_profile(client):
    admin = UserFactory(username="boss", is_staff=True)
    client.force_login(admin)
    assert client.get(reverse("profile")).status_code == 200
    assert "Only customer accounts have SSH keys" in client.get(reverse("ssh-keys")).content.decode()
    assert client.post(reverse("api-tokens"), {"name": "x"}).status_code == 200
    assert not ApiToken.objects.exists()


# --- SSH keys -------------------------------------------------------------------------------

def test_public_keys_of_every_accepted_type_with_ssh_keygens_fingerprint(tmp_path):
    keys = [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP521R1()), rsa.generate_private_key(65537, 2048)]
    for key in keys:
        line = openssh(key)
        (tmp_path / "k.pub").write_text(line + "\n")
        shown = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True,
                               text=True, check=True).stdout.split()[1]
        parsed = parse_public_key(line)
        assert parsed.fingerprint == shown and parsed.line == line and parsed.comment == "alice@laptop"


def test_security_keys_are_accepted():
    import base64
    import os
    import struct

    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b
    blob = s(b"sk-ssh-ed25519@openssh.com") + s(os.urandom(32)) + s(b"ssh:")
    parsed = parse_public_key("sk-ssh-ed25519@openssh.com " + base64.b64encode(blob).decode())
    assert parsed.key_type == "sk-ssh-ed25519@openssh.com" and parsed.comment == ""


def test_adding_and_deleting_a_key(logged_in, customer):
    line = openssh(ed25519.Ed25519PrivateKey.generate())
    response = logged_in.post(reverse("ssh-keys"), {"name": "", "public_key": "  " + line + "\n"})
    assert response.status_code == 302
    key = SshKey.objects.get(customer=customer)
    assert key.name == "alice@laptop" and key.public_key == line and key.fingerprint.startswith("SHA256:")
    body = logged_in.get(reverse("ssh-keys")).content.decode()
    assert key.fingerprint in body and "ssh-ed25519" in body
    assert logged_in.post(reverse("ssh-key-delete", args=[key.pk])).status_code == 302
    assert not SshKey.objects.exists()


def test_adding_a_key_from_the_order_page_goes_back_there(logged_in):
    line = openssh(ed25519.Ed25519PrivateKey.generate())
    response = logged_in.post(reverse("ssh-keys") + "?next=order", {"name": "k", "public_key": line})
    assert response.url == reverse("instance-order")


ED = openssh(ed25519.Ed25519PrivateKey.generate())
RSA_1024 = ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDCZuELu9ZEPbH85p0dh2Tm1tiG2Xoj9K/XlAlTVkTsuEbqhff+juy2LfUesc"
            "tMW3CX5ef9ehl1LWhymTWMcDbbAuwWinUaXnSH4NQtG0t2XAYhDgkmnUf03glnzLcxzABXBPyALAS2uRrmz8QKHd26NRvR4rWCaL+T"
            "0QmPj79W/w==")
DSA = ("ssh-dss AAAAB3NzaC1kc3MAAACBAMUcft+DrnEnnoHoMpII/gIagXRv5CEBWqqA8Py9QkC7qfigGplpFtks7qAdf30yEG+qHx6K"
       "rYx689YKwwEdiKhksQxvmezDJIQcSx/3Y+/6y+PyZp6d0PfGcE38BNsTxSpVWe9+gr5Ttu4Kztx6kZyU8s0noujbGp0YIN1Vi5zVAAAA"
       "FQCqhf/2iBM720/BDtw0y30PySQ9RwAAAIEAs7dTsPpRji6Q3WGPIbFhsL1MJ9GrFoC4gaXpISvKn46Kv7pHW1rNZMOulKnIjSFAGHcW"
       "yN1k7Er4fcmjYM5JNcvGC/inbgiBPk/YJWgrLk1ll0RTBk1m4ebdneMbN1WWDT7AKpE9M8KxqGlSphJOzI5x2s/CTlWdzXwjCjSrGBUA"
       "AACBAMMmOx8fvXpeOAJdmg2QFfF6iYm9+ggkYyqFs36E1tqf9tBUMivMlXFAjsqgb4wIIhskPYHDu1RSZzhhBrLH0Q4CzxzyGEIKdpLl"
       "TVHy6UssOeGU2C5MC8LiD0bYvgvvG+HOlCX/0M5jdbFANjNZy/O/2344ZwQJ1HPHtvRAK1po")


@pytest.mark.parametrize("name,key,field,message", [
    ("k", "", "public_key", "This field is required."),
    ("k", "hello world", "public_key", "does not start like an OpenSSH public key"),
    ("k", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
     "public_key", "This is a private key"),
    ("k", 'from="10.0.0.1" ' + ED, "public_key", "without options in front"),
    ("k", ED + "\n" + ED, "public_key", "Paste one key, on one line."),
    ("k", "ssh-ed25519", "public_key", "The key itself is missing"),
    ("k", "ssh-ed25519 AAAA!!!!", "public_key", "not valid base64"),
    ("k", ED.split()[0] + " " + ED.split()[1][:-8], "public_key", "damaged or does not match its type"),
    ("k", "ssh-rsa " + ED.split()[1], "public_key", "damaged or does not match its type"),
    ("k", RSA_1024, "public_key", "This RSA key has 1024 bits; use at least 2048"),
    ("k", DSA, "public_key", "DSA keys are no longer accepted"),
    ("k", ED + " caf\u00e9", "public_key", "printable ASCII"),
    ("x" * 101, ED, "name", "at most 100 characters"),
])
def test_bad_keys_are_refused_next_to_the_field(logged_in, name, key, field, message):
    response = logged_in.post(reverse("ssh-keys"), {"name": name, "public_key": key})
    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field]), response.context["form"].errors
    assert f'id="id_{field}_error"' in response.content.decode()
    assert not SshKey.objects.exists()


def test_the_same_key_or_name_twice_is_refused(logged_in, customer):
    logged_in.post(reverse("ssh-keys"), {"name": "laptop", "public_key": ED})
    again = logged_in.post(reverse("ssh-keys"), {"name": "other", "public_key": ED})
    assert "already added this key" in again.context["form"].errors["public_key"][0]
    other = openssh(ed25519.Ed25519PrivateKey.generate())
    same_name = logged_in.post(reverse("ssh-keys"), {"name": "laptop", "public_key": other})
    assert "already have a key named laptop" in same_name.context["form"].errors["name"][0]
    assert SshKey.objects.count() == 1


def test_another_customers_key_is_a_404(logged_in, other_customer):
    theirs = SshKey.objects.create(customer=other_customer, name="theirs", public_key=ED, fingerprint="SHA256:z")
    assert logged_in.post(reverse("ssh-key-delete", args=[theirs.pk])).status_code == 404
    assert "theirs" not in logged_in.get(reverse("ssh-keys")).content.decode()
    assert SshKey.objects.filter(pk=theirs.pk).exists()


# --- API tokens -----------------------------------------------------------------------------

def test_a_token_is_shown_once_works_and_can_be_revoked(logged_in, customer):
    response = logged_in.post(reverse("api-tokens"), {"name": "deploy script"}, follow=True)
    body = response.content.decode()
    key = re.search(r'id="new-token-key"[^>]*value="(berth_[^"]+)"', body).group(1)
    token = ApiToken.objects.get(customer=customer)
    assert token.scope == "customer" and token.name == "deploy script"
    assert authenticate_key(key) == token
    assert key not in logged_in.get(reverse("api-tokens")).content.decode()  # once only
    assert logged_in.post(reverse("api-token-revoke", args=[token.pk])).status_code == 302
    forget_cached_tokens()
    assert authenticate_key(key) is None
    assert "revoked" in logged_in.get(reverse("api-tokens")).content.decode()


def test_a_token_needs_a_name(logged_in):
    for name in ("", "   ", "x" * 101):
        response = logged_in.post(reverse("api-tokens"), {"name": name})
        assert response.status_code == 200 and 'id="id_name_error"' in response.content.decode()
    assert not ApiToken.objects.exists()


def test_another_customers_token_is_a_404(logged_in):
    other = CustomerFactory()
    theirs = ApiToken.objects.create(name="theirs", scope="customer", customer=other, key_hash="h" * 64, prefix="berth_x")
    billing = ApiToken.objects.create(name="billing", scope="billing", key_hash="b" * 64, prefix="berth_b")
    for token in (theirs, billing):
        assert logged_in.post(reverse("api-token-revoke", args=[token.pk])).status_code == 404
        token.refresh_from_db()
        assert token.revoked_at is None
    assert "theirs" not in logged_in.get(reverse("api-tokens")).content.decode()
