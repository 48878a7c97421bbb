"""Reports are carried out only when the host they are about signed them (hosts with a
credential); hosts without one are trusted as before."""

import pytest

from panel.hosts.credentials import hash_secret
from panel.hosts.reports import HostReportAnnotation, ReportRefused, check_report
from panel.instances.services.ordering import order_instance
from tests.factories import HostFactory
from workers.config import SIGNATURE_HEADER, SIGNER_HEADER, report_key, report_signature

pytestmark = pytest.mark.django_db

FACTS = {"cpus": 8, "load": (0.5, 0.25, 0.125), "instances": {"running": 1}}


def signed(secret: str, signer: str, task: str, kwargs: dict, task_id: str = "t-1") -> dict:
    sig = report_signature(report_key(secret), task=task, task_id=task_id, args=(), kwargs=kwargs)
    return {SIGNER_HEADER: signer, SIGNATURE_HEADER: sig}


@pytest.fixture
def a():
    return HostFactory(name="a", credential_hash=hash_secret("secret-a"), pool="10.91.0.0/24")


@pytest.fixture
def b():
    return HostFactory(name="b", credential_hash=hash_secret("secret-b"), pool="10.92.0.0/24")


def check(task, kwargs, headers, task_id="t-1"):
    # What the panel decoded: JSON turned the tuple into a list; the signature still holds.
    decoded = {**kwargs, "facts": {**kwargs["facts"], "load": list(kwargs["facts"]["load"])}} if "facts" in kwargs else kwargs
    check_report(task=task, task_id=task_id, args=[], kwargs=decoded, headers=headers)


def test_a_host_signs_its_own_heartbeat(a):
    kwargs = {"host_name": "a", "facts": FACTS}
    check("berth.panel.host_heartbeat", kwargs, signed("secret-a", "a", "berth.panel.host_heartbeat", kwargs))


def test_a_host_cannot_report_for_another(a, b):
    kwargs = {"host_name": "b", "facts": FACTS}
    with pytest.raises(ReportRefused, match="not signed by it"):
        check("berth.panel.host_heartbeat", kwargs, signed("secret-a", "a", "berth.panel.host_heartbeat", kwargs))
    with pytest.raises(ReportRefused, match="does not match"):  # claiming to be b without b's key
        check("berth.panel.host_heartbeat", kwargs, signed("secret-a", "b", "berth.panel.host_heartbeat", kwargs))
    with pytest.raises(ReportRefused, match="signer: none"):
        check("berth.panel.host_heartbeat", kwargs, {})


def test_a_changed_report_or_task_id_breaks_the_signature(a):
    kwargs = {"host_name": "a", "facts": FACTS}
    headers = signed("secret-a", "a", "berth.panel.host_heartbeat", kwargs)
    with pytest.raises(ReportRefused):
        check("berth.panel.host_heartbeat", {**kwargs, "facts": {**FACTS, "cpus": 64}}, headers)
    with pytest.raises(ReportRefused):
        check("berth.panel.host_heartbeat", kwargs, headers, task_id="t-2")
    with pytest.raises(ReportRefused):
        check("berth.panel.power_state", kwargs, headers)


def test_operation_reports_are_checked_against_the_operations_host(a, b, customer, plan, image):
    instance = order_instance(customer=customer, plan=plan, image=image, hostname="web")
    operation = instance.operations.get()
    mine = "a" if instance.host.name == "a" else "b"
    other = "b" if mine == "a" else "a"
    kwargs = {"operation_id": operation.pk, "ok": True, "power_state": "running"}
    task = "berth.panel.operation_finished"
    check_report(task=task, task_id="t", args=[], kwargs=kwargs, headers=signed(f"secret-{mine}", mine, task, kwargs, "t"))
    with pytest.raises(ReportRefused):
        check_report(task=task, task_id="t", args=[], kwargs=kwargs,
                     headers=signed(f"secret-{other}", other, task, kwargs, "t"))


def test_hosts_without_a_credential_are_trusted_as_before(host):
    assert not host.credential_hash
    check_report(task="berth.panel.host_heartbeat", task_id="t", args=[], kwargs={"host_name": host.name, "facts": {}},
                 headers={})


def test_only_report_tasks_are_annotated():
    class Task:
        name = "berth.panel.host_heartbeat"

    class Other:
        name = "berth.panel.send_due_webhooks"

    assert "@__call__" in HostReportAnnotation().annotate(Task)
    assert HostReportAnnotation().annotate(Other) is None
