"""Schemathesis against the live OpenAPI document, every operation, in-process (WSGI) on a
transactional PostgreSQL database with a billing token: no server errors, no response that
breaks the schema, every schema-invalid request refused, then stateful runs along the links.

Orders stay pending (no host worker consumes them here), which is fine for the API's side.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode

from panel.accounts.models import Customer
from panel.api.services.tokens import create_token
from panel.backups.models import Backup, BackupSchedule, Snapshot
from panel.instances.models import Instance, Operation
from panel.instances.services import results
from panel.instances.services.ordering import order_instance
from panel.wsgi import application
from tests.factories import CustomerFactory, HostFactory, ImageFactory, PlanFactory

MAX_EXAMPLES = 40
STATEFUL_EXAMPLES = 60
# A request can be valid for the schema and still name a plan, image or customer that does not
# exist (400), or ask for more than the quota or the hosts allow (422): no schema can say so.
POSITIVE_STATUSES = ["2xx", "400", "401", "403", "404", "409", "422", "429"]


def _seed():
    HostFactory(cpus=64, memory_mib=262144, disk_gib=10000)
    plans = [PlanFactory(vcpus=1, memory_mib=256), PlanFactory(vcpus=1, memory_mib=512),
             PlanFactory(kind="vm", vcpus=1, memory_mib=512)]
    images = [ImageFactory(name="busybox"), ImageFactory(name="tiny", kind="vm")]
    customers = [CustomerFactory(external_id=f"cust-{i}", max_instances=1000, max_vcpus=1000,
                                 max_memory_mib=10**6) for i in range(2)]
    services = []
    for i, customer in enumerate(customers):
        instance = order_instance(customer=customer, plan=plans[0], image=images[0],
                                  hostname=f"seed{i}", external_id=f"seed-{i}")
        op = instance.operations.get()
        results.record_operation_started(op.pk)
        results.record_operation_finished(op.pk, ok=True, power_state="running")
        services.append(instance)
    return {"plans": [p.pk for p in plans], "images": [i.pk for i in images],
            "customers": [c.pk for c in customers] + ["cust-0", "cust-1"],
            "services": [s.pk for s in services],
            "operations": [op for s in services for op in s.operations.values_list("pk", flat=True)]}


@pytest.fixture
def api_schema(transactional_db, sent_tasks, settings):
    settings.BERTH_API_RATE = "1000000/min"
    known = _seed()
    key = create_token(name="schemathesis", scope="billing")[1]
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
    schema.config.headers = {"Authorization": f"Bearer {key}"}
    schema.config.checks.positive_data_acceptance.expected_statuses = POSITIVE_STATUSES

    @schema.hook
    def flatmap_case(context, case):
        # Mix in ids that exist, but only into schema-valid requests: a negative case must stay
        # invalid, or the server would rightly accept it.
        if not case.meta or not case.meta.generation.mode.is_positive:
            return st.just(case)
        variants = [st.just(case)]
        if case.path_parameters and "id" in case.path_parameters:
            pool = known["operations"] if "/operations/" in case.path else known["services"]
            if "/customers/" in case.path:
                pool = [c for c in known["customers"] if isinstance(c, int)]
            variants.append(st.sampled_from(pool).map(lambda i: _with_path_id(case, i)))
        if isinstance(case.body, dict) and case.method == "POST":
            variants.append(st.fixed_dictionaries({
                "plan": st.sampled_from(known["plans"]), "image": st.sampled_from(known["images"]),
                "customer": st.sampled_from(known["customers"]),
            }).map(lambda refs: _with_refs(case, refs)))
        return st.one_of(*variants)

    schema.known = known
    return schema


def _with_path_id(case, value):
    case.path_parameters = {**case.path_parameters, "id": value}
    return case


def _with_refs(case, refs):
    case.body = {**case.body, **{k: v for k, v in refs.items() if k in case.body}}
    return case


def _operations() -> list[tuple[GenerationMode, str, str]]:
    """Every operation in the OpenAPI document (read from the code that serves it) with valid
    data, and with invalid data where it takes any input to make invalid."""
    from drf_spectacular.generators import SchemaGenerator

    document = SchemaGenerator().get_schema(request=None, public=True)
    cases = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            cases.append((GenerationMode.POSITIVE, method.upper(), path))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((GenerationMode.NEGATIVE, method.upper(), path))
    return cases


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode,method,path", _operations())
def test_every_operation(api_schema, mode, method, path):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode, hooks=api_schema.hooks))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate()

    run()


@pytest.mark.django_db(transaction=True)
def test_stateful_along_the_links(api_schema):
    """Order → read, meter, stop, suspend, terminate the service; follow each operation."""
    known = api_schema.known

    class Workflow(api_schema.as_state_machine()):
        def teardown(self):
            # Every run starts from the seed: what a step finds must not depend on earlier runs.
            Snapshot.objects.all().delete()
            Backup.objects.all().delete()
            BackupSchedule.objects.all().delete()
            Instance.objects.exclude(pk__in=known["services"]).delete()
            Operation.objects.exclude(pk__in=known["operations"]).delete()
            Instance.objects.filter(pk__in=known["services"]).update(
                state="running", plan_id=known["plans"][0], suspended_reason="", state_before_suspend="")
            Customer.objects.exclude(pk__in=[c for c in known["customers"] if isinstance(c, int)]).delete()

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=STATEFUL_EXAMPLES, stateful_step_count=6, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    ))
