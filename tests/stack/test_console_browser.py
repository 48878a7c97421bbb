"""Issue 8 in a real Chromium: when the web server restarts under an open instance page, the
page's console comes back by itself and resumes where it was (no reset, nothing twice), and
its events socket asks for what it missed, so a state change made while the server was down
shows without a reload."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model

from panel.accounts.models import Customer
from panel.instances.models import Instance
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.stack import chromium

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long enough password"


@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous ones, which Django would otherwise refuse next to a running loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = chromium.launch(p)
        yield browser
        browser.close()


def _wait_until(predicate, timeout: float, what: str, page=None):
    """Poll ``predicate``; with ``page``, wait through Playwright, which delivers the page's
    events (new sockets, frames) only while one of its calls runs."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(what)
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)
    return value


def _type(page, command: str, expected: str) -> str:
    page.locator("#console .xterm-helper-textarea").press_sequentially(command + "\n")
    return _wait_until(lambda: re.search(expected, page.locator("#console .xterm-rows").inner_text()) and
                       page.locator("#console .xterm-rows").inner_text(), 15, f"{expected!r} not on the console",
                       page)


def test_a_page_resumes_its_console_and_events_after_the_web_server_restarts(stack, browser):
    rows = stack.seed()
    user = get_user_model().objects.create_user("carol", password=PASSWORD)
    customer = Customer.objects.create(user=user, name="Carol")
    # Changes that publish events run in a thread: this one runs Playwright's event loop, next
    # to which the channel layer's group_send cannot be called.
    pool = ThreadPoolExecutor(1)
    instance = pool.submit(order_instance, customer=customer, plan=rows["plan"], image=rows["image"],
                           hostname="resume-1").result()
    _wait_until(lambda: Instance.objects.get(pk=instance.pk).state == "running", 30, stack.all_logs())

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sockets, texts = [], []

    def watch(ws):
        sockets.append(ws.url)
        ws.on("framereceived", lambda payload: texts.append((ws.url, payload)) if isinstance(payload, str) else None)

    page.on("websocket", watch)
    page.goto(stack.url + "login/")
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)
    page.goto(f"{stack.url}instances/{instance.pk}/")
    page.evaluate("() => { window.__sameDocument = true; }")
    page.wait_for_function("() => document.getElementById('console').dataset.connected === 'true'")
    _type(page, "echo before-$((1+1))", r"(?m)^before-2\s*$")

    stack.restart("web")
    console_url = f"/ws/instances/{instance.pk}/console/"
    resumed = _wait_until(lambda: [u for u in sockets if console_url in u and "resume=" in u], 60,
                          f"the console did not come back with ?resume=: {sockets}", page)
    page.wait_for_function("() => document.getElementById('console').dataset.connected === 'true'")
    screen = _type(page, "echo after-$((2+1))", r"(?m)^after-3\s*$")
    assert len(re.findall(r"(?m)^before-2\s*$", screen)) == 1, screen  # resumed, not replayed
    assert not [t for url, t in texts if url == resumed[-1] and '"reset"' in t]

    stack.stop("web")
    pool.submit(request_action, instance=instance, action="stop").result()  # while no web server runs
    _wait_until(lambda: Instance.objects.get(pk=instance.pk).state == "stopped", 30, stack.all_logs())
    stack.start("web", *stack.commands["web"])
    page.wait_for_function(
        "s => document.querySelector('[data-instance-state]').textContent.trim() === s", arg="stopped",
        timeout=60_000)
    assert page.evaluate("() => window.__sameDocument") is True  # no reload: the missed events were replayed
    assert [u for u in sockets if "/ws/events/" in u and "since=" in u]
    pool.shutdown()


def test_a_browser_that_fell_behind_shows_where_output_was_skipped(stack, browser):
    """The server's "gap" control (a viewer that read slower than the console wrote: see
    test_console.py's flood test) becomes a line of its own in the terminal, and the console
    goes on working. Chromium never reads slowly, so the gap is added to the real socket."""
    rows = stack.seed()
    user = get_user_model().objects.create_user("gavin", password=PASSWORD)
    customer = Customer.objects.create(user=user, name="Gavin")
    pool = ThreadPoolExecutor(1)
    instance = pool.submit(order_instance, customer=customer, plan=rows["plan"], image=rows["image"],
                           hostname="gap-1").result()
    pool.shutdown()
    _wait_until(lambda: Instance.objects.get(pk=instance.pk).state == "running", 30, stack.all_logs())

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    injected = []

    def route(ws):
        server = ws.connect_to_server()  # the page's frames go through unchanged

        def from_server(message):
            ws.send(message)
            if isinstance(message, str) and '"cursor"' in message and not injected:
                injected.append(message)
                ws.send(json.dumps({"type": "gap", "skipped_bytes": 13 * 1024}))

        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/ws/instances/\d+/console/"), route)
    page.goto(stack.url + "login/")
    page.get_by_label("Username").fill("gavin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)
    page.goto(f"{stack.url}instances/{instance.pk}/")
    page.wait_for_function("() => document.getElementById('console').dataset.connected === 'true'",
                           timeout=60_000)
    rows_text = lambda: page.locator("#console .xterm-rows").inner_text()  # noqa: E731
    _wait_until(lambda: "[… 13 KiB of output skipped …]" in rows_text(), 15,
                "the gap is not on the console", page)
    assert injected
    assert "13 KiB" in page.locator("#console-status").inner_text()
    _type(page, "echo after-$((2+3))", r"(?m)^after-5\s*$")  # the console goes on
