"""A host's Redis credential, against the real Redis: Celery's transport works with it, and it
opens nothing but the host's own keys; rotation cuts the old secret off; the panel restores the
users after a Redis restart without knowing any secret; no secret is ever stored or logged."""

import logging
import secrets

import pytest
import redis
from celery import Celery
from django.core.management import call_command
from kombu import Connection, Exchange, Queue

from panel.audit.models import AuditEntry
from panel.hosts import credentials
from panel.hosts.models import Host
from panel.hosts.services import enrol_host, host_commands
from workers import console_streams
from workers.config import broker_transport_options

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def acl_prefix(settings):
    """Users of this test only (the Redis server is shared), all removed afterwards."""
    settings.BERTH_REDIS_USER_PREFIX = f"berth-test-{secrets.token_hex(3)}-"
    yield settings.BERTH_REDIS_USER_PREFIX
    admin = redis.Redis.from_url(settings.REDIS_URL)
    for user in admin.acl_users():
        if user.startswith(settings.BERTH_REDIS_USER_PREFIX):
            admin.acl_deluser(user)
    for key in admin.keys("*host.cred*") + admin.keys("berth:host:cred*"):
        admin.delete(key)


def host_url(host: Host, secret: str) -> str:
    return credentials.host_redis_url(host, secret)


@pytest.fixture
def enrolled():
    name = f"cred{secrets.token_hex(3)}"
    host, secret = enrol_host(name=name, network="10.95.0.0/24", bridge="bcred")
    return host, secret


def test_secret_is_kept_only_as_its_hash(enrolled, caplog):
    host, secret = enrolled
    host.refresh_from_db()
    assert host.credential_hash == credentials.hash_secret(secret)
    assert secret not in str(list(Host.objects.values()))
    for entry in AuditEntry.objects.all():
        assert secret not in entry.message + str(entry.data)
        assert host.credential_hash not in str(entry.data)
    assert secret not in caplog.text
    assert [e.action for e in AuditEntry.objects.order_by("id")] == ["host.enrol", "host.credential.issue"]


def test_commands_carry_the_credential_once(enrolled):
    host, secret = enrolled
    commands = host_commands(host, secret=secret)
    assert all(f"{credentials.redis_username(host.name)}:{secret}@" in c for c in commands)
    assert "-Q host." + host.name in commands[0] and "--without-mingle" in commands[0]
    assert secret not in " ".join(host_commands(host))  # without it: a placeholder


def test_celery_transport_works_with_the_host_user(enrolled, settings):
    """What a host worker and agent do: consume the own queue (kombu's lists, bindings, and the
    in-flight keys under the host prefix) and send reports to the panel queue."""
    host, secret = enrolled
    panel = Celery("panel-side", broker=settings.REDIS_URL)
    panel.send_task("berth.host.reconcile", queue=host.queue)

    queue = Queue(host.queue, Exchange(host.queue, type="direct"), routing_key=host.queue)
    got = []
    conn = Connection(host_url(host, secret), transport_options=broker_transport_options(host.name))
    with conn, conn.Consumer(queue, callbacks=[lambda body, msg: (got.append(msg.headers["task"]), msg.ack())]):
        conn.drain_events(timeout=5)
    assert got == ["berth.host.reconcile"]

    hostside = Celery("host-side", broker=host_url(host, secret))
    hostside.send_task("berth.panel.host_heartbeat", kwargs={"host_name": host.name, "facts": {}}, queue="panel")
    admin = redis.Redis.from_url(settings.REDIS_URL)
    assert admin.llen("panel") >= 1
    admin.delete("panel")


def test_the_host_user_reaches_nothing_else(enrolled, settings):
    host, secret = enrolled
    other, _ = enrol_host(name=f"cred{secrets.token_hex(3)}", network="10.96.0.0/24", bridge="bcred2")
    client = redis.Redis.from_url(host_url(host, secret))
    assert client.ping()
    client.lpush(f"berth:host:{host.name}:probe", "x")  # its own keys: yes
    client.delete(f"berth:host:{host.name}:probe")
    own_console = console_streams.output_stream(host.name, "0" * 32)
    client.xadd(own_console, {"d": b"ok"})  # its own consoles: yes
    client.delete(own_console)
    refused = [
        lambda: client.lrange("panel", 0, -1),                 # other hosts' reports
        lambda: client.lrange(other.queue, 0, -1),             # another host's specs
        lambda: client.lpush(other.queue, "forged"),
        lambda: client.hgetall("unacked"),                     # kombu's shared in-flight hash
        lambda: client.get("berth-cache:1:anything"),          # the Django cache
        lambda: client.keys("*"),
        lambda: client.flushall(),
        lambda: client.acl_list(),
        lambda: client.config_get("*"),
        lambda: client.lpush(f"berth:host:{other.name}:agent-reply:x", "ok"),
        lambda: client.publish(f"berth:console-in:{other.name}", b"x"),
        # another host's consoles: neither read (a tenant's screen) nor forged
        lambda: client.xrange(console_streams.output_stream(other.name, "0" * 32)),
        lambda: client.xadd(console_streams.output_stream(other.name, "0" * 32), {"d": b"forged"}),
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def test_rotation_cuts_the_old_secret_off_at_once(enrolled):
    host, old = enrolled
    connected = redis.Redis.from_url(host_url(host, old))
    assert connected.ping()
    new = credentials.issue_credential(host)
    assert new != old
    with pytest.raises(redis.exceptions.ConnectionError):
        connected.ping()  # the open connection was closed, reconnecting with the old secret fails
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(host_url(host, old)).ping()
    assert redis.Redis.from_url(host_url(host, new)).ping()
    assert AuditEntry.objects.filter(action="host.credential.rotate", target_id=str(host.pk)).exists()


def test_users_come_back_after_a_redis_restart(enrolled, settings):
    host, secret = enrolled
    redis.Redis.from_url(settings.REDIS_URL).acl_deluser(credentials.redis_username(host.name))
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(host_url(host, secret)).ping()
    assert credentials.sync_credentials() >= 1
    assert redis.Redis.from_url(host_url(host, secret)).ping()


def test_manage_py_host_add_prints_the_commands_and_refuses_clashes(capsys):
    name = f"cred{secrets.token_hex(3)}"
    call_command("host", "add", name, "--network", "10.97.0.0/24", "--bridge", "bcli")
    out = capsys.readouterr().out
    assert f"Host {name} enrolled." in out
    assert out.count("celery -A workers.hostworker worker") == 1 and "python -m workers.agent" in out
    host = Host.objects.get(name=name)
    assert host.credential_hash and host.ip_pool.network == "10.97.0.0/24"
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="overlaps host"):
        call_command("host", "add", f"x{name}", "--network", "10.97.0.128/25")
    with pytest.raises(CommandError, match="already enrolled"):
        call_command("host", "add", name, "--network", "10.98.0.0/24")
    call_command("host", "env", name)
    assert "SECRET@" in capsys.readouterr().out  # env never shows a secret: the panel has none


def test_redis_refusing_acl_leaves_nothing_half_done(monkeypatch, caplog):
    class Refusing:
        def execute_command(self, *args):
            raise redis.exceptions.NoPermissionError("this user has no permissions to run the 'acl' command")

    monkeypatch.setattr(credentials, "_admin_client", Refusing)
    with caplog.at_level(logging.INFO), pytest.raises(credentials.CredentialError, match=r"\+acl"):
        enrol_host(name="nope", network="10.99.1.0/24", bridge="bnope")
    assert not Host.objects.filter(name="nope").exists()
    assert not AuditEntry.objects.exists()
