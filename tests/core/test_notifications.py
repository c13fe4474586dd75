"""PostgreSQL LISTEN/NOTIFY: processes sharing a store wake each other instead of polling.

Two flocks on one schema stand for two processes: one only publishes and waits (an
HTTP-only server), the other only executes runs (a worker). Both fallback polls are set far
beyond the test's deadline, so finishing at all proves a notification woke them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.core import waiting
from flock.core.store import PostgresBlackboardStore
from flock.core.store.notifications import parse, payloads
from flock.core.worker import WorkerSettings

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"NotifyJob_{_SUFFIX}")
class Job(BaseModel):
    n: int


@flock_type(name=f"NotifyDone_{_SUFFIX}")
class Done(BaseModel):
    n: int


def declare(flock: Flock) -> Flock:
    flock.agent("adder").consumes(Job).publishes(Done).with_engines(lambda j: Done(n=j.n + 1))
    return flock


@pytest.fixture
async def open_flock(postgres_url: str, pg_schema: str) -> AsyncIterator[Callable[..., Flock]]:
    flocks: list[Flock] = []

    def make(**kwargs: object) -> Flock:
        flock = declare(
            Flock(store=PostgresBlackboardStore(postgres_url, schema=pg_schema), **kwargs)
        )  # type: ignore[arg-type]
        flocks.append(flock)
        return flock

    yield make
    for flock in flocks:
        await flock.close()


async def test_a_worker_and_a_waiter_in_other_processes_are_woken_by_notifications(
    open_flock: Callable[..., Flock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiting, "NOTIFIED_FALLBACK", 300.0)
    server = open_flock(worker=False)
    worker = open_flock(worker=WorkerSettings(poll_seconds=300.0))
    worker.start()
    server.start()
    await worker._listening  # type: ignore[misc]  # subscribed before anything is published
    await server._listening  # type: ignore[misc]
    assert server.watch.notified and worker.watch.notified

    for n in range(3):
        job = await server.publish(Job(n=n))
        assert await server.wait_for_correlation(job.correlation_id, 30)
        status = await server.correlation_status(job.correlation_id)
        assert status is not None and status.artifact_count == 2
    assert worker.stats.agent_runs == 3 and server.stats.agent_runs == 0


async def test_a_cancel_in_one_process_wakes_a_waiter_in_another(
    open_flock: Callable[..., Flock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiting, "NOTIFIED_FALLBACK", 300.0)
    server = open_flock(worker=False)
    other = open_flock(worker=False)
    server.start()
    await server._listening  # type: ignore[misc]
    job = await server.publish(Job(n=1))  # nobody executes it

    task = asyncio.ensure_future(server.wait_outcome(job.correlation_id, 30))
    await asyncio.sleep(0.05)
    await other.cancel(job.correlation_id)
    assert (await task).value == "cancelled"


def test_payloads_round_trip_and_split_when_long() -> None:
    ids = [str(uuid.uuid4()) for _ in range(400)]
    packed = payloads(True, ids)
    assert len(packed) > 1 and all(len(p) < 8000 for p in packed)
    assert parse(packed[0])[0] is True
    assert [cid for p in packed for cid in parse(p)[1]] == ids
    assert payloads(False, []) == [] and parse("r") == (True, [])


async def test_a_store_hears_other_stores_notifications_but_not_its_own(
    postgres_url: str, pg_schema: str
) -> None:
    """Its own writes woke this process already: hearing them again only cost a claim and a
    progress read per commit. Another store on the schema (another process) is heard."""
    listening = PostgresBlackboardStore(postgres_url, schema=pg_schema)
    other = PostgresBlackboardStore(postgres_url, schema=pg_schema)
    heard: list[str] = []
    got = asyncio.Event()

    def callback(payload: str) -> None:
        heard.append(payload)
        got.set()

    flock_a, flock_b = declare(Flock(store=listening)), declare(Flock(store=other))
    try:
        assert await listening.subscribe(callback)
        await listening._listener.connected.wait()
        own = await flock_a.publish(Job(n=1))  # queues a run: notifies "runs due"
        await other.cancel_correlation(own.correlation_id)  # another store: notifies the id
        await asyncio.wait_for(got.wait(), 30)
        await asyncio.sleep(0.2)  # had our own publish been delivered, it came first
        assert [parse(p) for p in heard] == [(False, [own.correlation_id])]
    finally:
        await flock_a.close()
        await flock_b.close()
