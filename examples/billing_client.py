"""A worked example of a billing system driving Berth's API (see api-contract.md).

It creates a customer and a service, waits until the service runs, suspends, unsuspends and
terminates it, and follows every state change through signed webhooks on a small local
receiver. Standard library only, so it can be copied into any billing module.

    python examples/billing_client.py --url http://127.0.0.1:8000/ --token berth_… \\
        --plan 1 --image 1 --webhook-secret SECRET --webhook-port 8765

An admin first registers the receiver (http://<this machine>:8765/) with the same secret
under Webhook endpoints in the admin: the example follows the service through webhooks.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ApiError(Exception):
    """An error answer from the API: its RFC 9457 problem details."""

    def __init__(self, status: int, problem: dict[str, Any]):
        super().__init__(f"{status} {problem.get('title')}: {problem.get('detail')}")
        self.status, self.problem = status, problem


class BillingClient:
    """The calls a billing module makes; every error becomes an ApiError."""

    def __init__(self, base_url: str, token: str, timeout: float = 10):
        self.base_url = base_url.rstrip("/") + "/api/v1/"
        self.token, self.timeout = token, timeout

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, json.loads(exc.read() or b"{}")) from None

    def create_customer(self, *, external_id: str, email: str, name: str = "") -> dict:
        return self.call("POST", "customers/", {"external_id": external_id, "email": email, "name": name})[1]

    def create_service(self, *, external_id: str, customer: int | str, plan: int, image: int,
                       hostname: str) -> dict:
        """Safe to retry after a timeout: the same external_id never makes a second service."""
        body = {"external_id": external_id, "customer": customer, "plan": plan, "image": image,
                "hostname": hostname}
        for attempt in range(3):
            try:
                return self.call("POST", "services/", body)[1]
            except (TimeoutError, urllib.error.URLError):
                if attempt == 2:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def service(self, service_id: int) -> dict:
        return self.call("GET", f"services/{service_id}/")[1]

    def action(self, service_id: int, name: str, body: dict | None = None) -> dict:
        """start, stop, reboot, suspend, unsuspend, terminate, change-plan: the operation."""
        return self.call("POST", f"services/{service_id}/{name}", body)[1]

    def operation(self, operation_id: int) -> dict:
        return self.call("GET", f"operations/{operation_id}/")[1]

    def sso_link(self, service_id: int) -> str:
        return self.call("POST", f"services/{service_id}/sso")[1]["url"]

    def usage(self, service_id: int, start: str, end: str) -> dict:
        return self.call("GET", f"services/{service_id}/usage/?from={start}&to={end}")[1]

    def wait_for_operation(self, operation_id: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            operation = self.operation(operation_id)
            if operation["state"] in ("succeeded", "failed"):
                return operation
            time.sleep(0.5)
        raise TimeoutError(f"operation {operation_id} did not finish")


class WebhookReceiver:
    """Receives Berth's webhooks on a local port and keeps the ones with a valid signature."""

    def __init__(self, secret: str, port: int = 0, host: str = "127.0.0.1"):
        self.secret = secret.encode()
        self.events: queue.Queue[dict] = queue.Queue()
        self.rejected = 0
        # A retry after a lost answer sends an event again: its "id" says it is the same one.
        self.event_ids: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not receiver.verify(body, self.headers.get("X-Berth-Signature", "")):
                    receiver.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                event = json.loads(body)
                with receiver.lock:
                    fresh = event.get("id") not in receiver.event_ids
                    receiver.event_ids.add(event.get("id"))
                if fresh:
                    receiver.events.put(event)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def verify(self, body: bytes, signature: str) -> bool:
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    def wait_for_state(self, service_id: int, state: str, timeout: float = 60) -> list[str]:
        """Block until a webhook says the service reached ``state``; the states seen on the way
        (Berth sends one service's changes to a receiver in the order they happened)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no webhook for {state}; saw {seen}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event["event"] != "service.state_changed" or event["service"]["id"] != service_id:
                continue
            seen.append(event["service"]["state"])
            if seen[-1] == state:
                return seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_demo(client: BillingClient, receiver: WebhookReceiver, *, plan: int, image: int,
             log=print) -> dict[str, Any]:
    """The whole life of one service, as a billing system drives it."""
    tag = uuid.uuid4().hex[:8]
    customer = client.create_customer(external_id=f"demo-{tag}", email=f"demo-{tag}@example.com")
    log(f"customer #{customer['id']} ({customer['external_id']})")
    service = client.create_service(external_id=f"svc-{tag}", customer=customer["external_id"],
                                    plan=plan, image=image, hostname=f"demo-{tag}")
    log(f"service #{service['id']} ordered on {service['host']} with {service['ipv4']}")
    states = {"create": receiver.wait_for_state(service["id"], "running")}
    log(f"running (webhooks: {' → '.join(states['create'])})")
    client.action(service["id"], "suspend", {"reason": "invoice overdue"})
    states["suspend"] = receiver.wait_for_state(service["id"], "suspended")
    log("suspended")
    client.action(service["id"], "unsuspend")
    states["unsuspend"] = receiver.wait_for_state(service["id"], "running")
    log("running again")
    client.action(service["id"], "terminate")
    states["terminate"] = receiver.wait_for_state(service["id"], "terminated")
    final = client.service(service["id"])
    log(f"terminated; addresses left: {final['ipv4']}")
    return {"customer": customer, "service": final, "states": states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Berth's base URL")
    parser.add_argument("--token", required=True, help="a billing token")
    parser.add_argument("--plan", type=int, required=True)
    parser.add_argument("--image", type=int, required=True)
    parser.add_argument("--webhook-secret", required=True)
    parser.add_argument("--webhook-port", type=int, default=8765)
    parser.add_argument("--webhook-host", default="127.0.0.1")
    args = parser.parse_args()
    receiver = WebhookReceiver(args.webhook_secret, port=args.webhook_port, host=args.webhook_host)
    print(f"webhook receiver on {receiver.url}")
    try:
        run_demo(BillingClient(args.url, args.token), receiver, plan=args.plan, image=args.image)
    finally:
        receiver.close()


if __name__ == "__main__":
    main()
