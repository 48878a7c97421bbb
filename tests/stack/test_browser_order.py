"""Issue 2, steps 2-4 in a real Chromium: log in, order a container, watch it come up without
a reload, use its console, stop, start and terminate it from the same page."""

import re
import time

import pytest
from django.contrib.auth import get_user_model

from panel.accounts.models import Customer
from panel.instances.models import Instance
from tests.stack.helpers import host_leftovers

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]

# Records every text the state badge shows, so the test can tell the page was never reloaded
# and which states it went through.
WATCH_BADGE = """() => {
  window.__berthPageId = Math.random();
  window.__states = [];
  const badge = document.querySelector('[data-instance-state]');
  window.__states.push(badge.textContent.trim());
  new MutationObserver(() => {
    const s = badge.textContent.trim();
    if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
  }).observe(badge, {childList: true, characterData: true, subtree: true});
  return window.__berthPageId;
}"""


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous ones, which Django would otherwise refuse next to a running loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def terminal_text(page) -> str:
    return page.locator("#console .xterm-rows").inner_text()


def type_and_wait(page, command: str, expected: str, timeout: float = 10) -> str:
    page.locator("#console .xterm-helper-textarea").press_sequentially(command + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = terminal_text(page)
        if re.search(expected, text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{expected!r} not on the console:\n{terminal_text(page)}")


def wait_badge(page, state: str, stack, timeout: float = 30) -> None:
    try:
        page.wait_for_function(
            "s => document.querySelector('[data-instance-state]').textContent.trim() === s",
            arg=state, timeout=timeout * 1000,
        )
    except Exception as exc:
        shown = page.locator("[data-instance-state]").inner_text()
        raise AssertionError(f"badge shows {shown!r}, not {state!r}\n{stack.all_logs()}") from exc


def test_order_watch_console_and_lifecycle(stack, browser):
    rows = stack.seed()
    user = get_user_model().objects.create_user("alice", password="a long enough password")
    Customer.objects.create(user=user, name="Alice")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.url + "login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(stack.url)

    page.goto(stack.url + "instances/new/")
    page.get_by_label("Plan").select_option(str(rows["plan"].pk))
    page.get_by_label("Image").select_option(str(rows["image"].pk))
    page.get_by_label("Hostname").fill("shop-1")
    clicked = time.monotonic()
    page.get_by_role("button", name="Order").click()
    page.wait_for_url(re.compile(r"/instances/\d+/$"))
    page_id = page.evaluate(WATCH_BADGE)
    instance = Instance.objects.get(hostname="shop-1")

    wait_badge(page, "running", stack)
    prompt = type_and_wait(page, "", r"shop-1.*#")
    order_to_prompt = time.monotonic() - clicked
    print(f"\nclick Order -> console prompt: {order_to_prompt * 1000:.0f} ms")
    states = page.evaluate("window.__states")
    assert states[-1] == "running" and set(states) <= {"pending", "provisioning", "running"}, states
    assert "shop-1" in prompt

    type_and_wait(page, "hostname", r"\nshop-1\s")
    type_and_wait(page, "echo pid=$$", r"pid=1\b")
    type_and_wait(page, "ip addr show eth0", rf"inet {re.escape(instance.ipv4[0])}/24")

    page.get_by_role("button", name="Stop").click()
    wait_badge(page, "stopped", stack)
    assert page.get_by_role("button", name="Start").is_enabled()
    assert page.get_by_role("button", name="Stop").is_disabled()
    page.get_by_role("button", name="Start").click()
    wait_badge(page, "running", stack)
    type_and_wait(page, "hostname", r"\nshop-1\s")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Terminate").click()
    wait_badge(page, "terminated", stack)
    assert page.evaluate("window.__berthPageId") == page_id  # every change arrived without a reload
    assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}
