"""manage.py host add|env|list: enrol hosts and print what a host machine needs to run."""

import ipaddress
import shlex

from django.core.management.base import BaseCommand, CommandError

from panel.hosts.models import Host
from panel.hosts.services import host_environment, register_host


class Command(BaseCommand):
    help = "Enrol a host, or print the environment its worker and agent need."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="enrol a host and print the commands to run on it")
        add.add_argument("name")
        add.add_argument("--network", required=True, help="IPv4 pool as CIDR, e.g. 10.78.0.0/24")
        add.add_argument("--bridge", default="berth0", help="bridge name on the host (≤15 chars)")
        add.add_argument("--state-dir", default=None)
        add.add_argument("--uid-base", type=int, default=1_000_000)
        env = sub.add_parser("env", help="print a host's environment variables")
        env.add_argument("name")
        sub.add_parser("list", help="list hosts")

    def handle(self, *args, subcommand, **options):
        getattr(self, f"_{subcommand}")(**options)

    def _add(self, *, name, network, bridge, state_dir, uid_base, **_):
        if len(bridge) > 15:
            raise CommandError("A bridge name has at most 15 characters.")
        try:
            ipaddress.IPv4Network(network, strict=True)
        except ValueError as exc:
            raise CommandError(f"--network: {exc}") from exc
        host = register_host(
            name=name, network=network, bridge=bridge, state_dir=state_dir, uid_base=uid_base
        )
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host_environment(host).items())
        self.stdout.write(self.style.SUCCESS(f"Host {host.name} enrolled."))
        self.stdout.write("On that machine, from a Berth checkout, run as root:")
        self.stdout.write(f"  env {env} .venv/bin/celery -A workers.hostworker worker -Q {host.queue} -n {host.queue}@%h")
        self.stdout.write(f"  env {env} .venv/bin/python -m workers.agent")

    def _env(self, *, name, **_):
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise CommandError(f"No host named {name!r}.")
        for key, value in host_environment(host).items():
            self.stdout.write(f"{key}={value}")

    def _list(self, **_):
        for host in Host.objects.all():
            self.stdout.write(f"{host.name:20} {host.status:8} {'enabled' if host.is_enabled else 'disabled'}")
