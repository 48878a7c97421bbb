"""A short soak (45 s) inside `make test`: orders, actions and terminations in a loop with a
steady API read load, against the test stack; then the panel's view must match the host, and
nothing may be left behind once all is terminated. `make soak` runs the same for 5 minutes."""

import os

import pytest

from panel.api.services.tokens import create_token
from scripts.soak import Target, soak
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.root, pytest.mark.stack, pytest.mark.django_db(transaction=True)]

SECONDS = float(os.environ.get("BERTH_SOAK_SECONDS", "45"))


def test_a_short_soak_leaves_the_panel_and_the_host_in_agreement_and_nothing_behind(stack):
    rows = stack.seed()
    customers = [CustomerFactory(max_instances=100, max_vcpus=100, max_memory_mib=100_000).pk
                 for _ in range(3)]
    target = Target(stack=stack, key=create_token(name="soak", scope="billing")[1], customers=customers,
                    offers=[(rows["plan"].pk, rows["image"].pk)])
    report = soak(target, seconds=SECONDS, services=4, readers=2, read_rate=8, log=print)
    assert report.orders > 0 and sum(report.actions.values()) > 0, report.summary(SECONDS)
    assert report.ok, report.summary(SECONDS) + "\n" + stack.all_logs()
