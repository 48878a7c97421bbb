"""Issue 8: a console survives restarts of Redis, on a stack with a Redis of its own (the
machine's shared one is never touched). Once Redis comes back with its data, once empty:
a viewer connected throughout gets every line exactly once, the agent rebuilds the scrollback
from what the console still holds, and typing works again."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest

from panel.instances.dispatch import build_spec
from panel.instances.services.ordering import order_instance
from tests.factories import CustomerFactory
from tests.stack.conftest import running_stack
from tests.stack.fault_tools import PrivateRedis
from tests.stack.helpers import session_headers
from tests.stack.test_console import Viewer, _wait_lines, assert_every_line_once, numbered_lines
from workers.drivers.base import InstanceSpec

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_stack(django_db_setup, django_db_blocker):
    directory = Path(tempfile.mkdtemp(prefix="berth-redis-", dir="/var/tmp"))
    redis = PrivateRedis(directory)
    redis.start()
    try:
        with running_stack(redis_url=redis.url) as stack:
            yield stack, redis
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _container(stack):
    """A running container and its instance row. The test process's Celery app talks to the
    shared Redis, not this stack's: the container is made with the host's driver directly."""
    rows = stack.seed()
    customer = CustomerFactory()
    with mock.patch("panel.instances.dispatch.send_operation"):
        instance = order_instance(customer=customer, plan=rows["plan"], image=rows["image"], hostname="redis-1")
    instance.refresh_from_db()
    stack.host_driver().create(InstanceSpec.from_dict(build_spec(instance)))
    return instance, session_headers(customer.user, stack.url)


def test_a_console_survives_redis_restarts_with_and_without_its_data(redis_stack):
    stack, redis = redis_stack
    instance, headers = _container(stack)
    url = f"{stack.ws_url}ws/instances/{instance.pk}/console/"
    count = 6000
    deadline = time.monotonic() + 30
    while True:  # the agent attaches at its next scan
        viewer = Viewer(url, headers, reconnect=True)
        try:
            viewer.run("true", timeout=3)
            break
        except TimeoutError:
            viewer.close()
            assert time.monotonic() < deadline, stack.logs("agent")
    try:
        viewer.send(f"{numbered_lines(count, 1000)}\r".encode())
        _wait_lines(viewer, 500)
        redis.stop()  # with its data (appendonly)
        time.sleep(1)
        redis.start()
        _wait_lines(viewer, len(viewer.numbers()) + 500, timeout=60)
        redis.stop()  # and now without: its files are gone
        for path in redis.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        time.sleep(1)
        redis.start()
        viewer.wait_for(b"@@LINES42@@", timeout=120)
        assert_every_line_once(viewer, count)
        assert "gap" not in viewer.kinds()
        assert viewer.run("echo typed-after-redis-came-back", timeout=30).strip() == "typed-after-redis-came-back"

        late = Viewer(url, headers)  # the scrollback was rebuilt from the console's own buffer
        late.wait_for(b"@@LINES42@@")
        assert_every_line_once(late, count, from_start=False)
        late.close()
    finally:
        viewer.close()
