"""manage.py host add|rotate|env|list: enrol hosts, rotate their credentials and print what a
host machine needs to run."""

from django.core.management.base import BaseCommand, CommandError

from panel.hosts.credentials import CredentialError, issue_credential
from panel.hosts.models import Host
from panel.hosts.services import (
    HostError,
    enrol_host,
    host_commands,
    host_environment,
    suggest_uid_base,
)


class Command(BaseCommand):
    help = "Enrol a host, rotate its credential, or print the environment its worker and agent need."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        add = sub.add_parser("add", help="enrol a host and print the commands to run on it")
        add.add_argument("name")
        add.add_argument("--network", required=True, help="IPv4 pool as CIDR, e.g. 10.78.0.0/24")
        add.add_argument("--bridge", default="berth0", help="bridge name on the host (≤15 chars)")
        add.add_argument("--state-dir", default=None)
        add.add_argument("--uid-base", type=int, default=None,
                         help="first host uid for containers (default: after every other host's)")
        rotate = sub.add_parser("rotate", help="issue a new credential; the old one stops working")
        rotate.add_argument("name")
        env = sub.add_parser("env", help="print a host's environment variables (secret not shown)")
        env.add_argument("name")
        sub.add_parser("list", help="list hosts")

    def handle(self, *args, subcommand, **options):
        getattr(self, f"_{subcommand}")(**options)

    def _host(self, name: str) -> Host:
        host = Host.objects.select_related("ip_pool").filter(name=name).first()
        if host is None:
            raise CommandError(f"No host named {name!r}.")
        return host

    def _print_commands(self, host: Host, secret: str) -> None:
        self.stdout.write("On that machine, from a Berth checkout, run as root (the credential is")
        self.stdout.write("shown this once; `manage.py host rotate` issues a new one):")
        for command in host_commands(host, secret=secret):
            self.stdout.write(f"  {command}")

    def _add(self, *, name, network, bridge, state_dir, uid_base, **_):
        try:
            host, secret = enrol_host(
                name=name, network=network, bridge=bridge, state_dir=state_dir,
                uid_base=uid_base if uid_base is not None else suggest_uid_base(), source="system",
            )
        except HostError as exc:
            raise CommandError(f"--{exc.field.replace('_', '-')}: {exc}" if exc.field and exc.field != "name" else str(exc)) from exc
        except CredentialError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Host {host.name} enrolled."))
        self._print_commands(host, secret)

    def _rotate(self, *, name, **_):
        host = self._host(name)
        try:
            secret = issue_credential(host, source="system")
        except CredentialError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"New credential for {host.name}; the old one no longer works."))
        self._print_commands(host, secret)

    def _env(self, *, name, **_):
        for key, value in host_environment(self._host(name)).items():
            self.stdout.write(f"{key}={value}")

    def _list(self, **_):
        for host in Host.objects.all():
            state = "enabled" if host.is_enabled else "disabled"
            if host.is_draining:
                state += ",draining"
            self.stdout.write(f"{host.name:20} {host.status:8} {state}")
