"""The graphical console on the live stack: a VM ordered through the billing API, its VNC
server reached by a WebSocket through the panel (the host agent relays the loopback port over
Redis), a real RFB handshake and a framebuffer update, the access rules of the console, and
noVNC drawing the screen in Chromium."""

from __future__ import annotations

import json
import struct
import time
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from panel.accounts.models import Customer
from panel.api.services.tokens import create_token
from panel.audit.models import AuditEntry
from panel.instances.models import Instance
from panel.instances.services.actions import request_action
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack import chromium
from tests.stack.helpers import ConsoleClient, EventStream, session_headers
from tests.stack.test_vm_order_flow import BOOT, at_prompt, wait_operation, wait_state

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.stack,
              pytest.mark.django_db(transaction=True)]


def api(stack, key: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        stack.url + path.lstrip("/"), method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Rfb:
    """The client half of RFB 3.8 (RFC 6143), over the panel's WebSocket, enough to prove
    the bytes go both ways unchanged."""

    def __init__(self, url: str, headers=None):
        self.ws = connect(url, additional_headers=headers or [], open_timeout=10, max_size=None)
        self.buffer = b""

    def read(self, n: int, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < n:
            message = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            assert isinstance(message, bytes), f"a text frame on the VNC socket: {message!r}"
            self.buffer += message
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def handshake(self) -> tuple[int, int, str]:
        assert self.read(12) == b"RFB 003.008\n"  # the server speaks first
        self.ws.send(b"RFB 003.008\n")
        (count,) = struct.unpack("B", self.read(1))
        types = self.read(count)
        assert 1 in types, types  # "None": the VNC port is only on the host's loopback
        self.ws.send(b"\x01")
        assert self.read(4) == b"\x00\x00\x00\x00"  # SecurityResult: OK
        self.ws.send(b"\x01")  # ClientInit: shared, so several viewers can watch at once
        width, height = struct.unpack(">HH", self.read(4))
        self.read(16)  # pixel format
        (name_len,) = struct.unpack(">I", self.read(4))
        return width, height, self.read(name_len).decode()

    def framebuffer(self, width: int, height: int) -> bytes:
        """Ask for the whole screen in raw encoding; return the first rectangle's pixels."""
        self.ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
        self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        kind, _pad, rects = struct.unpack(">BBH", self.read(4))
        assert kind == 0 and rects >= 1, (kind, rects)  # FramebufferUpdate
        _x, _y, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
        assert encoding == 0
        return self.read(w * h * 4, timeout=60)  # 32 bpp: QEMU's default pixel format

    def close(self) -> None:
        self.ws.close()


def wait_for(instance: Instance, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while Instance.objects.get(pk=instance.pk).state != state:
        assert time.monotonic() < deadline, f"not {state}: {Instance.objects.get(pk=instance.pk).state}"
        time.sleep(0.1)


def vnc_url(stack, instance: Instance) -> str:
    return f"{stack.ws_url}ws/instances/{instance.pk}/vnc/"


def closed_with(url: str, headers=None) -> tuple[int, str]:
    ws = connect(url, additional_headers=headers or [], open_timeout=10)
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=15)
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.fixture
def vm_rows(stack):
    rows = stack.seed()
    stack.wait_for_vms()
    return rows


def test_a_vm_ordered_through_the_api_shows_its_screen_through_the_proxy(stack, vm_rows):
    key = create_token(name="billing", scope="billing")[1]
    status, customer = api(stack, key, "POST", "/api/v1/customers/",
                           {"external_id": "c-vnc", "email": "vnc@example.com"})
    assert status in (200, 201), customer
    status, service = api(stack, key, "POST", "/api/v1/services/", {
        "external_id": "s-vnc", "customer": customer["id"], "plan": vm_rows["vm_plan"].pk,
        "image": vm_rows["vm_image"].pk, "hostname": "screen-1"})
    assert status == 202, service
    instance = Instance.objects.get(pk=service["id"])
    owner = instance.customer.user
    headers = session_headers(owner, stack.url)
    events = EventStream(stack.ws_url, headers)
    try:
        wait_state(stack, events, instance, "running", BOOT)
    finally:
        events.close()

    # The serial console through a console ticket, as a billing client area would.
    status, ticket = api(stack, key, "POST", f"/api/v1/services/{instance.pk}/console/")
    assert status == 201, ticket
    console = ConsoleClient(stack.ws_url + ticket["url"].lstrip("/"))
    at_prompt(console, "screen-1")
    console.close()

    # The graphical console: the first bytes are the VM's VNC server's own greeting.
    rfb = Rfb(vnc_url(stack, instance), headers)
    width, height, name = rfb.handshake()
    assert width >= 640 and height >= 400, (width, height)
    assert instance.uuid.hex[:12] in name  # QEMU names the desktop after the domain
    pixels = rfb.framebuffer(width, height)
    assert len(pixels) == width * height * 4
    assert pixels.strip(b"\x00"), "the screen is all black"  # SeaBIOS's text at least

    # A second viewer at the same time (shared session), with a one-time console ticket.
    status, ticket = api(stack, key, "POST", f"/api/v1/services/{instance.pk}/console/")
    url = stack.ws_url + ticket["url"].lstrip("/").replace("/console/", "/vnc/")
    second = Rfb(url)
    assert second.handshake()[:2] == (width, height)
    second.close()
    with pytest.raises(InvalidStatus, match="403"):
        Rfb(url)  # the ticket worked once
    rfb.close()
    opened = AuditEntry.objects.filter(action="console.vnc", target_id=str(instance.pk))
    assert sorted(opened.values_list("data__via", flat=True)) == ["session", "ticket"]

    # Strangers are refused at the handshake; a stopped VM has no screen (and says so).
    with pytest.raises(InvalidStatus, match="403"):
        Rfb(vnc_url(stack, instance), session_headers(CustomerFactory().user, stack.url))

    # Suspended by billing: the open screen closes, and its owner cannot open it again.
    viewer = Rfb(vnc_url(stack, instance), headers)
    viewer.handshake()
    status, _ = api(stack, key, "POST", f"/api/v1/services/{instance.pk}/suspend")
    assert status == 202
    with pytest.raises(ConnectionClosed) as info:
        while True:
            viewer.ws.recv(timeout=30)
    assert info.value.rcvd.code == 4000, info.value.rcvd
    wait_for(instance, "suspended")
    with pytest.raises(InvalidStatus, match="403"):
        Rfb(vnc_url(stack, instance), headers)
    status, _ = api(stack, key, "POST", f"/api/v1/services/{instance.pk}/unsuspend")
    assert status == 202
    wait_for(instance, "running")
    Rfb(vnc_url(stack, instance), headers).handshake()

    op = request_action(instance=instance, action="stop")
    assert wait_operation(op).state == "succeeded"
    code, reason = closed_with(vnc_url(stack, instance), headers)
    assert code == 4404 and "not running" in reason

    status, _ = api(stack, key, "POST", f"/api/v1/services/{instance.pk}/terminate")
    assert status == 202
    wait_for(instance, "terminated")


def test_who_gets_a_screen_without_a_guest_running(stack):
    rows = stack.seed()
    customer = CustomerFactory()
    headers = session_headers(customer.user, stack.url)
    container = Instance.objects.create(
        customer=customer, kind="container", plan=rows["plan"], image=rows["image"],
        hostname="ct", host=rows["host"], state="running")
    code, reason = closed_with(vnc_url(stack, container), headers)
    assert (code, reason) == (4400, "Only VMs have a graphical console.")
    suspended = Instance.objects.create(
        customer=customer, kind="vm", plan=rows["vm_plan"], image=rows["vm_image"],
        hostname="vm", host=rows["host"], state="suspended")
    with pytest.raises(InvalidStatus, match="403"):
        Rfb(vnc_url(stack, suspended), headers)  # the owner of a suspended VM: refused
    staff = get_user_model().objects.create_user("staff-1", is_staff=True)
    code, reason = closed_with(vnc_url(stack, suspended), session_headers(staff, stack.url))
    assert code == 4404  # staff get in; there is just no guest running (the host says so)
    assert not AuditEntry.objects.filter(action="console.vnc", target_id=str(container.pk))


@pytest.mark.browser
def test_novnc_connects_and_draws_the_screen(stack, vm_rows, monkeypatch, tmp_path):
    from playwright.sync_api import sync_playwright


    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop in this thread
    user = get_user_model().objects.create_user("vera", password="a long enough password")
    customer = Customer.objects.create(user=user, name="Vera")
    instance = order_instance(customer=customer, plan=vm_rows["vm_plan"],
                              image=vm_rows["vm_image"], hostname="desk-1")
    events = EventStream(stack.ws_url, session_headers(user, stack.url))
    try:
        wait_state(stack, events, instance, "running", BOOT)
    finally:
        events.close()
    with sync_playwright() as p:
        browser = chromium.launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(stack.url + "login/")
            page.get_by_label("Username").fill("vera")
            page.get_by_label("Password").fill("a long enough password")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(stack.url)
            page.goto(f"{stack.url}instances/{instance.pk}/#tab-screen")
            if not page.evaluate("[...document.scripts].some(s => s.src.endsWith('/js/vnc.js'))"):
                # The page template loads it once the Screen tab ships with it.
                page.add_script_tag(url="/static/js/vnc.js", type="module")
            page.wait_for_selector("#vnc[data-connected=true]", timeout=30_000)
            drawn = page.wait_for_function("""() => {
                const c = document.querySelector('#vnc canvas');
                if (!c || !c.width || !c.height) return false;
                const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let lit = 0;
                for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 96) lit++;
                return lit > 100 ? [c.width, c.height, lit] : false;
            }""", timeout=30_000).json_value()
            print(f"\nnoVNC canvas {drawn[0]}x{drawn[1]}, {drawn[2]} lit pixels")
            page.screenshot(path=str(tmp_path / "vnc.png"))
            print(f"screenshot: {tmp_path / 'vnc.png'}")
            assert page.locator("#vnc-status").inner_text().startswith("Connected")
        finally:
            browser.close()
