"""Waiting and status: per-correlation waits, cancelled waiters, global idle, counters.

Agents are held on asyncio.Event gates so every "still running" claim is made while the
work is provably in flight; timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Artifact, FilterConfig, Flock, flock_type
from flock.core.store import SQLiteBlackboardStore

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


async def running(flock: Flock, correlation_id: str) -> bool:
    """What the store says: some run of the correlation is queued or running."""
    status = await flock.correlation_status(correlation_id)
    return status is not None and status.state == "running"


@flock_type(name=f"WaitJob_{_SUFFIX}")
class Job(BaseModel):
    name: str
    slow: bool = False


@flock_type(name=f"WaitResult_{_SUFFIX}")
class Result(BaseModel):
    name: str


@flock_type(name=f"WaitFinal_{_SUFFIX}")
class Final(BaseModel):
    name: str


class Gate:
    """Slow runs signal `entered` and wait for `release`; fast runs pass straight through."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished: list[str] = []

    async def __call__(self, job: Job) -> Result:
        if job.slow:
            self.entered.set()
            await self.release.wait()
        self.finished.append(job.name)
        return Result(name=job.name)

    async def wait_entered(self) -> None:
        async with asyncio.timeout(5):
            await self.entered.wait()


def gated_flock(gate: Gate) -> Flock:
    flock = Flock()
    # two slots, so the slow run does not hold up the fast one on the semaphore
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(gate).max_concurrency(2)
    return flock


async def test_waiting_for_one_correlation_ignores_others_in_flight() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()
    y = await flock.publish(Job(name="y"))

    await flock.run_until_idle(correlation_id=y.correlation_id, timeout=5)

    assert gate.finished == ["y"]
    y_status = await flock.correlation_status(y.correlation_id)
    assert y_status is not None and y_status.state == "idle" and y_status.pending_runs == 0
    x_status = await flock.correlation_status(x.correlation_id)
    assert x_status is not None
    assert x_status.state == "running"
    assert x_status.pending_runs >= 1
    assert await running(flock, x.correlation_id)
    assert not await running(flock, y.correlation_id)

    gate.release.set()
    await flock.run_until_idle(correlation_id=x.correlation_id, timeout=5)
    assert sorted(gate.finished) == ["x", "y"]
    x_status = await flock.correlation_status(x.correlation_id)
    assert x_status is not None and x_status.state == "idle" and x_status.pending_runs == 0


async def test_wait_for_correlation_times_out_then_succeeds() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    assert await flock.wait_for_correlation(x.correlation_id, timeout=0.05) is False
    assert await running(flock, x.correlation_id)  # the timeout cancelled nothing

    gate.release.set()
    assert await flock.wait_for_correlation(x.correlation_id, timeout=5) is True
    assert gate.finished == ["x"]
    assert await flock.wait_for_correlation(x.correlation_id, timeout=0.05) is True


async def test_run_until_idle_timeout_raises_but_leaves_the_work_running() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    with pytest.raises(TimeoutError):
        await flock.run_until_idle(x.correlation_id, timeout=0.05)
    with pytest.raises(TimeoutError):
        await flock.run_until_idle(timeout=0.05)
    assert await running(flock, x.correlation_id)

    gate.release.set()
    await flock.run_until_idle(x.correlation_id, timeout=5)
    assert gate.finished == ["x"]


async def test_a_cancelled_waiter_leaves_the_work_running() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    waiter = asyncio.create_task(flock.run_until_idle(correlation_id=x.correlation_id))
    await asyncio.sleep(0)  # a yield, not a delay: the waiter starts waiting before the cancel
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await running(flock, x.correlation_id)

    gate.release.set()
    # a fresh waiter still sees the end of the cascade
    await flock.run_until_idle(correlation_id=x.correlation_id, timeout=5)
    items, _ = await flock.store.query_artifacts(FilterConfig(correlation_id=x.correlation_id))
    assert [(a.produced_by, a.payload) for a in items] == [
        ("external", {"name": "x", "slow": True}),
        ("worker", {"name": "x"}),
    ]


async def test_a_cancelled_global_waiter_leaves_the_work_running() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    waiter = asyncio.create_task(flock.run_until_idle())
    await asyncio.sleep(0)  # a yield, not a delay
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter

    gate.release.set()
    await flock.run_until_idle(timeout=5)
    assert gate.finished == ["x"]
    status = await flock.correlation_status(x.correlation_id)
    assert status is not None and status.state == "idle"


async def test_several_waiters_on_one_correlation_all_wake() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    waiters = [
        asyncio.create_task(flock.run_until_idle(correlation_id=x.correlation_id)) for _ in range(3)
    ]
    waiters.append(asyncio.create_task(flock.run_until_idle()))
    waiters.append(asyncio.create_task(flock.wait_for_correlation(x.correlation_id, 5)))
    gate.release.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*waiters)
    assert results == [None, None, None, None, True]


async def test_global_run_until_idle_waits_for_everything() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()
    y = await flock.publish(Job(name="y"))
    await flock.run_until_idle(y.correlation_id, timeout=5)

    everything = asyncio.create_task(flock.run_until_idle())
    done, _ = await asyncio.wait({everything}, timeout=0.05)
    assert not done, "the global wait returned while correlation x still runs"

    gate.release.set()
    async with asyncio.timeout(5):
        await everything
    assert not await running(flock, x.correlation_id)
    assert sorted(gate.finished) == ["x", "y"]


async def test_wait_covers_every_step_of_a_cascade() -> None:
    """Between one agent's end and the next one's start the correlation never looks idle."""
    flock = Flock()
    entered, release = asyncio.Event(), asyncio.Event()

    async def finish(result: Result) -> Final:
        entered.set()
        await release.wait()
        return Final(name=result.name)

    flock.agent("worker").consumes(Job).publishes(Result).with_engines(
        lambda job: Result(name=job.name)
    )
    flock.agent("finisher").consumes(Result).publishes(Final).with_engines(finish)

    job = await flock.publish(Job(name="j"))
    waiter = asyncio.create_task(flock.run_until_idle(job.correlation_id))
    async with asyncio.timeout(5):
        await entered.wait()
    assert not waiter.done()

    status = await flock.correlation_status(job.correlation_id)
    assert status is not None
    assert status.state == "running" and status.pending_runs == 1
    assert status.artifact_count == 2

    release.set()
    async with asyncio.timeout(5):
        await waiter
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and status.state == "idle" and status.artifact_count == 3


async def test_correlation_status_fields() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    x = await flock.publish(Job(name="x", slow=True))
    await gate.wait_entered()

    running = await flock.correlation_status(x.correlation_id)
    assert running is not None
    assert running.correlation_id == x.correlation_id
    assert running.state == "running"
    assert running.pending_runs == 1
    assert running.artifact_count == 1
    assert running.errors == []
    assert running.started_at <= running.updated_at
    assert running.started_at.tzinfo is not None

    gate.release.set()
    await flock.run_until_idle(x.correlation_id, timeout=5)
    idle = await flock.correlation_status(x.correlation_id)
    assert idle is not None
    assert idle.state == "idle"
    assert idle.pending_runs == 0
    assert idle.artifact_count == 2
    assert idle.errors == []
    assert idle.started_at == running.started_at
    assert idle.started_at <= idle.updated_at
    assert idle.updated_at >= running.updated_at

    as_dict = idle.to_dict()
    assert set(as_dict) == {
        "correlation_id",
        "waiting_artifacts",
        "state",
        "pending_runs",
        "artifact_count",
        "errors",
        "started_at",
        "updated_at",
    }
    assert as_dict["state"] == "idle" and as_dict["started_at"].endswith("Z")

    record = await flock.store.get_correlation(x.correlation_id)
    assert record is not None and record.state == "idle" and record.artifact_count == 2


async def test_status_times_stay_ordered_when_artifacts_carry_older_timestamps() -> None:
    flock = Flock()
    cid = str(uuid.uuid4())
    fresh = Artifact(type=f"WaitResult_{_SUFFIX}", payload={"name": "new"}, correlation_id=cid)
    older = Artifact(
        type=f"WaitResult_{_SUFFIX}",
        payload={"name": "old"},
        correlation_id=cid,
        created_at=fresh.created_at - timedelta(hours=1),
    )
    await flock.publish(fresh)
    await flock.publish(older)
    status = await flock.correlation_status(cid)
    assert status is not None
    assert status.artifact_count == 2
    assert status.started_at <= status.updated_at


async def test_status_of_a_correlation_nobody_consumes() -> None:
    flock = Flock()
    artifact = await flock.publish(Result(name="orphan"))
    status = await flock.correlation_status(artifact.correlation_id)
    assert status is not None
    assert status.state == "idle" and status.pending_runs == 0 and status.artifact_count == 1
    await flock.run_until_idle(artifact.correlation_id, timeout=5)


async def test_unknown_correlation() -> None:
    flock = Flock()
    unknown = str(uuid.uuid4())
    assert await flock.correlation_status(unknown) is None
    assert not await running(flock, unknown)
    assert await flock.wait_for_correlation(unknown, timeout=1) is True
    await flock.run_until_idle(unknown, timeout=1)
    await flock.run_until_idle(timeout=1)


async def test_stats_counters() -> None:
    flock = Flock()
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(
        lambda job: Result(name=job.name)
    )
    flock.agent("finisher").consumes(Result).publishes(Final).with_engines(
        lambda result: Final(name=result.name)
    )
    flock.agent("grumpy").consumes(Result).with_engines(lambda result: 1 / 0).retry(max_attempts=1)
    assert (flock.stats.artifacts_published, flock.stats.agent_runs) == (0, 0)

    for n in range(3):
        await flock.publish(Job(name=str(n)))
    await flock.run_until_idle(timeout=10)

    assert flock.stats.artifacts_published == 9  # 3 jobs, 3 results, 3 finals
    assert flock.stats.agent_runs == 9  # worker, finisher and grumpy on each
    assert flock.stats.agent_failures == 3
    _, total = await flock.store.query_artifacts()
    assert total == flock.stats.artifacts_published


def count_progress_reads(flock: Flock, correlation_id: str) -> list[int]:
    """The `pending` of each progress read of the correlation (a spy on the real store)."""
    reads: list[int] = []
    store = flock.store
    original = store.progress

    async def progress(cid: str | None = None) -> Any:
        found = await original(cid)
        if cid == correlation_id:
            reads.append(found.pending)
        return found

    store.progress = progress  # type: ignore[method-assign]
    return reads


async def test_a_waiter_whose_run_executes_here_reads_the_store_once_it_ended() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    flock.agent("finisher").consumes(Result).publishes(Final).with_engines(
        lambda result: Final(name=result.name)
    )
    job = await flock.publish(Job(name="slow", slow=True))
    await gate.wait_entered()
    reads = count_progress_reads(flock, job.correlation_id)

    waiter = asyncio.create_task(flock.run_until_idle(job.correlation_id, timeout=10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    assert reads == []  # its run executes here: pending for sure, and its end wakes it
    gate.release.set()
    await waiter
    # The run's commit handed the finisher's run on (still busy: nobody woken); the
    # finisher's end woke the waiter, which read once and found the correlation idle.
    assert reads == [0]
    assert gate.finished == ["slow"]
    stored, _ = await flock.store.query_artifacts(FilterConfig(correlation_id=job.correlation_id))
    assert sorted(a.type for a in stored) == sorted(
        f"Wait{kind}_{_SUFFIX}" for kind in ("Job", "Result", "Final")
    )
    await flock.close()


async def test_a_waiter_skipping_its_first_read_still_sees_a_cancel() -> None:
    gate = Gate()
    flock = gated_flock(gate)
    job = await flock.publish(Job(name="slow", slow=True))
    await gate.wait_entered()
    waiter = asyncio.create_task(flock.wait_outcome(job.correlation_id, timeout=10))
    await asyncio.sleep(0.02)
    await flock.cancel(job.correlation_id)
    assert (await waiter).value == "cancelled"
    await flock.close()


async def test_a_run_cancelled_before_it_began_leaves_no_waiter_asleep() -> None:
    """The claim loop spawns the run's task, and the correlation is cancelled before that
    task took its first step (so none of its code, nor its end, ran): a waiter that
    starts then must read the store and answer `cancelled`, not sleep until its timeout."""
    flock = Flock()
    # capped: the run is claimed by the claim loop, which spawns its task
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(
        lambda job: Result(name=job.name)
    ).max_concurrency(1)
    flock.start()
    outcomes = []
    for n in range(20):  # some iterations catch the task spawned and not yet started
        job = await flock.publish(Job(name=str(n)))
        for _ in range(n % 4):
            await asyncio.sleep(0)
        await flock.cancel(job.correlation_id)
        async with asyncio.timeout(5):  # a sleeping waiter would take the full 30 s
            outcomes.append(await flock.wait_outcome(job.correlation_id, timeout=30))
    assert {o.value for o in outcomes} <= {"cancelled", "idle"}
    await flock.close()


def spy_reads(store: Any) -> tuple[list[str], asyncio.Event]:
    """Record the store's progress and record reads; the event is set at the third read."""
    reads: list[str] = []
    third = asyncio.Event()
    progress, get_correlation = store.progress, store.get_correlation

    async def spy_progress(correlation_id: str | None = None) -> Any:
        reads.append("progress")
        if len(reads) >= 3:
            third.set()
        return await progress(correlation_id)

    async def spy_record(correlation_id: str) -> Any:
        reads.append("record")
        return await get_correlation(correlation_id)

    store.progress = spy_progress
    store.get_correlation = spy_record
    return reads, third


async def test_a_polling_waiter_skips_its_early_polls_while_its_run_executes_here(
    tmp_path: Any,
) -> None:
    """A SQLite file may be shared by processes that cannot wake each other, so waiters
    poll (5 ms, doubling up to 250 ms); while a run of the correlation executes here, the
    early polls need not look: that run's end wakes the waiter, which reads the record
    the answer reports, once."""
    gate = Gate()
    flock = Flock(store=SQLiteBlackboardStore(tmp_path / "polled.db"))
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(gate)
    job = await flock.publish(Job(name="slow", slow=True))
    await gate.wait_entered()
    reads, _ = spy_reads(flock.store)
    waiter = asyncio.create_task(flock.wait_status(job.correlation_id, timeout=10))
    await asyncio.sleep(0.2)  # the polls at 5, 10, 20, 40 and 80 ms have passed
    assert reads == []
    gate.release.set()
    outcome, status = await waiter
    assert outcome.value == "idle"
    assert status is not None and status.state == "idle" and status.artifact_count == 2
    assert reads == ["record"]
    await flock.close()


async def test_a_polling_waiter_reads_progress_and_the_record_once_done(tmp_path: Any) -> None:
    """The run executes in another flock on the same file (as another process would): only
    polls can see it end. They read the light progress; the record, once that says done."""
    path = tmp_path / "shared.db"
    waiting_side = Flock(store=SQLiteBlackboardStore(path), worker=False)
    working_side = Flock(store=SQLiteBlackboardStore(path))
    for flock in (waiting_side, working_side):
        flock.agent("worker").consumes(Job).publishes(Result).with_engines(
            lambda job: Result(name=job.name)
        )
    job = await waiting_side.publish(Job(name="elsewhere"))
    reads, third = spy_reads(waiting_side.store)
    waiter = asyncio.create_task(waiting_side.wait_status(job.correlation_id, timeout=20))
    async with asyncio.timeout(5):
        await third.wait()
    # The first look reads the record (it may find the correlation done); the polls after
    # it, while the run is queued and nobody here executes it, the progress.
    assert reads[0] == "record" and set(reads[1:]) == {"progress"}
    working_side.start()
    outcome, status = await waiter
    assert outcome.value == "idle"
    assert status is not None and status.state == "idle" and status.artifact_count == 2
    assert reads[-2:] == ["progress", "record"] and "record" not in reads[1:-1]
    await working_side.close()
    await waiting_side.close()
