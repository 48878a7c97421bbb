"""Issue 6 in a real Chromium: a staff user enrols a host, starts it with the exact commands
the page shows (its own Redis credential), watches it come online without a reload, disables
hosts from the pages, and new orders follow."""

import re
import secrets
import shlex

import pytest
import redis
from django.contrib.auth import get_user_model

from panel.hosts.models import Host
from panel.instances.models import Instance
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack import chromium
from tests.stack.fleet import (  # noqa: F401
    FleetHost,
    fleet_fixture,
    fresh_fleet_fixture,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]



@pytest.fixture
def browser(monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs in this thread
    with sync_playwright() as p:
        browser = chromium.launch(p)
        yield browser
        browser.close()


@pytest.fixture
def enrolled_hosts(fresh_fleet):
    """Hosts the test starts from the enrol page's commands, stopped and swept after the
    browser has closed (pyroute2 cannot run inside Playwright's event loop)."""
    started: list[FleetHost] = []
    yield started
    for host in started:
        for proc in [p for p in fresh_fleet.procs if p.startswith(f"enrolled-{host.name}-")]:
            fresh_fleet.stop(proc)
        fresh_fleet.sweep(host)
        host.driver().teardown_host()


def badge_text(page, host_id: int) -> str:
    return page.locator(f'tr[data-host-row="{host_id}"] [data-host-status]').inner_text().strip()


def test_enrol_start_disable_and_placement_follows(fresh_fleet, enrolled_hosts, browser):
    fleet = fresh_fleet
    first = fleet.hosts[0]
    rows = fleet.seed(first)
    wait_until(lambda: Host.objects.filter(name=first.name, status="online").exists(), 30, "the first host", fleet)
    get_user_model().objects.create_user("ops", password="a long enough password", is_staff=True)
    customer = CustomerFactory(max_instances=10)

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(fleet.url + "login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$|/instances/"))

    # Enrol: a clear error first, then the host.
    name, octet = f"e{secrets.token_hex(3)}", 200 + secrets.randbelow(50)
    page.goto(fleet.url + "staff/hosts/enrol/")
    page.get_by_label("Name").fill(name)
    page.get_by_label("IPv4 pool").fill(first.network)  # taken by the first host
    page.get_by_label("Bridge").fill(f"be{name[1:]}")
    page.get_by_label("State directory").fill(str(fleet.root / name))
    page.get_by_label("First uid").fill(str(300_000_000 + secrets.randbelow(900) * 65536 * 64))
    page.get_by_role("button", name="Enrol").click()
    assert f"overlaps host {first.name}" in page.locator("[role=alert]").first.inner_text()
    page.get_by_label("IPv4 pool").fill(f"10.{octet}.{secrets.randbelow(250)}.0/24")
    page.get_by_role("button", name="Enrol").click()
    page.get_by_role("heading", name=f"Host {name} enrolled").wait_for()
    commands = page.locator("pre[data-host-command]").all_inner_texts()
    assert len(commands) == 2 and "only time the credential is shown" in page.content()
    [url] = {re.search(r"BERTH_REDIS_URL=(\S+)", c).group(1) for c in commands}
    assert redis.Redis.from_url(url).ping()  # the credential the page showed works in Redis
    enrolled = Host.objects.get(name=name)

    page.goto(fleet.url + "staff/hosts/")
    assert badge_text(page, enrolled.pk) == "never seen"
    page.evaluate("window.__berthPageId = 42")
    env = dict(a.split("=", 1) for a in shlex.split(commands[0])[1:] if a.startswith("BERTH_"))
    enrolled_hosts.append(FleetHost(env=env, network=enrolled.ip_pool.network, secret=""))
    fleet.run_commands(name, commands)
    page.wait_for_function(
        "id => document.querySelector(`tr[data-host-row=\"${id}\"] [data-host-status]`).textContent.trim() === 'online'",
        arg=enrolled.pk, timeout=60_000,
    )
    assert page.evaluate("window.__berthPageId") == 42  # it came online without a reload

    # Disable the first host from the list: new orders go to the enrolled one.
    page.get_by_role("button", name=f"Disable {first.name}").click()
    page.locator(f'tr[data-host-row="{rows["hosts"][first.name].pk}"] [data-host-flag]').wait_for()
    assert not Host.objects.get(name=first.name).is_enabled
    placed = [order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname=f"web{i}")
              for i in range(2)]
    assert {i.host.name for i in placed} == {name}
    wait_until(lambda: set(Instance.objects.filter(host__name=name).values_list("state", flat=True)) == {"running"},
               60, "instances running on the enrolled host", fleet)

    # Its page lists them; disabling it there sends the next order back to the first host.
    page.goto(fleet.url + f"staff/hosts/{enrolled.pk}/")
    for instance in placed:
        assert page.locator(f'[data-instance-row="{instance.pk}"]').is_visible()
    page.get_by_role("button", name="Disable").click()
    page.get_by_text("Disabled: no new instances are placed here.").wait_for()
    page.goto(fleet.url + "staff/hosts/")
    page.get_by_role("button", name=f"Enable {first.name}").click()
    page.get_by_role("button", name=f"Disable {first.name}").wait_for()
    third = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="web3")
    assert third.host.name == first.name
    page.goto(fleet.url + "staff/audit/?action=host.")
    text = page.locator("main").inner_text()
    assert f"Disabled host {name}" in text and f"Enrolled host {name}" in text
