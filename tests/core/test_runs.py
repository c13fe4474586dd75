"""Runs through the public Python API: retries, dead runs, cancel, timeouts, no blocking.

Every wait is on an event or the store's state, never on a timer.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from pydantic import BaseModel

from flock import Artifact, Flock, RunContext, flock_type
from flock.core.runs import NonRetryableError, RunState
from flock.core.store.protocol import RunFilter
from flock.core.worker import WorkerSettings
from support.polling import poll_until

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"RunsJob_{_SUFFIX}")
class Job(BaseModel):
    n: int


@flock_type(name=f"RunsDone_{_SUFFIX}")
class Done(BaseModel):
    n: int


class Flaky:
    """Fails its first `failures` attempts of every run; records what the context said."""

    def __init__(self, failures: int, error: type[Exception] = ValueError) -> None:
        self.failures, self.error = failures, error
        self.seen: list[tuple[str, int]] = []

    async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Done:
        self.seen.append((ctx.run_id, ctx.attempt))
        if ctx.attempt <= self.failures:
            raise self.error(f"attempt {ctx.attempt} failed")
        (job,) = inputs
        assert isinstance(job, Job)
        return Done(n=job.n + 1)


def fast_retries(builder: object, attempts: int = 3) -> None:
    builder.retry(max_attempts=attempts, initial_delay=0.01, max_delay=0.02)  # type: ignore[attr-defined]


async def test_a_failing_attempt_is_retried_with_the_same_run_id() -> None:
    flock = Flock()
    engine = Flaky(failures=2)
    fast_retries(flock.agent("flaky").consumes(Job).publishes(Done).with_engines(engine))

    job = await flock.publish(Job(n=1))
    await flock.run_until_idle(job.correlation_id, timeout=10)

    (run_id, _), *_ = engine.seen
    assert engine.seen == [(run_id, 1), (run_id, 2), (run_id, 3)]
    run = await flock.get_run(run_id)
    assert run is not None and run.state == RunState.SUCCEEDED and run.attempt == 3
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and status.errors == [] and status.artifact_count == 2


async def test_attempts_exhausted_make_a_dead_run_reported_in_errors() -> None:
    flock = Flock()
    engine = Flaky(failures=10)
    fast_retries(flock.agent("flaky").consumes(Job).publishes(Done).with_engines(engine), 2)

    job = await flock.publish(Job(n=1))
    await flock.run_until_idle(job.correlation_id, timeout=10)

    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and status.state == "idle"
    (error,) = status.errors
    assert error.attempts == 2 and error.agent == "flaky" and error.artifact_id == job.id
    assert error.message == "ValueError: attempt 2 failed"
    run = await flock.get_run(str(error.run_id))
    assert run is not None and run.state == RunState.DEAD

    engine.failures = 0  # the cause is fixed: a manual retry finishes it
    await flock.retry_run(run.id)
    await flock.run_until_idle(job.correlation_id, timeout=10)
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and status.errors == [] and status.artifact_count == 2


@pytest.mark.parametrize("kind", ["declared", "marker"])
async def test_non_retryable_errors_end_the_run_at_once(kind: str) -> None:
    flock = Flock()
    error = KeyError if kind == "declared" else NonRetryableError
    engine = Flaky(failures=10, error=error)
    builder = flock.agent("strict").consumes(Job).publishes(Done).with_engines(engine)
    builder.retry(max_attempts=5, initial_delay=0.01, non_retryable=[KeyError])

    job = await flock.publish(Job(n=1))
    await flock.run_until_idle(job.correlation_id, timeout=10)

    assert len(engine.seen) == 1
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and [e.attempts for e in status.errors] == [1]


async def test_an_attempt_past_its_timeout_is_cancelled_and_fails() -> None:
    flock = Flock()
    cancelled = asyncio.Event()

    async def slow(job: Job) -> Done:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Done(n=job.n)

    flock.agent("slow").consumes(Job).publishes(Done).with_engines(slow).timeout(0.1).retry(
        max_attempts=1
    )
    job = await flock.publish(Job(n=1))
    await flock.run_until_idle(job.correlation_id, timeout=10)

    assert cancelled.is_set()
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None
    assert [e.message for e in status.errors] == [
        "TimeoutError: the attempt took longer than 0.1 s"
    ]


async def test_cancel_stops_the_engine_drops_its_outputs_and_wakes_waiters() -> None:
    flock = Flock()
    entered, stopped = asyncio.Event(), asyncio.Event()

    async def stuck(job: Job) -> Done:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return Done(n=job.n)

    flock.agent("stuck").consumes(Job).publishes(Done).with_engines(stuck)
    job = await flock.publish(Job(n=1))
    waiter = asyncio.create_task(flock.wait_for_correlation(job.correlation_id, 30))
    await entered.wait()

    status = await flock.cancel(job.correlation_id)

    assert status is not None and status.state == "cancelled" and status.pending_runs == 0
    assert await waiter is False  # woken at once, not completed
    await stopped.wait()
    again = await flock.cancel(job.correlation_id)
    assert again is not None and again.state == "cancelled"
    assert await flock.cancel(str(uuid.uuid4())) is None
    (run,), _ = await flock.list_runs(RunFilter(correlation_id=job.correlation_id))
    assert run.state == RunState.CANCELLED and run.output_ids == ()
    await flock.run_until_idle(timeout=5)
    assert (await flock.correlation_status(job.correlation_id)).artifact_count == 1  # type: ignore[union-attr]


async def test_a_blocking_def_engine_runs_off_the_event_loop() -> None:
    """The engine blocks its thread until the loop has done other work: on the loop, that
    would deadlock (and the test would time out)."""
    flock = Flock()
    release = threading.Event()
    started = threading.Event()

    def blocking(job: Job) -> Done:
        started.set()
        if not release.wait(timeout=30):
            raise RuntimeError("the loop never ran while the engine blocked")
        return Done(n=job.n)

    flock.agent("blocking").consumes(Job).publishes(Done).with_engines(blocking)
    job = await flock.publish(Job(n=1))
    await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0)  # the loop is free: other requests and lease renewals go on
    release.set()
    await flock.run_until_idle(job.correlation_id, timeout=10)
    status = await flock.correlation_status(job.correlation_id)
    assert status is not None and status.errors == [] and status.artifact_count == 2


async def test_forty_callers_on_one_agent_run_at_once() -> None:
    """No head-of-line blocking: every caller's run is in flight before any is released."""
    flock = Flock()
    entered: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()

    async def gated(job: Job) -> Done:
        entered.put_nowait(job.n)
        await release.wait()
        return Done(n=job.n)

    flock.agent("gated").consumes(Job).publishes(Done).with_engines(gated)
    jobs = await asyncio.gather(*(flock.publish(Job(n=n)) for n in range(40)))
    async with asyncio.timeout(10):
        seen = sorted([await entered.get() for _ in range(40)])
    assert seen == list(range(40))
    release.set()
    await asyncio.gather(*(flock.run_until_idle(j.correlation_id, timeout=10) for j in jobs))


async def test_republishing_a_stored_artifact_runs_nothing_again() -> None:
    flock = Flock()
    runs: list[int] = []

    def count(job: Job) -> Done:
        runs.append(job.n)
        return Done(n=job.n)

    flock.agent("count").consumes(Job).publishes(Done).with_engines(count)
    first = await flock.publish(Job(n=7))
    again = Artifact(type=first.type, payload={"n": 8}, id=first.id, correlation_id="elsewhere")

    results = await asyncio.gather(flock.publish(again), flock.publish(first))
    await asyncio.gather(flock.resume(first.correlation_id), flock.resume(first.correlation_id))
    await flock.run_until_idle(timeout=10)

    assert runs == [7] and all(r.payload == {"n": 7} for r in results)
    assert flock.stats.artifacts_published == 2  # the input and one output


async def test_a_direct_run_is_bounded_by_the_agents_timeout() -> None:
    flock = Flock()

    async def slow(job: Job) -> Done:
        await asyncio.sleep(60)
        return Done(n=job.n)

    flock.agent("slow").consumes(Job).publishes(Done).with_engines(slow).timeout(0.1)
    with pytest.raises(TimeoutError):
        await flock.direct_invoke("slow", [Job(n=1)])
    assert flock.stats.agent_failures == 1


async def test_one_callers_burst_does_not_starve_another_caller() -> None:
    """Four slots, forty slow runs of one principal queued first: another principal's run
    starts as soon as a slot or two free up, not after the whole burst."""
    flock = Flock(worker=WorkerSettings(concurrency=4))
    entered: asyncio.Queue[int] = asyncio.Queue()
    gates: dict[int, asyncio.Event] = {}

    async def gated(job: Job) -> Done:
        gates[job.n] = asyncio.Event()
        entered.put_nowait(job.n)
        await gates[job.n].wait()
        return Done(n=job.n)

    flock.agent("gated").consumes(Job).publishes(Done).with_engines(gated)
    for n in range(40):
        await flock.publish(Job(n=n), principal="bulk")
    first = [await asyncio.wait_for(entered.get(), 5) for _ in range(4)]
    await flock.publish(Job(n=1000), principal="interactive")

    started: list[int] = []
    for n in first[:2]:
        gates[n].set()
        started.append(await asyncio.wait_for(entered.get(), 5))
    assert 1000 in started
    for gate in list(gates.values()):
        gate.set()
    while len(gates) < 41 or not all(g.is_set() for g in gates.values()):
        await asyncio.wait_for(entered.get(), 5)
        for gate in gates.values():
            gate.set()
    await flock.run_until_idle(timeout=10)


async def test_the_queued_gauge_reads_the_stores_queued_runs_per_agent() -> None:
    from prometheus_client import generate_latest

    from flock.api.metrics import ServiceMetrics

    flock = Flock(worker=False)  # nothing claims: the runs stay queued
    flock.agent("count").consumes(Job).publishes(Done).with_engines(lambda job: Done(n=job.n))
    flock.agent("idle").consumes(Done).with_engines(lambda done: None)
    for n in range(3):
        await flock.publish(Job(n=n))
    gauge = asyncio.create_task(flock.watch_queue(interval=0.01))
    try:

        async def read() -> bool:
            return flock.stats.runs_queued == {"count": 3, "idle": 0}

        await poll_until(read, seconds=5, what="the gauge to read the store")
    finally:
        gauge.cancel()
    text = generate_latest(ServiceMetrics(flock.stats).registry).decode()
    assert 'flock_runs_queued{agent="count"} 3.0' in text
    assert 'flock_runs_queued{agent="idle"} 0.0' in text
