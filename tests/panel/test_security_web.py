"""Web security: production settings (``manage.py check --deploy`` clean, HTTPS only, secure
cookies, security headers), CSRF, the login throttle (no user enumeration), passwords hashed
with Django's default, and secrets that are never logged and never shown twice.

Production mode is read from the environment when settings load, so those checks run Django
in a subprocess with ``BERTH_MODE=production``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import identify_hasher
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from panel.accounts import services as accounts
from panel.api.services.tokens import create_token
from panel.audit.models import AuditEntry
from panel.hosts import credentials
from panel.instances.models import Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory, HostFactory, UserFactory

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


def _production_env(**extra: str) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "BERTH_MODE": "production",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "panel.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://panel.example.com",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or ''}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "panel.settings",
        **extra,
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# --- production settings -------------------------------------------------------------------

def test_check_deploy_is_clean_in_production_mode():
    result = _run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                  _production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", [{"SECRET_KEY": "short"}, {"ALLOWED_HOSTS": ""},
                                     {"DEBUG": "true"}])
def test_production_mode_refuses_to_start_with_unsafe_settings(missing):
    result = _run([sys.executable, "manage.py", "check"], _production_env(**missing))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr


PROBE = textwrap.dedent("""
    import json, django
    django.setup()
    from django.test import Client
    from django.contrib.auth import get_user_model
    out = {}
    plain = Client(HTTP_HOST="panel.example.com")
    r = plain.get("/login/")
    out["http"] = [r.status_code, r.get("Location", "")]
    c = Client(HTTP_HOST="panel.example.com", enforce_csrf_checks=True)
    r = c.get("/login/", secure=True)
    out["headers"] = dict(r.headers)
    out["csrf_cookie"] = {k: str(v) for k, v in c.cookies["csrftoken"].items()}
    token = c.cookies["csrftoken"].value
    r = c.post("/login/", {"username": "%(user)s", "password": "%(password)s",
                           "csrfmiddlewaretoken": token}, secure=True,
               HTTP_REFERER="https://panel.example.com/login/")
    out["login"] = r.status_code
    out["session_cookie"] = {k: str(v) for k, v in c.cookies["sessionid"].items()}
    print(json.dumps(out))
""")


@pytest.mark.django_db(transaction=True)
def test_production_mode_is_https_only_with_secure_cookies_and_headers():
    user = UserFactory()
    result = _run([sys.executable, "-c", PROBE % {"user": user.username, "password": PASSWORD}],
                  _production_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["http"] == [301, "https://panel.example.com/login/"]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "max-age=31536000" in headers["strict-transport-security"]
    assert "includeSubDomains" in headers["strict-transport-security"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    csp = headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "camera=()" in headers["permissions-policy"]
    assert "no-store" in headers["cache-control"]
    assert seen["login"] == 302
    for cookie in (seen["csrf_cookie"], seen["session_cookie"]):
        assert cookie["secure"] is not None and cookie["secure"] != ""
        assert cookie["httponly"] not in ("", "False")
        assert cookie["samesite"] == "Lax"


@pytest.mark.django_db
def test_development_pages_carry_the_security_headers_too(client):
    response = client.get("/login/")
    assert "script-src 'self';" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    # Static files keep their own caching: only dynamic pages are no-store.
    assert "no-store" in response["Cache-Control"]


# --- CSRF -------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_state_changing_forms_need_the_csrf_token(customer, plan, image, host, sent_tasks):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="csrf")
    operation = instance.operations.get()
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=True, power_state="running")
    browser = Client(enforce_csrf_checks=True)
    assert browser.post("/login/", {"username": customer.user.username, "password": PASSWORD}).status_code == 403
    browser.force_login(customer.user)
    for url, data in ((f"/instances/{instance.pk}/stop/", {}),
                      (f"/instances/{instance.pk}/terminate/", {"confirm": "csrf"}),
                      ("/instances/new/", {"hostname": "forged"}),
                      ("/account/tokens/", {"name": "forged"})):
        assert browser.post(url, data).status_code == 403, url
    assert list(Operation.objects.filter(instance=instance).values_list("action", flat=True)) == ["create"]
    assert not customer.api_tokens.exists() if hasattr(customer, "api_tokens") else True


# --- the login throttle -----------------------------------------------------------------------

_next_address = itertools.count(secrets.randbelow(250))


def _address() -> str:
    """A client address no other call in this run returns (a random start: none that a
    previous run's throttle may still remember either)."""
    return f"198.51.100.{next(_next_address) % 250 + 1}"


def _login(username: str, password: str, address: str, path: str = "/login/", **extra):
    return Client(REMOTE_ADDR=address, **extra).post(path, {"username": username, "password": password})


@pytest.mark.django_db
def test_repeated_failures_lock_the_address_and_username_with_a_clear_message():
    user = UserFactory()
    address = _address()
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS):
        assert _login(user.username, "wrong", address).status_code == 200  # the form again
    refused = _login(user.username, PASSWORD, address)  # even the right password, now
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) == settings.BERTH_LOGIN_LOCKOUT_SECONDS
    assert "Too many failed sign-in attempts" in refused.content.decode()
    assert "_auth_user_id" not in refused.wsgi_request.session
    # Another address is not affected, nor another username from this one.
    assert _login(user.username, PASSWORD, _address()).status_code == 302
    other = UserFactory()
    assert _login(other.username, PASSWORD, address).status_code == 302


@pytest.mark.django_db
def test_the_throttle_tells_nobody_which_usernames_exist():
    user = UserFactory()
    answers = {}
    for name in (user.username, f"nobody-{secrets.token_hex(3)}"):
        address = _address()
        for _ in range(settings.BERTH_LOGIN_ATTEMPTS):
            _login(name, "wrong", address)
        refused = _login(name, "wrong", address)
        answers[name] = (refused.status_code, refused["Retry-After"],
                         refused.content.decode().replace(name, "NAME"))
    existing, missing = answers.values()
    assert existing[:2] == missing[:2] == (429, str(settings.BERTH_LOGIN_LOCKOUT_SECONDS))
    assert _messages(existing[2]) == _messages(missing[2])


def _messages(page: str) -> list[str]:
    return [line.strip() for line in page.splitlines() if "msg-" in line or "form-error" in line]


@pytest.mark.django_db
def test_a_successful_login_clears_the_count():
    user = UserFactory()
    address = _address()
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS - 1):
        _login(user.username, "wrong", address)
    assert _login(user.username, PASSWORD, address).status_code == 302
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS - 1):
        _login(user.username, "wrong", address)
    assert _login(user.username, PASSWORD, address).status_code == 302


@pytest.mark.django_db
def test_one_address_trying_many_usernames_is_throttled_too(settings):
    settings.BERTH_LOGIN_ATTEMPTS_PER_ADDRESS = 8
    address = _address()
    for i in range(8):
        _login(f"spray-{i}", "wrong", address)
    assert _login(UserFactory().username, PASSWORD, address).status_code == 429


@pytest.mark.django_db
def test_the_admin_login_is_throttled_as_well():
    staff = UserFactory(is_staff=True)
    address = _address()
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS):
        _login(staff.username, "wrong", address, "/admin/login/")
    refused = _login(staff.username, PASSWORD, address, "/admin/login/")
    assert refused.status_code == 429 and "Too many failed sign-in attempts" in refused.content.decode()


@pytest.mark.django_db
def test_the_client_address_comes_from_a_trusted_proxy_only(settings):
    user = UserFactory()
    client_address = _address()
    settings.BERTH_TRUSTED_PROXIES = ["127.0.0.1"]
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS):
        _login(user.username, "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=f"203.0.113.9, {client_address}")
    # Behind the proxy the real client is throttled, not everyone who comes through it ...
    assert _login(user.username, PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR=client_address).status_code == 429
    assert _login(user.username, PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR=_address()).status_code == 302
    # ... and a client cannot pick its own bucket by writing the header itself.
    direct = _address()
    for _ in range(settings.BERTH_LOGIN_ATTEMPTS):
        _login(user.username, "wrong", direct, HTTP_X_FORWARDED_FOR=_address())
    assert _login(user.username, PASSWORD, direct, HTTP_X_FORWARDED_FOR=_address()).status_code == 429


# --- passwords ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_passwords_are_hashed_with_djangos_default(settings):
    settings.BERTH_SIGNUP_OPEN = True
    assert not hasattr(settings, "PASSWORD_HASHERS") or \
        settings.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.PBKDF2PasswordHasher"
    customer = accounts.sign_up(username="hashme", email="h@example.com", password="a long passphrase 42")
    stored = customer.user.password
    assert identify_hasher(stored).algorithm == "pbkdf2_sha256"
    assert "a long passphrase 42" not in stored
    assert customer.user.check_password("a long passphrase 42")


# --- secrets: never logged, never shown twice ---------------------------------------------------

@pytest.fixture
def every_log_record(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.django_db
def test_secrets_are_never_logged_nor_kept_in_the_audit_log(every_log_record, customer, plan, image,
                                                             host, sent_tasks):
    staff = UserFactory(is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(staff)
    owner = Client()
    owner.force_login(customer.user)
    found: dict[str, str] = {}

    # An API token made on the customer's page: shown once, on that page only.
    page = owner.post("/account/tokens/", {"name": "ci"}, follow=True).content.decode()
    found["api token"] = _between(page, 'id="new-token-key"', 'value="', '"')
    assert found["api token"].startswith("berth_")
    assert found["api token"] not in owner.get("/account/tokens/").content.decode()

    # A host's Redis credential: shown once when enrolled, once more only by rotating it.
    enrolled = admin.post("/staff/hosts/enrol/", {"name": "sekrit", "network": "10.123.0.0/24",
                                                  "bridge": "bsek", "uid_base": 2_000_000_000})
    try:
        found["host credential"] = _secret_in_commands(enrolled.content.decode())
        assert "no-store" in enrolled["Cache-Control"]
        from panel.hosts.models import Host  # noqa: PLC0415

        sekrit = Host.objects.get(name="sekrit")
        assert found["host credential"] not in admin.get(f"/staff/hosts/{sekrit.pk}/").content.decode()
        rotated = admin.post(f"/staff/hosts/{sekrit.pk}/credential/")
        found["rotated credential"] = _secret_in_commands(rotated.content.decode())
        assert found["rotated credential"] != found["host credential"]
    finally:
        credentials.remove_user("sekrit")

    # Console tickets and single sign-on links, through the API.
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="secret")
    operation = instance.operations.get()
    results.record_operation_started(operation.pk)
    results.record_operation_finished(operation.pk, ok=True, power_state="running")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {found['api token']}")
    found["console ticket"] = api.post(f"/api/v1/services/{instance.pk}/console/").json()["url"].split("ticket=")[1]
    found["sso link"] = api.post(f"/api/v1/services/{instance.pk}/sso").json()["url"].rstrip("/").rsplit("/", 1)[1]
    found["billing token"] = create_token(name="billing", scope="billing")[1]
    # A failed sign-in with a password typed into the username field.
    found["password"] = "hunter2-" + secrets.token_hex(4)
    _login(found["password"], found["password"], _address())

    assert all(len(value) >= 16 for value in found.values()), found
    logged = every_log_record.text
    audit = " ".join(f"{e.message} {json.dumps(e.data)}" for e in AuditEntry.objects.all())
    for what, value in found.items():
        assert value not in logged, f"the {what} was logged"
        assert value not in audit, f"the {what} is in the audit log"


def _between(page: str, anchor: str, start: str, end: str) -> str:
    rest = page[page.index(anchor):]
    rest = rest[rest.index(start) + len(start):]
    return rest[:rest.index(end)]


def _secret_in_commands(page: str) -> str:
    marker = "berth-host-sekrit:"
    rest = page[page.index(marker) + len(marker):]
    return rest[:rest.index("@")]


@pytest.mark.django_db
def test_a_webhook_secret_is_not_shown_again_after_it_was_set():
    from panel.webhooks.models import WebhookEndpoint  # noqa: PLC0415
    from tests.factories import WebhookEndpointFactory  # noqa: PLC0415

    endpoint = WebhookEndpointFactory(secret="whsec-" + secrets.token_hex(16))
    admin = Client()
    admin.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = admin.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode()
    assert endpoint.secret not in page

    # Saving without typing one keeps it; typing one replaces it; neither is shown back.
    form = {"url": endpoint.url, "is_active": "on", "description": "", "new_secret": ""}
    response = admin.post(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/", form, follow=True)
    endpoint.refresh_from_db()
    assert endpoint.secret.startswith("whsec-") and endpoint.secret not in response.content.decode()
    replaced = "replaced-" + secrets.token_hex(8)
    admin.post(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/", {**form, "new_secret": replaced})
    endpoint.refresh_from_db()
    assert endpoint.secret == replaced
    assert replaced not in admin.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode()

    # A new endpoint's generated secret is shown once, on the page after saving, then never.
    response = admin.post("/admin/webhooks/webhookendpoint/add/",
                          {"url": "https://billing.example/hooks", "is_active": "on", "description": "",
                           "new_secret": ""}, follow=True)
    created = WebhookEndpoint.objects.get(url="https://billing.example/hooks")
    assert len(created.secret) >= 16 and response.content.decode().count(created.secret) == 1
    assert created.secret not in admin.get(f"/admin/webhooks/webhookendpoint/{created.pk}/change/").content.decode()


@pytest.mark.django_db
def test_a_customer_page_never_shows_a_host_secret_or_address(customer):
    HostFactory(credential_hash="ab" * 32)
    CustomerFactory()
    owner = Client()
    owner.force_login(customer.user)
    for url in ("/", "/instances/new/", "/account/"):
        page = owner.get(url).content.decode()
        assert "ab" * 32 not in page and settings.REDIS_URL not in page
