"""Persistence: a blackboard outlives its Flock, and `resume` finishes a dead run.

Every test runs on a SQLite file and on one in-memory store shared by the Flocks (the
store a "new process" reopens).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from flock import (
    Artifact,
    ArtifactEnvelope,
    FilterConfig,
    Flock,
    TenantVisibility,
    flock_type,
)
from flock.core.store import InMemoryBlackboardStore, SQLiteBlackboardStore

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"PersistJob_{_SUFFIX}")
class Job(BaseModel):
    name: str


@flock_type(name=f"PersistResult_{_SUFFIX}")
class Result(BaseModel):
    name: str


@flock_type(name=f"PersistFinal_{_SUFFIX}")
class Final(BaseModel):
    name: str


@pytest.fixture(params=["sqlite", "memory"])
async def open_flock(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Flock]]:
    """Make Flocks on one blackboard; every one is closed at the end of the test."""
    path = str(tmp_path / "blackboard.db")
    shared = InMemoryBlackboardStore()
    flocks: list[Flock] = []

    def make() -> Flock:
        store = SQLiteBlackboardStore(path) if request.param == "sqlite" else shared
        flock = Flock(store=store)
        flocks.append(flock)
        return flock

    yield make
    for flock in reversed(flocks):
        await flock.close()


async def by_correlation(flock: Flock, correlation_id: str) -> list[Artifact]:
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=correlation_id), limit=100
    )
    assert total == len(items)
    return items  # type: ignore[return-value]


def declare(flock: Flock, worker: Callable[..., object]) -> list[str]:
    """worker: Job -> Result, finisher: Result -> Final, grumpy fails on every Result."""
    finished: list[str] = []

    def finish(result: Result) -> Final:
        finished.append(result.name)
        return Final(name=result.name)

    def grumpy(result: Result) -> None:
        raise RuntimeError(f"grumpy about {result.name}")

    # A tenant's input keeps its tenant through the cascade (a Labelled output would leave
    # it and fail the run): the worker publishes for the tenant, the finisher inherits it.
    flock.agent("worker").tenant("acme").consumes(Job).publishes(
        Result, visibility=TenantVisibility(tenant_id="acme")
    ).with_engines(worker)
    flock.agent("finisher").labels("ops").consumes(Result).publishes(Final).with_engines(finish)
    flock.agent("grumpy").labels("ops").consumes(Result).with_engines(grumpy)
    return finished


async def test_sqlite_data_is_visible_from_a_new_flock(open_flock: Callable[[], Flock]) -> None:
    first = open_flock()
    declare(first, lambda job: Result(name=job.name))
    job = await first.publish(
        Job(name="persist"),
        tags=["blue", "green"],
        partition_key="p1",
        visibility=TenantVisibility(tenant_id="acme"),
    )
    other = await first.publish(Job(name="other"))
    await first.run_until_idle(timeout=20)
    written = await by_correlation(first, job.correlation_id)
    assert [a.type for a in written] == [
        f"PersistJob_{_SUFFIX}",
        f"PersistResult_{_SUFFIX}",
        f"PersistFinal_{_SUFFIX}",
    ]
    await first.close()

    second = open_flock()  # no agents, nothing in memory: everything comes from the file
    read = await by_correlation(second, job.correlation_id)
    assert [a.to_dict() for a in read] == [a.to_dict() for a in written]
    assert read[0].tags == frozenset({"blue", "green"})
    assert read[0].visibility == TenantVisibility(tenant_id="acme")
    assert read[1].visibility == read[2].visibility == TenantVisibility(tenant_id="acme")
    assert read[1].produced_by == "worker" and read[2].produced_by == "finisher"
    assert all(a.partition_key == "p1" for a in read)

    fetched = await second.store.get(job.id)
    assert fetched is not None and fetched.to_dict() == job.to_dict()
    assert fetched.model() == Job(name="persist")

    _, total = await second.store.query_artifacts()
    assert total == 6  # two cascades of three
    assert len(await by_correlation(second, other.correlation_id)) == 3

    consumers = {c.consumer for c in await second.store.get_consumptions(written[1].id)}
    assert consumers == {"finisher", "grumpy"}

    status = await second.correlation_status(job.correlation_id)
    assert status is not None
    assert status.state == "idle"
    assert status.pending_runs == 0
    assert status.artifact_count == 3
    (error,) = status.errors
    assert error.agent == "grumpy"
    assert error.artifact_id == written[1].id
    assert "grumpy about persist" in error.message
    assert status.started_at <= status.updated_at

    summary = await second.store.summarize_artifacts(
        FilterConfig(correlation_id=job.correlation_id)
    )
    assert summary["total"] == 3
    assert summary["by_producer"] == {"external": 1, "worker": 1, "finisher": 1}


async def test_the_store_says_idle_once_the_wait_returns(
    open_flock: Callable[[], Flock],
) -> None:
    """run_until_idle returns only after the idle state is recorded, so closing right away
    (the usual shutdown) does not leave a finished correlation "running" in the store."""
    first = open_flock()
    declare(first, lambda job: Result(name=job.name))
    job = await first.publish(Job(name="one"))
    await first.run_until_idle(job.correlation_id, timeout=20)
    record = await first.store.get_correlation(job.correlation_id)
    assert record is not None and record.state == "idle"

    other = await first.publish(Job(name="two"))
    await first.run_until_idle(timeout=20)
    await first.close()

    second = open_flock()
    for cid in (job.correlation_id, other.correlation_id):
        status = await second.correlation_status(cid)
        assert status is not None and status.state == "idle", cid


async def test_runs_a_dead_worker_held_are_taken_over_without_resume(
    open_flock: Callable[[], Flock],
) -> None:
    """A worker that claimed a run and died never renews its lease: once the lease is out,
    another flock on the same store runs it, with no resume() call, exactly once."""
    first = open_flock()
    first.worker_enabled = False  # publishes only: its "worker" is the claim below
    declare(first, lambda job: Result(name=job.name))
    job = await first.publish(Job(name="taken over"))
    (held,) = await first.store.claim_runs("dead-worker", 10, 0.3, {})  # never renewed
    assert held.run.agent == "worker" and held.run.attempt == 1

    second = open_flock()
    finished = declare(second, lambda job: Result(name=job.name))
    before = await second.correlation_status(job.correlation_id)
    assert before is not None and before.state == "running"  # what the dead worker left
    await second.run_until_idle(job.correlation_id, timeout=20)

    items = await by_correlation(second, job.correlation_id)
    assert [(a.type, a.produced_by) for a in items] == [
        (f"PersistJob_{_SUFFIX}", "external"),
        (f"PersistResult_{_SUFFIX}", "worker"),
        (f"PersistFinal_{_SUFFIX}", "finisher"),
    ]
    assert items[0].id == job.id  # the input was not published again
    assert finished == ["taken over"]
    run = await second.get_run(held.run.id)
    assert run is not None and run.state == "succeeded" and run.attempt == 2
    assert second.stats.runs_recovered == 1
    # the dead worker's late commit is fenced: nothing changes
    assert not await first.store.complete_run(held.run.id, held.run.fence, [], [])
    status = await second.correlation_status(job.correlation_id)
    assert status is not None
    assert status.state == "idle" and status.pending_runs == 0 and status.artifact_count == 3
    assert [e.agent for e in status.errors] == ["grumpy"]
    assert await second.resume(job.correlation_id) == 0  # a thin alias: nothing is pending


async def test_an_agent_added_later_runs_on_new_artifacts_only(
    open_flock: Callable[[], Flock],
) -> None:
    """Runs are created when their input is stored: a new deployment's agent does not run
    again over the board's history, and the history (errors included) is kept."""
    first = open_flock()
    first.agent("worker").consumes(Job).publishes(Result).with_engines(
        lambda job: Result(name=job.name)
    )
    first.agent("grumpy").consumes(Result).with_engines(lambda result: 1 / 0).retry(max_attempts=1)
    job = await first.publish(Job(name="later"))
    await first.run_until_idle(timeout=20)
    await first.close()

    second = open_flock()
    finished = declare(second, lambda job: Result(name=job.name))
    assert await second.resume(job.correlation_id) == 0
    await second.run_until_idle(job.correlation_id, timeout=20)
    assert finished == []
    status = await second.correlation_status(job.correlation_id)
    assert status is not None
    assert status.state == "idle" and status.artifact_count == 2
    (error,) = status.errors  # the first flock's failure is still reported
    assert error.agent == "grumpy" and "ZeroDivisionError" in error.message
    assert error.attempts == 1 and error.run_id is not None


async def test_resume_of_an_unknown_correlation_runs_nothing(
    open_flock: Callable[[], Flock],
) -> None:
    flock = open_flock()
    declare(flock, lambda job: Result(name=job.name))
    assert await flock.resume(str(uuid.uuid4())) == 0


async def test_embed_meta_returns_envelopes(open_flock: Callable[[], Flock]) -> None:
    flock = open_flock()
    declare(flock, lambda job: Result(name=job.name))
    job = await flock.publish(Job(name="meta"))
    await flock.run_until_idle(job.correlation_id, timeout=20)
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=job.correlation_id), embed_meta=True
    )
    assert total == 3
    first = items[0]
    assert isinstance(first, ArtifactEnvelope)
    assert first.artifact.id == job.id
    assert [c.consumer for c in first.consumptions] == ["worker"]
