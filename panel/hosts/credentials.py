"""Per-host credentials: a Redis ACL user for each host, confined to that host's own keys.

Hosts never get database credentials; Redis is all they reach, and each host reaches it as its
own user, which may only:
- consume its own task queue ``host.<name>`` (and kombu's priority lists of it) and declare it;
- push reports into the ``panel`` queue (write only: it cannot read other hosts' reports);
- keep its in-flight messages and agent replies under ``berth:host:<name>:*``
  (``workers.config.broker_transport_options``), not in kombu's shared ``unacked`` hash;
- read kombu's binding tables, and write only its own queue's and the panel queue's;
- write console streams and use its own console-input and agent pub/sub channels.
It cannot read other hosts' queues (instance specs), the channel layer, the cache, sessions, or
run admin commands (FLUSHALL, CONFIG, KEYS, ACL, ...).

ACLs cannot see what a message says, so the same secret also signs every report the host
sends (``workers.config.sign_reports``), and the panel carries out a report about a host only
when that host signed it (``panel/hosts/reports.py``): one host cannot speak for another.

The secret is shown once. The panel keeps only its SHA-256, which is exactly what Redis keeps
(``ACL SETUSER name #<sha256>``), so the panel can recreate every host user after a Redis restart
(``sync_credentials``, run by beat) without ever holding a secret. Rotating issues a new secret,
replaces the hash and disconnects the host's open connections at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from panel.audit import services as audit
from panel.hosts.models import Host
from workers.config import host_key_prefix

KOMBU_PRIORITY_SEP = "\x06\x16"  # kombu's separator between a queue name and its priority
# Command categories a host needs (kombu lists, sets, hashes, locks, streams, pub/sub), minus
# everything dangerous (FLUSHALL, CONFIG, KEYS, DEBUG, ACL, CLIENT KILL, ...).
HOST_COMMANDS = [
    "-@all", "+@connection", "+@read", "+@write", "+@keyspace", "+@list", "+@set", "+@hash",
    "+@sortedset", "+@string", "+@stream", "+@pubsub", "+@transaction", "+@blocking",
    "+@scripting", "-@dangerous", "+info",
]


class CredentialError(Exception):
    """Redis refused to create or change a host's user."""


def redis_username(host_name: str) -> str:
    return f"{settings.BERTH_REDIS_USER_PREFIX}{host_name}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def acl_rules(host_name: str, password_hash: str) -> list[str]:
    """The ACL SETUSER rules for one host (see the module docstring for why each is there)."""
    own_queue = f"host.{host_name}"
    return [
        "reset", "on", f"#{password_hash}", "resetchannels",
        f"~{own_queue}", f"~{own_queue}{KOMBU_PRIORITY_SEP}*",
        "%W~panel", f"%W~panel{KOMBU_PRIORITY_SEP}*",
        "%R~_kombu.binding.*", f"~_kombu.binding.{own_queue}", "%W~_kombu.binding.panel",
        f"~_kombu.binding_permanent.{own_queue}", "%W~_kombu.binding_permanent.panel",
        f"~{host_key_prefix(host_name)}*",
        f"&berth:console-in:{host_name}", f"&berth:agent:{host_name}",
        *HOST_COMMANDS,
    ]


def _admin_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def apply_acl(host_name: str, password_hash: str, *, client: redis.Redis | None = None) -> None:
    client = client or _admin_client()
    try:
        client.execute_command("ACL", "SETUSER", redis_username(host_name), *acl_rules(host_name, password_hash))
    except redis.RedisError as exc:
        raise CredentialError(
            f"Redis refused to set up the user for host {host_name}: {exc}. The panel's Redis "
            "user needs the ACL commands (+acl)."
        ) from exc


def disconnect(host_name: str, *, client: redis.Redis | None = None) -> None:
    """Close the host's open connections, so an old secret stops working now, not at reconnect."""
    client = client or _admin_client()
    with contextlib.suppress(redis.ResponseError):  # none of that user's connections is open
        client.execute_command("CLIENT", "KILL", "USER", redis_username(host_name))


def remove_user(host_name: str) -> None:
    client = _admin_client()
    client.execute_command("ACL", "DELUSER", redis_username(host_name))
    disconnect(host_name, client=client)


def host_redis_url(host: Host, secret: str | None) -> str:
    """The Redis URL the host uses: the panel's Redis as hosts reach it, with the host's user.

    Without the secret (the panel never keeps it) the password is a placeholder.
    """
    parts = urlsplit(settings.BERTH_HOST_REDIS_URL)
    password = quote(secret, safe="") if secret else "SECRET"
    netloc = f"{quote(redis_username(host.name), safe='')}:{password}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def issue_credential(host: Host, *, actor=None, source: str = "ui") -> str:
    """Issue (or rotate) ``host``'s secret: returns it for the admin to see once; open
    connections with the previous secret are closed."""
    secret = secrets.token_urlsafe(32)
    password_hash = hash_secret(secret)
    rotated = bool(host.credential_hash)
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        locked.credential_hash = password_hash
        locked.credential_issued_at = timezone.now()
        locked.save(update_fields=["credential_hash", "credential_issued_at"])
        # Redis first: if it refuses, the transaction rolls back and the old secret still works.
        apply_acl(host.name, password_hash)
        audit.record(
            action="host.credential.rotate" if rotated else "host.credential.issue",
            source=source, actor=actor, target=locked,
            message=(f"New credential for host {host.name}; the old one no longer works."
                     if rotated else f"Credential issued for host {host.name}."),
            data={"redis_user": redis_username(host.name)},  # never the secret, nor its hash
        )
    if rotated:
        disconnect(host.name)
    host.credential_hash = password_hash
    host.credential_issued_at = locked.credential_issued_at
    return secret


def sync_credentials() -> int:
    """Make Redis's host users match the database (after a Redis restart they are gone: Redis
    keeps ACL users in memory unless it has an aclfile). Returns how many were applied."""
    client = _admin_client()
    hosts = Host.objects.exclude(credential_hash="").values_list("name", "credential_hash")
    for name, password_hash in hosts:
        apply_acl(name, password_hash, client=client)
    return len(hosts)
