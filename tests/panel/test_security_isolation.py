"""Tenant isolation across every surface, found by introspection so a route added later is
walked too: every URL pattern (``get_resolver()``) and every admin page, every API operation
(from the OpenAPI schema), every WebSocket route — as an anonymous visitor, as a second
customer, and as the owner or an admin (the positive control: without it, a URL that is
broken for everyone would pass for "protected").

A new route fails here until it either refuses strangers or is listed in PUBLIC on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib import admin
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from panel.accounts.models import SshKey
from panel.api.services.tokens import create_token
from panel.asgi import application
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from panel.realtime.routing import websocket_urlpatterns
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

# URL names anyone may open (pages before login, one-time links, the API's description).
PUBLIC = {
    "login", "logout", "signup", "password_reset", "password_reset_done",
    "password_reset_confirm", "password_reset_complete", "sso-login", "api-schema", "api-docs",
}
# Where a refused visitor may be sent.
LOGIN_PATHS = ("/login/", "/admin/login/")
REFUSED = {401, 403, 404, 405}


@dataclass
class World:
    owner: object
    stranger: object
    staff: object
    instance: Instance
    vm: Instance
    operation: Operation
    ssh_key: SshKey
    token_id: int
    owner_key: str
    stranger_key: str
    billing_key: str
    host_name: str


@pytest.fixture
def world(sent_tasks) -> World:
    host = HostFactory()
    plan, vm_plan = PlanFactory(), PlanFactory(kind="vm")
    image, vm_image = ImageFactory(name="busybox"), ImageFactory(kind="vm", name="tiny")
    owner, stranger = CustomerFactory(), CustomerFactory()
    staff = UserFactory(is_staff=True, is_superuser=True)
    instance = order_instance(customer=owner, plan=plan, image=image, hostname="mine")
    vm = order_instance(customer=owner, plan=vm_plan, image=vm_image, hostname="myvm")
    for ordered in (instance, vm):
        operation = ordered.operations.get()
        results.record_operation_started(operation.pk)
        results.record_operation_finished(operation.pk, ok=True, power_state="running")
    key = SshKey.objects.create(customer=owner, name="laptop", public_key="ssh-ed25519 AAAA x",
                                fingerprint="SHA256:x")
    token, owner_key = create_token(name="own", scope="customer", customer=owner)
    return World(
        owner=owner, stranger=stranger, staff=staff, instance=instance, vm=vm,
        operation=instance.operations.get(), ssh_key=key, token_id=token.pk, owner_key=owner_key,
        stranger_key=create_token(name="other", scope="customer", customer=stranger)[1],
        billing_key=create_token(name="billing", scope="billing")[1], host_name=host.name,
    )


# --- every URL pattern --------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    name: str
    route: str  # e.g. "instances/<int:pk>/<str:action>/"
    params: tuple[tuple[str, str], ...]  # (name, converter)


def routes() -> list[Route]:
    """Every path() route of the project, with its full prefix (admin's regexes aside: the
    admin is walked model by model below)."""
    found: list[Route] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if getattr(pattern, "app_name", None) == "admin":
                    continue
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                if route.startswith("^") or route.startswith("api/v1/^"):
                    continue  # the API's catch-all 404
                params = tuple(re.findall(r"<(?:(\w+):)?(\w+)>", route))
                found.append(Route(pattern.name or route, route,
                                   tuple((name, conv or "str") for conv, name in params)))

    walk(get_resolver().url_patterns, "")
    return found


def _object_id(route: Route, param: str, world: World) -> str:
    name = route.name
    if name == "ssh-key-delete":
        return str(world.ssh_key.pk)
    if name == "api-token-revoke":
        return str(world.token_id)
    if name == "api-operation":
        return str(world.operation.pk)
    if name == "api-customer":
        return str(world.owner.pk)
    if name.startswith("staff-host"):
        return str(world.instance.host_id)
    if name.startswith("staff-plan"):
        return str(world.instance.plan_id)
    if name.startswith("staff-image"):
        return str(world.instance.image_id)
    if name.startswith("staff-customer"):
        return str(world.owner.pk)
    return str(world.instance.pk)


STRINGS = {"part": "summary", "action": "start", "switch": "disable", "token": "x" * 32,
           "uidb64": "MQ", "name": "__host__"}


def fill(route: Route, world: World) -> str:
    url = "/" + route.route
    for param, conv in route.params:
        if conv in ("int", "api_id"):
            value = _object_id(route, param, world)
        else:
            value = STRINGS.get(param, "x")
            if value == "__host__":
                value = world.host_name
        url = re.sub(rf"<(?:\w+:)?{param}>", value, url, count=1)
    return url


def carries_owned_object(route: Route) -> bool:
    return any(conv in ("int", "api_id") for _, conv in route.params)


def is_staff_route(route: Route) -> bool:
    return route.name.startswith("staff-") or route.route.startswith(("staff/", "metrics"))


def _client(user=None) -> Client:
    client = Client(raise_request_exception=False)  # a crash must show as a 500, not stop the walk
    if user is not None:
        client.force_login(user)
    return client


def _refused(response) -> bool:
    if response.status_code in REFUSED:
        return True
    return response.status_code == 302 and response["Location"].split("?")[0].endswith(LOGIN_PATHS)


ALL_ROUTES = routes()


def test_the_walk_finds_every_kind_of_route():
    names = {r.name for r in ALL_ROUTES}
    assert {"instance-detail", "instance-action", "api-service", "staff-host-detail", "ssh-key-delete"} <= names
    assert len(ALL_ROUTES) > 40


def test_every_url_refuses_anonymous_visitors_and_strangers(world):
    """GET and POST of every route, with the owner's object ids in it, as an anonymous visitor
    and as another customer: refused (401/403/404/405, or sent to a login page), never a 5xx,
    and nothing written."""
    problems = []
    writes_before = (Operation.objects.count(), SshKey.objects.count(), Instance.objects.count())
    visitors = (("anonymous", _client()), ("stranger", _client(world.stranger.user)))
    for route in ALL_ROUTES:
        url = fill(route, world)
        for who, client in visitors:
            for method in ("get", "post"):
                response = getattr(client, method)(url)
                if response.status_code >= 500:
                    problems.append(f"{who} {method.upper()} {url}: {response.status_code}")
                    continue
                if route.name in PUBLIC:
                    continue
                if who == "stranger" and not carries_owned_object(route) and not is_staff_route(route) \
                        and not url.startswith("/api/"):
                    continue  # the stranger's own pages (profile, keys list, order form)
                if not _refused(response):
                    problems.append(f"{who} {method.upper()} {url} ({route.name}): {response.status_code}")
    assert not problems, ("Reachable by someone who must be refused (protect the view, or add "
                          "the route to PUBLIC if anyone may open it):\n" + "\n".join(problems))
    assert (Operation.objects.count(), SshKey.objects.count(), Instance.objects.count()) == writes_before


def test_the_rightful_user_does_reach_each_object_url(world):
    """The control: the same URLs answer their owner (or an admin, for staff pages), so the
    refusals above come from the access checks, not from URLs that lead nowhere. (A 405 is a
    view that takes only POST: it exists.)"""
    problems = []
    for route in ALL_ROUTES:
        if not carries_owned_object(route) or route.name in PUBLIC or route.route.startswith("api/"):
            continue  # the API is token-authenticated: its walk is below
        user = world.staff if is_staff_route(route) else world.owner.user
        response = _client(user).get(fill(route, world))
        location = response.get("Location", "").split("?")[0]
        if response.status_code not in (200, 302, 405) or location.endswith(LOGIN_PATHS):
            problems.append(f"{route.name} {fill(route, world)}: {response.status_code} {location}")
    assert not problems, "\n".join(problems)


def test_every_admin_page_refuses_customers(world):
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
        row = model.objects.first()
        if row is not None:
            urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[row.pk]))
    for client in (_client(), _client(world.owner.user), _client(world.stranger.user)):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    assert _client(world.staff).get(urls[1]).status_code == 200


# --- every API operation, from the schema ---------------------------------------------------

def api_operations() -> list[tuple[str, str]]:
    schema = APIClient().get("/api/v1/schema/", {"format": "json"}).json()
    return sorted((method.upper(), path) for path, item in schema["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete"))


def _api(key: str | None) -> APIClient:
    client = APIClient()
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _api_url(path: str, world: World) -> str:
    ids = {"customers": world.owner.pk, "operations": world.operation.pk}
    resource = path.split("/")[3]
    # A snapshot's name and a backup's id (panel/backups): any, the service's check comes first.
    path = path.replace("{name}", "snap").replace("{backup_id}", "1")
    return path.replace("{id}", str(ids.get(resource, world.instance.pk)))


def test_every_api_operation_refuses_no_token_and_other_customers(world):
    operations = api_operations()
    assert len(operations) >= 15
    before = (Operation.objects.count(), Instance.objects.count())
    for method, path in operations:
        if path == "/api/v1/schema/":
            continue
        url = _api_url(path, world)
        anonymous = _api(None).generic(method, url, "{}", content_type="application/json")
        assert anonymous.status_code == 401, f"no token {method} {url}: {anonymous.status_code}"
        session = _client(world.owner.user).generic(method, url, "{}", content_type="application/json")
        assert session.status_code == 401, f"a session cookie must not work for {method} {url}"
        if "{id}" not in path and method == "GET":
            continue  # lists: filtered to the caller (checked below)
        stranger = _api(world.stranger_key).generic(method, url, "{}", content_type="application/json")
        assert stranger.status_code in (403, 404), f"stranger {method} {url}: {stranger.status_code}"
        assert stranger["Content-Type"] == "application/problem+json"
    assert (Operation.objects.count(), Instance.objects.count()) == before
    # The control: the owner's token reaches its service; the lists show the stranger nothing.
    assert _api(world.owner_key).get(f"/api/v1/services/{world.instance.pk}/").status_code == 200
    assert _api(world.stranger_key).get("/api/v1/services/").json()["results"] == []
    assert len(_api(world.owner_key).get("/api/v1/services/").json()["results"]) == 2


# --- every WebSocket route -------------------------------------------------------------------

def _ws_paths(world: World) -> list[tuple[str, str]]:
    paths = []
    for pattern in websocket_urlpatterns:
        route = str(pattern.pattern)
        target = world.vm if "vnc" in route else world.instance
        paths.append((route, "/" + re.sub(r"<int:\w+>", str(target.pk), route)))
    return paths


def _cookie(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
            (b"origin", b"http://127.0.0.1")]


async def _connects(path: str, headers: list[tuple[bytes, bytes]]) -> bool:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected


async def test_every_websocket_route_refuses_anonymous_visitors_and_strangers(world):
    from asgiref.sync import sync_to_async  # noqa: PLC0415

    paths = _ws_paths(world)
    assert len(paths) == len(websocket_urlpatterns) >= 3
    owner, stranger = await sync_to_async(_cookie)(world.owner.user), await sync_to_async(_cookie)(world.stranger.user)
    for route, path in paths:
        assert not await _connects(path, [(b"origin", b"http://127.0.0.1")]), f"anonymous reached {path}"
        if "<int:" in route:
            assert not await _connects(path, stranger), f"a stranger reached {path}"
            assert await _connects(path, owner), f"the owner could not reach {path}"  # the control
        else:
            assert await _connects(path, stranger)  # their own feed: what it carries is below
    # A session from another site (cross-site WebSocket hijacking) is refused too.
    foreign = [owner[0], (b"origin", b"https://evil.example")]
    for _, path in paths:
        assert not await _connects(path, foreign), f"a foreign origin reached {path}"
    await sync_to_async(Session.objects.all().delete)()


async def test_the_events_feed_carries_only_the_callers_instances(world):
    from asgiref.sync import sync_to_async  # noqa: PLC0415

    from panel.instances.states import transition  # noqa: PLC0415

    feeds = {}
    for who, user in (("owner", world.owner.user), ("stranger", world.stranger.user)):
        feeds[who] = WebsocketCommunicator(application, "/ws/events/", headers=await sync_to_async(_cookie)(user))
        connected, _ = await feeds[who].connect(timeout=5)
        assert connected
    await sync_to_async(transition)(world.instance.pk, "stopped")
    seen = {}
    for who, communicator in feeds.items():
        seen[who] = []
        while not await communicator.receive_nothing(timeout=1.5):
            seen[who].append(await communicator.receive_json_from())
        await communicator.disconnect()
    states = {who: [e for e in events if e.get("type") == "instance.state"] for who, events in seen.items()}
    assert [e["instance"]["state"] for e in states["owner"]] == ["stopped"], seen  # the control
    assert states["stranger"] == [], seen
