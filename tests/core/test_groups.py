"""Multi-input subscriptions (SPEC section 7) on every store, through the public Python API:
AND gates, count gates, keyed joins with windows, batches by size and by timeout, restarts
with open groups, racing last parts, visibility and cancel."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pydantic import BaseModel

from flock import BatchSpec, Flock, JoinSpec, LabelledVisibility, TenantVisibility, flock_type
from flock.core.agent import AgentConfigError
from flock.core.store.protocol import BlackboardStore, FilterConfig, RunFilter
from flock.registry import type_registry
from support.polling import poll_until

from .conftest import StoreFactory

pytestmark = pytest.mark.timeout(90)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"GroupsDraft_{_SUFFIX}")
class Draft(BaseModel):
    text: str


@flock_type(name=f"GroupsCheck_{_SUFFIX}")
class FactCheck(BaseModel):
    ok: bool


@flock_type(name=f"GroupsReview_{_SUFFIX}")
class Review(BaseModel):
    text: str
    ok: bool


@flock_type(name=f"GroupsOrder_{_SUFFIX}")
class Order(BaseModel):
    order_id: str


@flock_type(name=f"GroupsPayment_{_SUFFIX}")
class Payment(BaseModel):
    order_id: str
    amount: int


@flock_type(name=f"GroupsShipment_{_SUFFIX}")
class Shipment(BaseModel):
    order_id: str
    amount: int


@flock_type(name=f"GroupsEvent_{_SUFFIX}")
class Event(BaseModel):
    n: int


@flock_type(name=f"GroupsDigest_{_SUFFIX}")
class Digest(BaseModel):
    ns: list[int]


def review(check: FactCheck, draft: Draft) -> Review:
    # Declared as consumes(FactCheck, Draft): the engine gets them in that order.
    assert isinstance(check, FactCheck) and isinstance(draft, Draft)
    return Review(text=draft.text, ok=check.ok)


def ship(order: Order, payment: Payment) -> Shipment:
    assert order.order_id == payment.order_id
    return Shipment(order_id=order.order_id, amount=payment.amount)


def digest(events: list[Event]) -> Digest:
    assert isinstance(events, list)
    return Digest(ns=[e.n for e in events])


async def _of_type(store: BlackboardStore, model: type[BaseModel], **filters: str) -> list:
    wanted = FilterConfig(type_names=frozenset({type_registry.name_for(model)}), **filters)
    items, _ = await store.query_artifacts(wanted, limit=-1)
    return [a.model() for a in items]  # type: ignore[union-attr]


def _flock(store: BlackboardStore) -> Flock:
    return Flock(store=store)


async def test_an_and_gate_runs_once_when_both_inputs_are_there(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        draft = await flock.publish(Draft(text="tea is hot"))
        cid = draft.correlation_id
        status = await flock.correlation_status(cid)
        assert status is not None
        assert (status.state, status.pending_runs, status.waiting_artifacts) == ("running", 0, 1)
        assert await flock.store.open_groups() == {"reviewer": 1}
        assert not await flock.wait_for_correlation(cid, 0.2)  # the Draft waits for its partner

        await flock.publish(FactCheck(ok=True), correlation_id=cid)
        await flock.run_until_idle(cid, timeout=30)
        reviews = await _of_type(store, Review, correlation_id=cid)
        assert reviews == [Review(text="tea is hot", ok=True)]
        runs, total = await flock.list_runs(RunFilter(correlation_id=cid))
        assert total == 1
        (run,) = runs
        check = (await _of_type(store, FactCheck, correlation_id=cid))[0]
        assert run.state == "succeeded" and len(run.input_ids) == 2
        stored_check = await store.get(run.input_ids[0])
        assert stored_check is not None and stored_check.model() == check  # declared order
        status = await flock.correlation_status(cid)
        assert status is not None and status.state == "idle" and status.waiting_artifacts == 0
        assert await flock.store.open_groups() == {}
    finally:
        await flock.close()


async def test_chained_consumes_stay_an_or(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    seen: list[str] = []

    def either(item: BaseModel) -> None:
        seen.append(type(item).__name__)

    flock.agent("either").consumes(Draft).consumes(FactCheck).with_engines(either)
    try:
        first = await flock.publish(Draft(text="x"))
        await flock.publish(FactCheck(ok=False), correlation_id=first.correlation_id)
        await flock.run_until_idle(first.correlation_id, timeout=30)
        assert sorted(seen) == sorted([Draft.__name__, FactCheck.__name__])
    finally:
        await flock.close()


async def test_a_count_gate_takes_its_inputs_two_at_a_time(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    pairs: list[tuple[int, int]] = []

    def pair(a: Event, b: Event) -> None:
        pairs.append((a.n, b.n))

    flock.agent("pairs").consumes(Event, Event).with_engines(pair)
    try:
        first = await flock.publish(Event(n=1))
        cid = first.correlation_id
        for n in (2, 3):
            await flock.publish(Event(n=n), correlation_id=cid)
        await poll_until(lambda: _ran(flock, cid, 1), seconds=30, what="the first pair ran")
        status = await flock.correlation_status(cid)
        assert status is not None and status.waiting_artifacts == 1
        await flock.publish(Event(n=4), correlation_id=cid)
        await poll_until(lambda: _ran(flock, cid, 2), seconds=30, what="the second pair ran")
        assert sorted(pairs) == [(1, 2), (3, 4)]  # oldest first
    finally:
        await flock.close()


async def _ran(flock: Flock, cid: str, runs: int) -> bool:
    found, _ = await flock.list_runs(RunFilter(correlation_id=cid, state=None))
    return sum(r.state == "succeeded" for r in found) >= runs


async def test_a_keyed_join_pairs_across_correlations(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=timedelta(minutes=5))
    ).publishes(Shipment).with_engines(ship)
    try:
        order = await flock.publish(Order(order_id="o-1"))
        other = await flock.publish(Payment(order_id="o-2", amount=5))
        assert await store.open_groups() == {"shipper": 2}  # o-1 and o-2
        payment = await flock.publish(Payment(order_id="o-1", amount=42))
        assert await store.open_groups() == {"shipper": 1}  # o-1 became a run
        await flock.run_until_idle(order.correlation_id, timeout=30)
        await flock.run_until_idle(payment.correlation_id, timeout=30)
        shipments = await _of_type(store, Shipment)
        assert shipments == [Shipment(order_id="o-1", amount=42)]
        # The run's outputs join its first input's correlation.
        (joined,) = await _of_type(store, Shipment, correlation_id=order.correlation_id)
        assert joined.order_id == "o-1"
        status = await flock.correlation_status(other.correlation_id)
        assert status is not None and status.state == "running"  # o-2 still waits
        assert status.waiting_artifacts == 1
    finally:
        await flock.close()


async def test_a_join_not_complete_in_its_window_is_dropped_as_an_error(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=0.3)
    ).publishes(Shipment).with_engines(ship)
    try:
        order = await flock.publish(Order(order_id="late"))
        await flock.run_until_idle(order.correlation_id, timeout=30)
        status = await flock.correlation_status(order.correlation_id)
        assert status is not None
        assert status.state == "idle" and status.waiting_artifacts == 0
        (error,) = status.errors
        assert error.agent == "shipper" and error.artifact_id == order.id
        assert "not complete within 0.3 s" in error.message
        # A partner arriving later starts a group of its own: no Shipment.
        await flock.publish(Payment(order_id="late", amount=1))
        assert await _of_type(store, Shipment) == []
        assert await store.open_groups() == {"shipper": 1}
    finally:
        await flock.close()


async def test_a_batch_runs_per_size(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("digest").consumes(Event, batch=BatchSpec(size=3)).publishes(Digest).with_engines(
        digest
    )
    try:
        published = [await flock.publish(Event(n=n)) for n in range(7)]
        await flock.run_until_idle(published[0].correlation_id, timeout=30)
        await flock.run_until_idle(published[5].correlation_id, timeout=30)
        digests = sorted(d.ns for d in await _of_type(store, Digest))
        assert digests == [[0, 1, 2], [3, 4, 5]]
        status = await flock.correlation_status(published[6].correlation_id)
        assert status is not None and status.waiting_artifacts == 1
        # The batch's run is pending work of every correlation it took from until it ends.
        for item in published[:6]:
            assert (await flock.correlation_status(item.correlation_id)).state == "idle"  # type: ignore[union-attr]
    finally:
        await flock.close()


async def test_a_batch_runs_with_what_it_gathered_after_its_timeout(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("digest").consumes(
        Event, batch=BatchSpec(size=10, timeout=timedelta(milliseconds=300))
    ).publishes(Digest).with_engines(digest)
    try:
        first = await flock.publish(Event(n=1))
        second = await flock.publish(Event(n=2))
        # A sync caller of either event returns once the batch's run finished.
        await flock.run_until_idle(second.correlation_id, timeout=30)
        assert [d.ns for d in await _of_type(store, Digest)] == [[1, 2]]
        (digested,) = await _of_type(store, Digest, correlation_id=first.correlation_id)
        assert digested.ns == [1, 2]
    finally:
        await flock.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # the durable stores
async def test_an_open_group_survives_a_restart(make_store: StoreFactory) -> None:
    first = _flock(make_store())
    first.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    draft = await first.publish(Draft(text="kept"))
    await first.close()

    second_store = make_store()
    second = _flock(second_store)
    second.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        assert await second_store.open_groups() == {"reviewer": 1}
        await second.publish(FactCheck(ok=True), correlation_id=draft.correlation_id)
        await second.run_until_idle(draft.correlation_id, timeout=30)
        assert await _of_type(second_store, Review) == [Review(text="kept", ok=True)]
    finally:
        await second.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])  # the durable stores
async def test_a_batch_timeout_fires_in_the_next_process(make_store: StoreFactory) -> None:
    def declare(flock: Flock) -> None:
        flock.agent("digest").consumes(Event, batch=BatchSpec(size=10, timeout=0.5)).publishes(
            Digest
        ).with_engines(digest)

    first = _flock(make_store())
    declare(first)
    event = await first.publish(Event(n=7))
    await first.close()  # gone before the batch's timeout

    second_store = make_store()
    second = _flock(second_store)
    declare(second)
    try:
        second.start()
        await second.run_until_idle(event.correlation_id, timeout=30)
        assert [d.ns for d in await _of_type(second_store, Digest)] == [[7]]
    finally:
        await second.close()


async def test_racing_last_parts_on_two_flocks_make_one_run_each(
    make_store: StoreFactory,
) -> None:
    stores = [make_store(), make_store()]
    flocks = [_flock(s) for s in stores]
    for flock in flocks:
        flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        correlations = [str(uuid.uuid4()) for _ in range(20)]
        await asyncio.gather(
            *(
                task
                for cid in correlations
                for task in (
                    flocks[0].publish(Draft(text=cid), correlation_id=cid),
                    flocks[1].publish(FactCheck(ok=True), correlation_id=cid),
                )
            )
        )
        for cid in correlations:
            await flocks[0].run_until_idle(cid, timeout=60)
        reviews = await _of_type(stores[0], Review)
        assert sorted(r.text for r in reviews) == sorted(correlations)
        runs, total = await flocks[0].list_runs(RunFilter(agent="reviewer"), limit=-1)
        assert total == 20 and all(r.state == "succeeded" for r in runs)
        assert await stores[0].open_groups() == {}
    finally:
        for flock in flocks:
            await flock.close()


async def test_an_agent_never_joins_what_it_may_not_see(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        secret = await flock.publish(
            Draft(text="secret"), visibility=LabelledVisibility(required_labels={"legal"})
        )
        await flock.publish(FactCheck(ok=True), correlation_id=secret.correlation_id)
        status = await flock.correlation_status(secret.correlation_id)
        assert status is not None and status.waiting_artifacts == 1  # only the FactCheck
        assert await _of_type(store, Review) == []
    finally:
        await flock.close()


async def test_joins_never_mix_tenants(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=60)
    ).publishes(Shipment).with_engines(ship)
    try:
        await flock.publish(Order(order_id="same"), visibility=TenantVisibility(tenant_id="a"))
        paid = await flock.publish(
            Payment(order_id="same", amount=3), visibility=TenantVisibility(tenant_id="b")
        )
        assert await store.open_groups() == {"shipper": 2}
        mine = await flock.publish(
            Payment(order_id="same", amount=9), visibility=TenantVisibility(tenant_id="a")
        )
        await flock.run_until_idle(mine.correlation_id, timeout=30)
        (shipment,) = await _of_type(store, Shipment)
        assert shipment.amount == 9
        status = await flock.correlation_status(paid.correlation_id)
        assert status is not None and status.waiting_artifacts == 1
    finally:
        await flock.close()


async def test_cancel_drops_the_correlations_waiting_artifacts(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        draft = await flock.publish(Draft(text="never"))
        status = await flock.cancel(draft.correlation_id)
        assert status is not None and status.state == "cancelled"
        assert status.waiting_artifacts == 0
        assert await store.open_groups() == {}
        await flock.publish(FactCheck(ok=True), correlation_id=draft.correlation_id)
        assert await store.open_groups() == {}  # nothing waits in a cancelled correlation
    finally:
        await flock.close()


async def test_republishing_a_part_adds_it_once(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    pairs: list[tuple[int, int]] = []
    flock.agent("pairs").consumes(Event, Event).with_engines(lambda a, b: pairs.append((a.n, b.n)))
    try:
        first = await flock.publish(Event(n=1))
        again = await flock.publish(first)  # the same artifact: stored once, waits once
        assert again.id == first.id
        status = await flock.correlation_status(first.correlation_id)
        assert status is not None and status.waiting_artifacts == 1
    finally:
        await flock.close()


def test_declarations_that_cannot_work_are_refused() -> None:
    flock = Flock()
    with pytest.raises(AgentConfigError, match="one type"):
        flock.agent("a").consumes(Event, Draft, batch=BatchSpec(size=2))
    with pytest.raises(AgentConfigError, match="two or more types"):
        flock.agent("b").consumes(Order, join=JoinSpec(by=lambda m: m.order_id, within=1))
    with pytest.raises(AgentConfigError, match="in batches and one by one"):
        flock.agent("c").consumes(Event).consumes(Event, batch=BatchSpec(size=2))
    with pytest.raises(ValueError, match="positive"):
        JoinSpec(by=lambda m: m, within=0)
    with pytest.raises(ValueError, match="int >= 1"):
        BatchSpec(size=0)
    with pytest.raises(TypeError, match="callable"):
        JoinSpec(by="order_id", within=5)  # type: ignore[arg-type]


async def test_run_until_idle_of_everything_waits_for_timed_groups_only(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("digest").consumes(Event, batch=BatchSpec(size=10, timeout=0.3)).publishes(
        Digest
    ).with_engines(digest)
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        await flock.publish(Event(n=3))
        await flock.publish(Draft(text="may wait for ever"))
        await flock.run_until_idle(timeout=30)  # the batch's timeout settles it; the gate not
        assert [d.ns for d in await _of_type(store, Digest)] == [[3]]
        assert await store.open_groups() == {"reviewer": 1}
    finally:
        await flock.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_version_2_database_gets_the_group_tables(make_store: StoreFactory) -> None:
    """Schema version 2 (the durable-runs release) had no group tables: opening it adds
    them, keeps the data and serves AND gates."""
    from sqlalchemy import select

    from flock.core.store.sql import SQLBlackboardStore
    from flock.core.store.sql_schema import SCHEMA_VERSION, group_parts, run_links, schema_info

    old = make_store()
    assert isinstance(old, SQLBlackboardStore)
    kept = await Flock(store=old).publish(Draft(text="from version 2"))
    async with old._engine.begin() as conn:  # make it what version 2 wrote
        await conn.run_sync(group_parts.drop)
        await conn.run_sync(run_links.drop)
        await conn.execute(schema_info.update().values(version=2))
    await old.close()

    store = make_store()
    flock = _flock(store)
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    try:
        assert await store.get(kept.id) is not None
        draft = await flock.publish(Draft(text="new"))
        await flock.publish(FactCheck(ok=True), correlation_id=draft.correlation_id)
        await flock.run_until_idle(draft.correlation_id, timeout=30)
        assert await _of_type(store, Review) == [Review(text="new", ok=True)]
        assert isinstance(store, SQLBlackboardStore)
        async with store._engine.connect() as conn:
            version = (await conn.execute(select(schema_info.c.version))).scalar()
        assert version == SCHEMA_VERSION
    finally:
        await flock.close()


async def test_the_open_groups_gauge_reads_the_store() -> None:
    from prometheus_client import generate_latest

    from flock.api.metrics import ServiceMetrics

    flock = Flock()
    flock.agent("reviewer").consumes(FactCheck, Draft).publishes(Review).with_engines(review)
    flock.agent("single").consumes(Review).with_engines(lambda r: None)
    for n in range(2):
        await flock.publish(Draft(text=str(n)))  # two correlations: two open groups
    gauge = asyncio.create_task(flock.watch_queue(interval=0.01))
    try:

        async def read() -> bool:
            return flock.stats.open_groups == {"reviewer": 2, "single": 0}

        await poll_until(read, seconds=5, what="the gauge to read the store")
    finally:
        gauge.cancel()
        await flock.close()
    text = generate_latest(ServiceMetrics(flock.stats).registry).decode()
    assert 'flock_open_groups{agent="reviewer"} 2.0' in text


async def test_joins_crossing_correlations_on_two_flocks_all_complete(
    make_store: StoreFactory,
) -> None:
    """Each last part completes a join whose first input is in another correlation, in
    both directions at once: PostgreSQL may pick one as a deadlock victim, and the store
    runs that write again, so no publish fails and no join is lost."""
    stores = [make_store(), make_store()]
    flocks = [_flock(s) for s in stores]
    for flock in flocks:
        flock.agent("shipper").consumes(
            Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=600)
        ).publishes(Shipment).with_engines(ship)
    try:
        pairs = []
        for n in range(40):
            x = await flocks[0].publish(Order(order_id=f"x{n}"))
            y = await flocks[0].publish(Order(order_id=f"y{n}"))
            pairs.append((x.correlation_id, y.correlation_id, n))
        await asyncio.gather(
            *(
                publish
                for x, y, n in pairs
                for publish in (
                    flocks[0].publish(Payment(order_id=f"x{n}", amount=n), correlation_id=y),
                    flocks[1].publish(Payment(order_id=f"y{n}", amount=n), correlation_id=x),
                )
            )
        )
        _, total = await flocks[0].list_runs(RunFilter(agent="shipper"), limit=-1)
        assert total == 80
        for x, y, _ in pairs:
            await flocks[0].run_until_idle(x, timeout=60)
            await flocks[0].run_until_idle(y, timeout=60)
        assert len(await _of_type(stores[0], Shipment)) == 80
    finally:
        for flock in flocks:
            await flock.close()


async def test_a_dead_batch_run_is_an_error_of_every_correlation_it_took_from(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)

    def broken(events: list[Event]) -> None:
        raise RuntimeError("cannot digest")

    flock.agent("digest").consumes(Event, batch=BatchSpec(size=2)).with_engines(broken).retry(
        max_attempts=1
    )
    try:
        first = await flock.publish(Event(n=1))
        second = await flock.publish(Event(n=2))
        for item in (first, second):
            await flock.run_until_idle(item.correlation_id, timeout=30)
            status = await flock.correlation_status(item.correlation_id)
            assert status is not None and status.state == "idle"
            (error,) = status.errors
            assert "cannot digest" in error.message and error.agent == "digest"
    finally:
        await flock.close()


async def test_cancelling_one_side_of_a_join_wakes_the_other_sides_waiters(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    flock = _flock(store)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_ship(order: Order, payment: Payment) -> Shipment:
        entered.set()
        await release.wait()
        return Shipment(order_id=order.order_id, amount=payment.amount)

    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=600)
    ).publishes(Shipment).with_engines(slow_ship)
    try:
        order = await flock.publish(Order(order_id="c"))
        payment = await flock.publish(Payment(order_id="c", amount=1))
        await asyncio.wait_for(entered.wait(), 30)
        waiter = asyncio.create_task(flock.wait_for_correlation(payment.correlation_id, 30))
        await asyncio.sleep(0)
        await flock.cancel(order.correlation_id)  # the run belongs to the Order's correlation
        assert await asyncio.wait_for(waiter, 10) is True  # the Payment's side is done too
        assert await _of_type(store, Shipment) == []
    finally:
        release.set()
        await flock.close()


async def test_waiting_parts_are_not_counted_as_queued_runs(make_store: StoreFactory) -> None:
    from flock.core.worker import WorkerSettings

    store = make_store()
    flock = Flock(store=store, worker=WorkerSettings(max_queued_runs=3))
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=600)
    ).publishes(Shipment).with_engines(ship)
    try:
        for n in range(6):  # six parts wait; no run is queued
            await flock.publish(Order(order_id=f"o{n}"))
        await flock.publish(Payment(order_id="o0", amount=1))  # the queue is not "full"
        assert await store.open_groups() == {"shipper": 5}
    finally:
        await flock.close()


async def test_a_direct_run_gets_its_inputs_in_declared_order() -> None:
    flock = Flock()
    seen: list[tuple[str, str]] = []

    def gate(check: FactCheck, draft: Draft) -> None:
        seen.append((type(check).__name__, type(draft).__name__))

    flock.agent("reviewer").consumes(FactCheck, Draft).with_engines(gate)
    await flock.direct_invoke("reviewer", [Draft(text="d"), FactCheck(ok=True)])
    assert seen == [(FactCheck.__name__, Draft.__name__)]


async def test_a_long_join_key_fits(make_store: StoreFactory) -> None:
    store = make_store()
    flock = _flock(store)
    flock.agent("shipper").consumes(
        Order, Payment, join=JoinSpec(by=lambda m: m.order_id, within=600)
    ).publishes(Shipment).with_engines(ship)
    try:
        key = "k" * 6000
        order = await flock.publish(Order(order_id=key))
        await flock.publish(Payment(order_id=key, amount=7))
        await flock.run_until_idle(order.correlation_id, timeout=30)
        assert [s.amount for s in await _of_type(store, Shipment)] == [7]
    finally:
        await flock.close()
