"""manage.py create_api_token --scope billing|customer --name N [--customer ID]

Prints the token once; only its hash is kept.
"""

from django.core.management.base import BaseCommand, CommandError

from panel.accounts.models import Customer
from panel.api.models import ApiToken
from panel.api.services.tokens import create_token


class Command(BaseCommand):
    help = "Create an API token for the billing system or for one customer, and print it once."

    def add_arguments(self, parser):
        parser.add_argument("--scope", required=True, choices=ApiToken.Scope.values)
        parser.add_argument("--name", required=True, help="What the token is for, e.g. 'WHMCS'.")
        parser.add_argument("--customer", help="Customer id or external_id (customer tokens only).")

    def handle(self, *args, scope: str, name: str, customer: str | None, **options):
        owner = None
        if scope == ApiToken.Scope.CUSTOMER:
            if not customer:
                raise CommandError("A customer token needs --customer ID.")
            owner = Customer.objects.filter(external_id=customer).first()
            if owner is None and customer.isdigit():
                owner = Customer.objects.filter(pk=int(customer)).first()
            if owner is None:
                raise CommandError(f"No customer {customer!r}.")
        elif customer:
            raise CommandError("A billing token acts for every customer; leave out --customer.")
        token, key = create_token(name=name, scope=scope, customer=owner)
        self.stderr.write(f"Created {token.scope} token #{token.pk} {token.name!r}; it is shown only now:")
        self.stdout.write(key)
