"""Failures: a raising agent is isolated and recorded; loops end at the per-correlation bound."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import AgentError, FilterConfig, Flock, flock_type

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"FailOrder_{_SUFFIX}")
class Order(BaseModel):
    item: str


@flock_type(name=f"FailInvoice_{_SUFFIX}")
class Invoice(BaseModel):
    item: str


@flock_type(name=f"FailReceipt_{_SUFFIX}")
class Receipt(BaseModel):
    item: str


@flock_type(name=f"FailPing_{_SUFFIX}")
class Ping(BaseModel):
    n: int


@flock_type(name=f"FailPong_{_SUFFIX}")
class Pong(BaseModel):
    n: int


def explode(order: Order) -> Invoice:
    raise RuntimeError(f"cannot bill {order.item}")


async def test_a_failing_agent_does_not_stop_its_sibling_or_the_cascade() -> None:
    flock = Flock()
    flock.agent("billing").consumes(Order).publishes(Invoice).with_engines(explode).retry(
        max_attempts=1
    )
    flock.agent("shipping").consumes(Order).publishes(Invoice).with_engines(
        lambda o: Invoice(item=o.item)
    )
    flock.agent("receipts").consumes(Invoice).publishes(Receipt).with_engines(
        lambda i: Receipt(item=i.item)
    )

    order = await flock.publish(Order(item="tea"))
    await flock.run_until_idle(order.correlation_id, timeout=10)

    items, _ = await flock.store.query_artifacts(FilterConfig(correlation_id=order.correlation_id))
    assert sorted(a.produced_by for a in items) == ["external", "receipts", "shipping"]

    status = await flock.correlation_status(order.correlation_id)
    assert status is not None
    assert status.state == "idle" and status.pending_runs == 0
    (error,) = status.errors
    assert isinstance(error, AgentError)
    assert error.agent == "billing"
    assert error.artifact_id == order.id
    assert error.correlation_id == order.correlation_id
    assert "RuntimeError" in error.message and "cannot bill tea" in error.message
    assert error.to_dict()["agent"] == "billing"

    assert flock.stats.agent_failures == 1
    assert flock.stats.agent_runs == 3
    assert flock.stats.artifacts_published == 3


def picky(order: Order) -> bool:
    raise ValueError(f"cannot judge {order.item}")


async def test_a_raising_where_predicate_fails_its_agent_alone() -> None:
    flock = Flock()
    flock.agent("picky").consumes(Order, where=picky).publishes(Invoice).with_engines(
        lambda o: Invoice(item=o.item)
    )
    flock.agent("shipping").consumes(Order).publishes(Invoice).with_engines(
        lambda o: Invoice(item=o.item)
    )
    flock.agent("receipts").consumes(Invoice).publishes(Receipt).with_engines(
        lambda i: Receipt(item=i.item)
    )

    order = await flock.publish(Order(item="tea"))
    await flock.run_until_idle(order.correlation_id, timeout=10)

    items, _ = await flock.store.query_artifacts(FilterConfig(correlation_id=order.correlation_id))
    assert sorted(a.produced_by for a in items) == ["external", "receipts", "shipping"]
    status = await flock.correlation_status(order.correlation_id)
    assert status is not None and status.state == "idle"
    (error,) = status.errors
    assert (error.agent, error.artifact_id) == ("picky", order.id)
    assert "where" in error.message and "ValueError: cannot judge tea" in error.message
    # Kept by the store too, not only by this process's live record.
    record = await flock.store.get_correlation(order.correlation_id)
    assert record is not None and [e.agent for e in record.errors] == ["picky"]


async def test_failures_are_recorded_per_correlation() -> None:
    flock = Flock()
    flock.agent("billing").consumes(Order).publishes(Invoice).with_engines(explode).retry(
        max_attempts=1
    )
    bad = await flock.publish(Order(item="a"))
    also_bad = await flock.publish(Order(item="b"))
    await flock.run_until_idle(timeout=10)

    for artifact, item in ((bad, "a"), (also_bad, "b")):
        status = await flock.correlation_status(artifact.correlation_id)
        assert status is not None
        (error,) = status.errors
        assert error.artifact_id == artifact.id and f"cannot bill {item}" in error.message
    assert flock.stats.agent_failures == 2


async def test_async_engine_failure_and_the_orchestrator_keeps_working() -> None:
    flock = Flock()

    async def flaky(order: Order) -> Invoice:
        if order.item == "bad":
            raise ValueError("bad item")
        return Invoice(item=order.item)

    flock.agent("flaky").consumes(Order).publishes(Invoice).with_engines(flaky).retry(
        max_attempts=1
    )
    bad = await flock.publish(Order(item="bad"))
    await flock.run_until_idle(timeout=10)
    good = await flock.publish(Order(item="good"))
    await flock.run_until_idle(timeout=10)

    bad_status = await flock.correlation_status(bad.correlation_id)
    good_status = await flock.correlation_status(good.correlation_id)
    assert bad_status is not None and good_status is not None
    assert [e.message for e in bad_status.errors] == ["ValueError: bad item"]
    assert good_status.errors == [] and good_status.artifact_count == 2
    assert flock.stats.agent_failures == 1 and flock.stats.agent_runs == 2


async def test_a_failed_run_is_still_marked_consumed() -> None:
    """A failure is an outcome: `resume` must not run the same input again."""
    flock = Flock()
    flock.agent("billing").consumes(Order).publishes(Invoice).with_engines(explode).retry(
        max_attempts=1
    )
    order = await flock.publish(Order(item="x"))
    await flock.run_until_idle(order.correlation_id, timeout=10)
    assert [c.consumer for c in await flock.store.get_consumptions(order.id)] == ["billing"]
    assert await flock.resume(order.correlation_id) == 0


async def test_errors_are_kept_by_the_store_too() -> None:
    flock = Flock()
    flock.agent("billing").consumes(Order).publishes(Invoice).with_engines(explode).retry(
        max_attempts=1
    )
    order = await flock.publish(Order(item="x"))
    await flock.run_until_idle(order.correlation_id, timeout=10)
    record = await flock.store.get_correlation(order.correlation_id)
    assert record is not None
    assert record.state == "idle"
    assert [e.agent for e in record.errors] == ["billing"]


def ping_pong(flock: Flock) -> None:
    flock.agent("pinger").consumes(Pong).publishes(Ping).with_engines(lambda p: Ping(n=p.n + 1))
    flock.agent("ponger").consumes(Ping).publishes(Pong).with_engines(lambda p: Pong(n=p.n + 1))


async def test_a_loop_of_agents_ends_at_the_run_bound() -> None:
    flock = Flock(max_runs_per_correlation=20)
    ping_pong(flock)
    start = await flock.publish(Ping(n=0))
    await flock.run_until_idle(start.correlation_id, timeout=10)

    assert flock.stats.agent_runs == 20
    _, total = await flock.store.query_artifacts(FilterConfig(correlation_id=start.correlation_id))
    assert total == 21  # the input and one output per run
    status = await flock.correlation_status(start.correlation_id)
    assert status is not None and status.state == "idle" and status.pending_runs == 0
    (error,) = status.errors
    assert error.agent == "flock"
    assert "limit of 20" in error.message
    assert error.correlation_id == start.correlation_id

    # the bound is per correlation: a fresh one gets its own budget
    again = await flock.publish(Ping(n=0))
    await flock.run_until_idle(again.correlation_id, timeout=10)
    assert flock.stats.agent_runs == 40


async def test_global_wait_returns_when_a_loop_hits_the_bound() -> None:
    flock = Flock(max_runs_per_correlation=7)
    ping_pong(flock)
    await flock.publish(Ping(n=0))
    await flock.run_until_idle(timeout=10)
    assert flock.stats.agent_runs == 7


async def test_default_bound_is_a_thousand_runs() -> None:
    flock = Flock()
    assert flock.max_runs_per_correlation == 1000
    ping_pong(flock)
    start = await flock.publish(Ping(n=0))
    await flock.run_until_idle(start.correlation_id, timeout=50)
    assert flock.stats.agent_runs == 1000
    status = await flock.correlation_status(start.correlation_id)
    assert status is not None
    (error,) = status.errors
    assert "limit of 1000" in error.message


async def test_fan_out_is_trimmed_to_the_remaining_budget() -> None:
    flock = Flock(max_runs_per_correlation=2)
    for name in ("a", "b", "c"):
        flock.agent(name).consumes(Order).with_engines(lambda o: None)
    order = await flock.publish(Order(item="x"))
    await flock.run_until_idle(order.correlation_id, timeout=10)
    assert flock.stats.agent_runs == 2
    status = await flock.correlation_status(order.correlation_id)
    assert status is not None and len(status.errors) == 1
