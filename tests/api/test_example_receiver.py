"""The example billing client's webhook receiver (examples/billing_client.py): it keeps signed
events once each, however often Berth had to send them, and refuses unsigned ones."""

import hashlib
import hmac
import json
import urllib.error
import urllib.request

import pytest

from examples.billing_client import WebhookReceiver


def _post(receiver, body: bytes, secret: bytes = b"example-secret") -> int:
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(receiver.url, data=body, method="POST",
                                     headers={"X-Berth-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def receiver():
    made = WebhookReceiver("example-secret")
    yield made
    made.close()


def _event(event_id: str, state: str) -> bytes:
    return json.dumps({"event": "service.state_changed", "id": event_id,
                       "service": {"id": 7, "state": state}, "previous_state": None}).encode()


def test_a_resent_event_is_kept_once(receiver):
    assert _post(receiver, _event("a", "provisioning")) == 204
    assert _post(receiver, _event("a", "provisioning")) == 204  # its answer was lost: sent again
    assert _post(receiver, _event("b", "running")) == 204
    assert receiver.wait_for_state(7, "running", timeout=5) == ["provisioning", "running"]


def test_a_wrong_signature_is_refused_and_not_kept(receiver):
    assert _post(receiver, _event("c", "running"), secret=b"not-the-secret") == 401
    assert receiver.rejected == 1 and receiver.events.empty()
