"""Tenancy in the core: shared agents serve every tenant, outputs keep their inputs' tenant."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import (
    FilterConfig,
    Flock,
    Identity,
    LabelledVisibility,
    PrivateVisibility,
    PublicVisibility,
    TenantVisibility,
    flock_type,
)
from flock.core.artifacts import Artifact
from flock.core.visibility import (
    TenantScopeError,
    VisibilityError,
    caller_visibility,
    inherit_visibility,
    may_consume,
)

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]
ACME, GLOBEX = TenantVisibility(tenant_id="acme"), TenantVisibility(tenant_id="globex")
SHARED, ACME_BOT = Identity("shared"), Identity("acme_bot", tenant="acme")


@flock_type(name=f"TenOrder_{_SUFFIX}")
class Order(BaseModel):
    sku: str


@flock_type(name=f"TenInvoice_{_SUFFIX}")
class Invoice(BaseModel):
    sku: str


@flock_type(name=f"TenReceipt_{_SUFFIX}")
class Receipt(BaseModel):
    sku: str


def artifact(visibility: object) -> Artifact:
    return Artifact(type="T", visibility=visibility)  # type: ignore[arg-type]


def test_a_shared_agent_may_consume_any_tenants_artifact() -> None:
    assert may_consume(SHARED, ACME) and may_consume(SHARED, GLOBEX)
    assert may_consume(ACME_BOT, ACME) and not may_consume(ACME_BOT, GLOBEX)
    # the other rules hold for shared agents as they did
    assert not may_consume(SHARED, PrivateVisibility(agents=frozenset({"other"})))
    assert not may_consume(SHARED, LabelledVisibility(required_labels=frozenset({"hr"})))


def test_an_output_inherits_its_inputs_tenant() -> None:
    public = PublicVisibility()
    assert inherit_visibility(public, [artifact(ACME)]) == ACME
    assert inherit_visibility(ACME, [artifact(ACME), artifact(public)]) == ACME
    assert inherit_visibility(GLOBEX, [artifact(public)]) == GLOBEX  # no tenant: as declared
    private = PrivateVisibility(agents=frozenset({"a"}))
    assert inherit_visibility(private, [artifact(public)]) is private


@pytest.mark.parametrize(
    "declared",
    [
        GLOBEX,
        PrivateVisibility(agents=frozenset({"alice"})),
        LabelledVisibility(required_labels=frozenset({"ops"})),
    ],
)
def test_an_output_never_leaves_its_inputs_tenant(declared: object) -> None:
    with pytest.raises(TenantScopeError):
        inherit_visibility(declared, [artifact(ACME)])  # type: ignore[arg-type]


def test_inputs_of_two_tenants_cannot_be_scoped() -> None:
    with pytest.raises(TenantScopeError, match="several tenants"):
        inherit_visibility(PublicVisibility(), [artifact(ACME), artifact(GLOBEX)])


def test_a_tenants_caller_publishes_for_its_tenant_only() -> None:
    assert caller_visibility(None, "acme") == ACME
    assert caller_visibility(ACME, "acme") == ACME
    for wider in (GLOBEX, PublicVisibility(), PrivateVisibility(agents=frozenset({"x"}))):
        with pytest.raises(TenantScopeError):
            caller_visibility(wider, "acme")
    assert caller_visibility(None, None) == PublicVisibility()
    assert caller_visibility(GLOBEX, None) == GLOBEX


async def test_a_tenants_cascade_runs_on_shared_agents_and_stays_the_tenants() -> None:
    flock = Flock()
    flock.agent("biller").consumes(Order).publishes(Invoice).with_engines(
        lambda order: Invoice(sku=order.sku)
    )
    flock.agent("clerk").consumes(Invoice).publishes(Receipt).with_engines(
        lambda invoice: Receipt(sku=invoice.sku)
    )

    order = await flock.publish(Order(sku="42"), visibility=ACME)
    await flock.run_until_idle(order.correlation_id, timeout=10)

    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=order.correlation_id)
    )
    assert total == 3
    assert {a.visibility for a in items} == {ACME}  # type: ignore[union-attr]
    for viewer, seen in (
        (Identity("a", tenant="acme"), 3),
        (Identity("g", tenant="globex"), 0),
        (Identity("a"), 0),
    ):
        _, count = await flock.store.query_artifacts(
            FilterConfig(correlation_id=order.correlation_id, visible_to=viewer)
        )
        assert count == seen, viewer


async def test_a_run_that_would_leave_the_tenant_fails_with_an_error() -> None:
    flock = Flock()
    flock.agent("leaker").consumes(Order).publishes(Invoice, visibility=GLOBEX).with_engines(
        lambda order: Invoice(sku=order.sku)
    )

    order = await flock.publish(Order(sku="42"), visibility=ACME)
    await flock.run_until_idle(order.correlation_id, timeout=10)

    status = await flock.correlation_status(order.correlation_id)
    assert status is not None
    (error,) = status.errors
    assert error.agent == "leaker" and error.message.startswith("TenantScopeError")
    assert (await flock.store.query_artifacts(FilterConfig()))[1] == 1


async def test_a_direct_run_keeps_the_tenant_and_the_agents_own_tenant() -> None:
    flock = Flock()
    flock.agent("biller").consumes(Order).publishes(Invoice).with_engines(
        lambda order: Invoice(sku=order.sku)
    )
    flock.agent("globex_biller").tenant("globex").consumes(Order).publishes(Invoice).with_engines(
        lambda order: Invoice(sku=order.sku)
    )
    order = Artifact(type=f"TenOrder_{_SUFFIX}", payload={"sku": "7"}, visibility=ACME)

    (invoice,) = await flock.direct_invoke("biller", [order])
    assert invoice.visibility == ACME
    with pytest.raises(VisibilityError, match="tenant 'acme'"):
        await flock.direct_invoke("globex_biller", [order])
