"""The customer's journey in a real Chromium against the live stack: sign up, order a container
(a double click makes one), watch it come up without a reload, type in its console, read its
usage graphs, stop, start and terminate it (terminate confirmed in a dialog); a second customer
gets a 404 for its page and cannot open its console socket. Each page is also checked for
labels, landmarks, contrast and phone width, and photographed into docs/screenshots/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from playwright.sync_api import expect

from panel.accounts.models import Customer, SiteSettings
from panel.instances.models import Instance
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from panel.instances.validators import validate_hostname
from tests.stack import chromium
from tests.stack.helpers import host_leftovers

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}
PASSWORD = "a long enough password"

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

# What a page must get right for people using a keyboard, a screen reader or a small screen:
# one main landmark and one h1, a title, a name for every control, no sideways scrolling, and
# text contrast of WCAG AA (4.5:1, 3:1 for large text) against the background it is drawn on.
AUDIT = r"""() => {
  const problems = [];
  if (!document.title.trim()) problems.push("no title");
  if (document.querySelectorAll("main").length !== 1) problems.push("not one <main>");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not one <h1>");
  if (!document.documentElement.lang) problems.push("no lang");
  const visible = (el) => el.checkVisibility ? el.checkVisibility() : el.getClientRects().length > 0;
  for (const el of document.querySelectorAll("input, select, textarea, button, a[href]")) {
    if (el.type === "hidden" || !visible(el) || el.closest(".xterm, .u-legend")) continue;
    const named = (el.labels && el.labels.length) || el.getAttribute("aria-label") ||
      el.getAttribute("aria-labelledby") || ((el.tagName === "BUTTON" || el.tagName === "A") && el.textContent.trim());
    if (!named) problems.push(`unnamed ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
  }
  if (document.scrollingElement.scrollWidth > window.innerWidth + 1) {
    // Name the culprits: the innermost elements reaching past the right edge.
    const wide = [...document.body.querySelectorAll("*")].filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1);
    const innermost = wide.filter((el) => !wide.some((other) => other !== el && el.contains(other)));
    const names = innermost.slice(0, 3).map((el) => `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}${el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : ""} "${el.textContent.trim().slice(0, 30)}"`);
    problems.push(`scrolls sideways: ${document.scrollingElement.scrollWidth}px in ${window.innerWidth}px (${names.join(", ")})`);
  }
  const rgba = (s) => { const p = s.match(/[\d.]+/g).map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const lum = (c) => ["r", "g", "b"].map((k) => { const v = c[k] / 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const over = (top, base) => ({ r: top.r * top.a + base.r * (1 - top.a), g: top.g * top.a + base.g * (1 - top.a), b: top.b * top.a + base.b * (1 - top.a), a: 1 });
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    return layers.reverse().reduce((base, c) => over(c, base), { r: 255, g: 255, b: 255, a: 1 });
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || seen.has(el)) continue;
    seen.add(el);
    if (!visible(el) || el.closest(".xterm, .uplot, :disabled, .skip, option, script, style")) continue;
    const style = getComputedStyle(el);
    const bg = background(el);
    const fg = over(rgba(style.color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) problems.push(`contrast ${ratio.toFixed(2)} < ${needed}: "${el.textContent.trim().slice(0, 40)}"`);
  }
  return problems;
}"""


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous ones, which Django would otherwise refuse next to a running loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as p:
        # Deaf to the veths and bridges the stack adds meanwhile (see tests/stack/chromium.py).
        browser = chromium.launch(p)
        yield browser
        browser.close()


def check_page(page, name: str | None = None, *, phone_of=None) -> None:
    """Audit the page (see AUDIT); with ``name``, photograph it at desktop width and, in a
    second context with the same login, at phone width (audited too)."""
    page.wait_for_load_state("networkidle")
    problems = page.evaluate(AUDIT)
    assert problems == [], f"{page.url}: {problems}"
    if name is None:
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
    context = page.context.browser.new_context(viewport=PHONE, storage_state=page.context.storage_state())
    try:
        phone = context.new_page()
        phone.goto(page.url)
        phone.wait_for_load_state("networkidle")
        if phone_of:
            phone_of(phone)
        problems = phone.evaluate(AUDIT)
        assert problems == [], f"{page.url} at 375 px: {problems}"
        phone.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
    finally:
        context.close()


def sign_up(browser, stack, username: str):
    """A new customer through the sign-up page; returns their logged-in page."""
    page = browser.new_page(viewport=DESKTOP)
    page.goto(stack.url + "signup/")
    page.get_by_label("Your name or company").fill(username.title())
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/instances/new/$"))
    return page


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


def server_message(hostname: str) -> str:
    try:
        validate_hostname(hostname)
    except ValidationError as exc:
        return exc.messages[0]
    return ""


def test_sign_up_order_watch_console_usage_and_lifecycle(stack, browser):
    stack.seed()
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_open": True})
    login = browser.new_page(viewport=DESKTOP)
    login.goto(stack.url + "login/")
    check_page(login, "login")
    login.goto(stack.url + "signup/")
    check_page(login, "signup")
    login.close()

    page = sign_up(browser, stack, "alice")
    assert "Welcome to Berth" in page.locator(".messages").inner_text()

    # The order page: the hostname is checked as it is typed, with the server's own words.
    hostname = page.get_by_label("Hostname")
    for bad in ("bad_name", "-x", "1234", "a.b"):
        hostname.fill(bad)
        assert page.locator("#id_hostname_error").inner_text() == server_message(bad), bad
        assert hostname.get_attribute("aria-invalid") == "true"
    hostname.fill("shop-1")
    assert page.locator("#id_hostname_error").is_hidden()
    page.get_by_role("radio", name="Virtual machine", exact=True).check()
    assert page.get_by_role("radio", name="vm-test").is_visible()
    assert page.get_by_role("radio", name="ct-test").is_hidden()
    page.get_by_role("radio", name="Container", exact=True).check()
    page.get_by_role("radio", name="ct-test").check()
    page.get_by_role("radio", name="busybox").check()
    page.get_by_role("radio", name="A root password").check()
    page.get_by_label("Root password", exact=True).fill("root secret 1234")
    page.get_by_label("Root password again").fill("root secret 1234")
    summary = page.locator(".order-summary").inner_text()
    assert "ct-test: 1 vCPU, 256 MiB, 1 GiB disk" in summary and "a month" in summary
    assert "10 of 10" in summary
    assert "After this order: 9 instances" in summary
    check_page(page, "order")

    clicked = time.monotonic()
    page.get_by_role("button", name="Order", exact=True).dblclick()
    page.wait_for_url(re.compile(r"/instances/\d+/$"))
    page_id = page.evaluate(WATCH_BADGE)
    instance = Instance.objects.get(hostname="shop-1")
    assert Instance.objects.count() == 1  # the double click made one instance
    assert instance.root_password_hash.startswith("$6$")

    wait_badge(page, "running", stack)
    prompt = type_and_wait(page, "", r"shop-1.*#")
    print(f"\nclick Order -> console prompt: {(time.monotonic() - clicked) * 1000:.0f} ms")
    states = page.evaluate("window.__states")
    assert states[-1] == "running" and set(states) <= {"pending", "provisioning", "running"}, states
    assert "shop-1" in prompt
    type_and_wait(page, "hostname", r"\nshop-1\s")
    type_and_wait(page, "echo pid=$$", r"pid=1\b")
    type_and_wait(page, "ip addr show eth0", rf"inet {re.escape(instance.ipv4[0])}/24")
    assert page.locator("#instance-ipv4").inner_text() == instance.ipv4[0]
    check_page(page, "instance-console")

    # Keyboard: the tabs move with the arrow keys; the history says who created it.
    page.get_by_role("tab", name="Console").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Usage").get_attribute("aria-selected") == "true"
    page.keyboard.press("ArrowRight")
    # Opening the tab re-reads the history from the server (a moment later).
    try:
        page.wait_for_function("() => /Create\\s+You\\s+.*\\s+succeeded/.test(document.getElementById('history').innerText)",
                               timeout=10_000)
    except Exception as exc:
        raise AssertionError(page.locator("#history").inner_text()) from exc

    # A second customer: no page, no console, no sight of it in their list.
    other = sign_up(browser, stack, "bob")
    assert other.goto(f"{stack.url}instances/{instance.pk}/").status == 404
    socket = other.evaluate("""url => new Promise(resolve => {
        const ws = new WebSocket(url);
        ws.onopen = () => resolve("opened");
        ws.onclose = (e) => resolve(`closed ${e.code}`);
    })""", f"{stack.ws_url}ws/instances/{instance.pk}/console/")
    assert socket == "closed 1006", socket  # the handshake was refused
    other.goto(stack.url)
    assert "shop-1" not in other.locator("main").inner_text()
    other.close()

    # Usage: the agent samples every 30 s; two samples make the first point of each graph.
    page.get_by_role("tab", name="Usage").click()
    page.wait_for_function("() => Number(document.getElementById('tab-usage').dataset.points || 0) >= 1",
                           timeout=100_000, polling=1000)
    assert page.locator("#chart-cpu canvas").count() == 1 and page.locator("#chart-net canvas").count() == 1
    assert page.locator("#usage-summary").inner_text().startswith("Latest (")
    check_page(page, "instance-usage", phone_of=lambda p: p.get_by_role("tab", name="Usage").click())
    page.get_by_role("tab", name="Console").click()

    page.get_by_role("button", name="Stop", exact=True).click()
    wait_badge(page, "stopped", stack)
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled()  # once stop finished
    expect(page.get_by_role("button", name="Stop", exact=True)).to_be_disabled()

    # A click that raced a state change is answered with the reason, not an error page.
    # (Enabled and clicked in one go: a late event re-renders the buttons, disabling it again.)
    page.evaluate("() => { const b = document.querySelector('[data-action=reboot]'); b.disabled = false; b.click(); }")
    page.wait_for_function("() => document.getElementById('action-message').textContent.length > 0")
    assert page.locator("#action-message").inner_text() == (
        "Cannot reboot an instance that is stopped. The page shows the current state.")

    page.get_by_role("button", name="Start", exact=True).click()
    wait_badge(page, "running", stack)
    type_and_wait(page, "hostname", r"\nshop-1\s")

    # Suspended by the provider: the page says so and why, and offers no action; then back.
    request_action(instance=instance, action="suspend", reason="Invoice 42 is unpaid.", source="api")
    wait_badge(page, "suspended", stack)
    expect(page.locator("#actions-card")).to_be_hidden()
    expect(page.locator("#suspended-notice")).to_contain_text("This instance is suspended: Invoice 42 is unpaid.")
    expect(page.locator("#suspended-notice")).to_contain_text("Only your provider can lift the suspension")
    check_page(page)
    instance.refresh_from_db()
    request_action(instance=instance, action="unsuspend", source="api")
    wait_badge(page, "running", stack)
    expect(page.locator("#actions-card")).to_be_visible()
    expect(page.locator("#suspended-notice")).to_have_count(0)
    type_and_wait(page, "hostname", r"\nshop-1\s")

    # Terminate: a dialog asks for the hostname; Esc backs out with focus where it was.
    terminate = page.get_by_role("button", name="Terminate…", exact=True)
    terminate.click()
    dialog = page.get_by_role("dialog", name="Terminate shop-1?")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page.evaluate("document.activeElement.dataset.action") == "terminate"
    terminate.click()
    dialog.get_by_label("Type the hostname to confirm").fill("shop-2")
    dialog.get_by_role("button", name="Terminate shop-1").click()
    expect(dialog.get_by_text("That is not shop-1; nothing was done.")).to_be_visible()
    expect(dialog.get_by_label("Type the hostname to confirm")).to_be_focused()
    instance.refresh_from_db()
    assert instance.state == "running"
    dialog.get_by_label("Type the hostname to confirm").fill("shop-1")
    dialog.get_by_role("button", name="Terminate shop-1").click()
    wait_badge(page, "terminated", stack)
    expect(page.locator("#actions-card")).to_be_hidden()
    assert page.evaluate("window.__berthPageId") == page_id  # every change arrived without a reload
    assert host_leftovers(instance.uuid.hex, f"bv{instance.uuid.hex[:12]}") == {}


def test_instance_list_follows_changes_live(stack, browser):
    rows = stack.seed()
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_open": True})
    page = sign_up(browser, stack, "carol")
    page.goto(stack.url)
    assert "No instances yet" in page.locator("main").inner_text()
    page.evaluate("window.__berthPageId = 1")
    customer = Customer.objects.get(user__username="carol")

    # Ordered elsewhere (the API, another tab): the row appears and goes to running by itself.
    instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="api-made")
    page.wait_for_selector(f'[data-instance-row="{instance.pk}"]', timeout=20_000)
    page.wait_for_function(
        "id => document.querySelector(`[data-instance-state='${id}']`).textContent.trim() === 'running'",
        arg=instance.pk, timeout=30_000)
    instance.refresh_from_db()
    assert page.locator(f'[data-instance-ipv4="{instance.pk}"]').inner_text() == instance.ipv4[0]
    assert page.evaluate("window.__berthPageId") == 1
    check_page(page, "instances")

    page.get_by_label("Search").fill("nothing-like-it")
    page.get_by_role("button", name="Filter").click()
    assert "No instances match" in page.locator("main").inner_text()
    page.goto(stack.url)
    page.evaluate("window.__berthPageId = 2")
    request_action(instance=instance, action="terminate")
    page.wait_for_selector(f'[data-instance-row="{instance.pk}"]', state="detached", timeout=30_000)
    assert "All your instances are terminated" in page.locator("main").inner_text()
    assert page.evaluate("window.__berthPageId") == 2
