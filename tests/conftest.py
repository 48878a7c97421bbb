"""Fixtures shared by the whole suite."""

import pytest

from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory


@pytest.fixture
def customer(db):
    return CustomerFactory()


@pytest.fixture
def other_customer(db):
    return CustomerFactory()


@pytest.fixture
def plan(db):
    return PlanFactory(vcpus=1, memory_mib=256)


@pytest.fixture
def image(db):
    return ImageFactory(name="busybox")


@pytest.fixture
def host(db):
    return HostFactory()


@pytest.fixture
def sent_tasks(monkeypatch):
    """Tasks the panel sends to hosts, captured instead of queued."""
    sent = []

    def send_task(name, args=None, kwargs=None, queue=None, **options):
        sent.append({"name": name, "kwargs": kwargs or {}, "queue": queue})

    from panel.instances import dispatch

    monkeypatch.setattr(dispatch.celery_app, "send_task", send_task)
    return sent
