"""Fixtures shared by the whole suite."""

import time

import pytest
from django.db import OperationalError
from django.db.backends.base.operations import BaseDatabaseOperations

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
        if args:
            sent[-1]["args"] = list(args)

    from panel.instances import dispatch

    monkeypatch.setattr(dispatch.celery_app, "send_task", send_task)
    return sent


@pytest.fixture(scope="session", autouse=True)
def _flush_retries_a_deadlock():
    """Transactional tests end with a TRUNCATE of every table. With a live stack (web server,
    workers, agent) still reading, PostgreSQL may pick that TRUNCATE as a deadlock's victim;
    a flush that fails leaves the next test the last one's rows. Try again, as an operator
    would."""
    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        for attempt in range(10):
            try:
                return original(self, sql_list)
            except OperationalError as exc:
                if "deadlock" not in str(exc) or attempt == 9:
                    raise
                time.sleep(0.2 * (attempt + 1))

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original
