import pytest

from panel.instances.models import Instance, InstanceState
from panel.instances.states import ALLOWED_TRANSITIONS, InstanceStateError, transition
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

pytestmark = pytest.mark.django_db


def make_instance(state=InstanceState.PENDING):
    return Instance.objects.create(
        customer=CustomerFactory(), kind="container", plan=PlanFactory(), image=ImageFactory(),
        hostname="box", host=HostFactory(), state=state,
    )


def test_allowed_move_is_applied_and_started_at_set():
    instance = make_instance(InstanceState.PROVISIONING)
    result = transition(instance.pk, InstanceState.RUNNING)
    assert result.state == InstanceState.RUNNING
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING and instance.started_at is not None


def test_forbidden_move_raises_and_changes_nothing():
    instance = make_instance(InstanceState.TERMINATED)
    with pytest.raises(InstanceStateError):
        transition(instance.pk, InstanceState.RUNNING)
    instance.refresh_from_db()
    assert instance.state == InstanceState.TERMINATED


def test_same_state_twice_is_a_no_op():
    instance = make_instance(InstanceState.RUNNING)
    before = instance.updated_at
    transition(instance.pk, InstanceState.RUNNING)
    instance.refresh_from_db()
    assert instance.updated_at == before


def test_error_records_the_reason_and_recovery_clears_it():
    instance = make_instance(InstanceState.PROVISIONING)
    transition(instance.pk, InstanceState.ERROR, error="disk full")
    instance.refresh_from_db()
    assert instance.error == "disk full"
    transition(instance.pk, InstanceState.STOPPED)
    instance.refresh_from_db()
    assert instance.error == ""


def test_every_state_is_in_the_table_and_terminated_is_final():
    assert set(ALLOWED_TRANSITIONS) == set(InstanceState.values)
    assert ALLOWED_TRANSITIONS[InstanceState.TERMINATED] == frozenset()
