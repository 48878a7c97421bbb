"""Account pages in a real Chromium against the live stack: sign-up only when the provider
opens it, the profile, SSH keys (the fingerprint ssh-keygen shows; a bad key refused next to
the field; deleting asks first), API tokens (shown once, working against the API, revoked
after a confirmation), and the password: reset by an emailed link, changed from the account.
The pages are audited and photographed like the instance pages."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from panel.accounts.models import Customer, SiteSettings, SshKey
from tests.stack import test_browser_order as journey
from tests.stack.test_browser_order import DESKTOP, PASSWORD, check_page, sign_up

browser = journey.browser  # the same Chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


def api_status(stack, key: str) -> int:
    request = urllib.request.Request(stack.url + "api/v1/plans/", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            json.load(response)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_sign_up_is_offered_only_when_open(stack, browser):
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.url + "login/")
    expect(page.get_by_role("link", name="Sign up")).to_have_count(0)
    assert page.goto(stack.url + "signup/").status == 403
    expect(page.get_by_role("heading", name="Sign-up is closed")).to_be_visible()
    check_page(page)
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_open": True})
    page.goto(stack.url + "login/")
    page.get_by_role("link", name="Sign up").first.click()
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Username").fill("dave")
    page.get_by_label("Email").fill("not an email")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill("something else entirely")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#id_email_error")).to_have_text("Enter a valid email address.")
    expect(page.locator("#id_password2_error")).to_contain_text("didn’t match")
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    check_page(page)
    assert not Customer.objects.exists()


def test_profile_keys_and_tokens(stack, browser, tmp_path):
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_open": True})
    page = sign_up(browser, stack, "erin")

    page.goto(stack.url + "account/")
    page.get_by_label("Name or company").fill("Erin's Bakery")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".messages")).to_contain_text("Profile saved.")
    assert Customer.objects.get(user__username="erin").name == "Erin's Bakery"
    check_page(page, "profile")

    # SSH keys: from the order page and back, the fingerprint ssh-keygen shows.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "erin@laptop", "-f",
                    str(tmp_path / "id")], check=True)
    public = (tmp_path / "id.pub").read_text().strip()
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "id.pub")], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    page.goto(stack.url + "instances/new/")
    page.get_by_role("radio", name="My SSH keys").check()
    expect(page.get_by_text("You have no SSH keys yet.")).to_be_visible()
    page.get_by_role("link", name="Add an SSH key").click()
    page.get_by_label("Public key").fill(public[:-20])  # cut short while copying
    page.get_by_role("button", name="Add key").click()
    expect(page.locator("#id_public_key_error")).to_contain_text("was it cut short")
    expect(page.get_by_label("Public key")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Public key").fill(public)
    page.get_by_role("button", name="Add key").click()
    page.wait_for_url(re.compile(r"/instances/new/$"))
    expect(page.get_by_role("radio", name="My SSH keys")).to_be_checked()
    expect(page.get_by_role("checkbox", name="erin@laptop")).to_be_checked()
    page.goto(stack.url + "account/keys/")
    expect(page.locator(".fingerprint")).to_have_text(fingerprint)
    check_page(page, "ssh-keys")
    page.get_by_role("button", name="Delete key erin@laptop").click()
    confirm = page.get_by_role("dialog")
    expect(confirm).to_contain_text("Delete the key erin@laptop?")
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    assert SshKey.objects.count() == 1
    page.get_by_role("button", name="Delete key erin@laptop").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete key").click()
    expect(page.locator(".messages")).to_contain_text("Key erin@laptop deleted.")
    assert not SshKey.objects.exists()

    # API tokens: shown once, working at once, revoked after a confirmation.
    page.goto(stack.url + "account/tokens/")
    page.get_by_label("Name").fill("deploy script")
    page.get_by_role("button", name="Create token").click()
    key = page.get_by_label("New API token").input_value()
    assert key.startswith("berth_")
    assert api_status(stack, key) == 200
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    check_page(page, "api-tokens")
    page.reload()
    expect(page.get_by_label("New API token")).to_have_count(0)
    assert key not in page.content()
    page.get_by_role("button", name="Revoke token deploy script").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke token").click()
    expect(page.locator(".messages")).to_contain_text("Token deploy script revoked")
    assert api_status(stack, key) == 401


def test_password_reset_by_email_and_password_change(stack, browser):
    """Forgotten: the link comes by email (the console backend: the web server's output), bad
    values are refused next to their fields, the old password stops working. Then changed
    from the account pages. Every page on the way is audited; the reset form photographed."""
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_open": True})
    sign_up(browser, stack, "fay").context.close()
    page = browser.new_page(viewport=DESKTOP)  # a browser that is not logged in
    page.goto(stack.url + "login/")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    page.get_by_label("Email").fill("not an email")
    page.get_by_role("button", name="Send the link").click()
    expect(page.locator("#id_email_error")).to_have_text("Enter a valid email address.")
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    check_page(page)
    page.get_by_label("Email").fill("fay@example.com")
    page.get_by_role("button", name="Send the link").click()
    page.wait_for_url(re.compile(r"/password-reset/sent/$"))
    check_page(page)

    link = None
    for _ in range(50):  # the web server writes the email out as it sends it
        found = re.findall(rf"{re.escape(stack.url)}password-reset/[\w-]+/[\w-]+/", stack.logs("web", 400))
        if found:
            link = found[-1]
            break
        page.wait_for_timeout(100)
    assert link, stack.logs("web", 100)
    page.goto(link)
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("a brand new passphrase")
    page.get_by_label("New password confirmation").fill("a different passphrase")
    page.get_by_role("button", name="Save the new password").click()
    expect(page.locator("#id_new_password2_error")).to_contain_text("didn’t match")
    check_page(page, "password-reset")
    page.get_by_label("New password", exact=True).fill("a brand new passphrase")
    page.get_by_label("New password confirmation").fill("a brand new passphrase")
    page.get_by_role("button", name="Save the new password").click()
    page.wait_for_url(re.compile(r"/password-reset/done/$"))
    check_page(page)
    assert page.goto(link).ok  # a used link says so instead of failing
    expect(page.get_by_role("heading", name="This link no longer works")).to_be_visible()

    page.goto(stack.url + "login/")
    page.get_by_label("Username").fill("fay")
    page.get_by_label("Password").fill(PASSWORD)  # the old one
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("That username and password do not match an account.")
    expect(page.get_by_label("Password")).to_have_attribute("aria-describedby", "login-error")
    check_page(page)
    page.get_by_label("Password").fill("a brand new passphrase")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(stack.url)

    page.goto(stack.url + "account/password/")
    page.get_by_label("Old password").fill("not my password")
    page.get_by_label("New password", exact=True).fill("yet another passphrase")
    page.get_by_label("New password confirmation").fill("yet another passphrase")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("#id_old_password_error")).to_contain_text("incorrect")
    expect(page.get_by_label("Old password")).to_have_attribute("aria-invalid", "true")
    check_page(page, "password-change")
    page.get_by_label("Old password").fill("a brand new passphrase")
    page.get_by_label("New password", exact=True).fill("yet another passphrase")
    page.get_by_label("New password confirmation").fill("yet another passphrase")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator(".messages")).to_contain_text("Password changed.")
    assert Customer.objects.get(user__username="fay").user.check_password("yet another passphrase")
