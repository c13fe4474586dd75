"""Runs claimed by the write that creates them (publish, or the commit of the run before).

While its worker has a slot free, a cascade's next run is stored already claimed by that
worker and starts at once: no claim query and no wait. A worker whose slots are all taken,
a capped agent and a run the store refuses (a correlation's run bound) go the usual way.
Each test counts the claims that took runs, on every store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.core.runs import RunState
from flock.core.store import BlackboardStore, FilterConfig
from flock.core.worker import WorkerSettings

from .conftest import StoreFactory

pytestmark = pytest.mark.timeout(60)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"HandA_{_SUFFIX}")
class A(BaseModel):
    n: int


@flock_type(name=f"HandB_{_SUFFIX}")
class B(BaseModel):
    n: int


@flock_type(name=f"HandC_{_SUFFIX}")
class C(BaseModel):
    n: int


@flock_type(name=f"HandD_{_SUFFIX}")
class D(BaseModel):
    n: int


def count_claims(store: BlackboardStore) -> list[str]:
    """The ids of the runs the store's claims returned (claims that found none add none)."""
    claimed: list[str] = []
    original: Callable[..., Any] = store.claim_runs

    async def claim_runs(*args: Any, **kwargs: Any) -> Any:
        found = await original(*args, **kwargs)
        claimed.extend(item.run.id for item in found)
        return found

    store.claim_runs = claim_runs  # type: ignore[method-assign]
    return claimed


def cascade(flock: Flock, *, capped: str | None = None) -> None:
    for name, consumes, publishes in (("first", A, B), ("second", B, C), ("third", C, D)):
        engine = _step(publishes)
        agent = flock.agent(name).consumes(consumes).publishes(publishes).with_engines(engine)
        if name == capped:
            agent.max_concurrency(1)


def _step(kind: type[BaseModel]) -> Callable[[Any], BaseModel]:
    def step(item: Any) -> BaseModel:  # a plain def: it runs on an engine thread
        return kind(n=item.n + 1)

    return step


async def finished(flock: Flock, correlation_id: str) -> list[Any]:
    await flock.run_until_idle(correlation_id=correlation_id, timeout=20)
    runs, _ = await flock.list_runs(limit=100)
    return [run for run in runs if run.correlation_id == correlation_id]


async def test_a_cascade_with_slots_free_needs_no_claim(store: BlackboardStore) -> None:
    claimed = count_claims(store)
    flock = Flock(store=store)
    cascade(flock)
    try:
        artifact = await flock.publish(A(n=0))
        runs = await finished(flock, artifact.correlation_id)
        assert sorted(run.agent for run in runs) == ["first", "second", "third"]
        for run in runs:
            assert run.state == RunState.SUCCEEDED
            assert run.attempt == 1 and run.worker == flock.worker.name
        assert claimed == []  # each run was claimed by the write that stored it
        status = await flock.correlation_status(artifact.correlation_id)
        assert status is not None and status.state == "idle"
        stored, _ = await store.query_artifacts(
            FilterConfig(correlation_id=artifact.correlation_id)
        )
        assert sorted(a.payload["n"] for a in stored) == [0, 1, 2, 3]
    finally:
        await flock.close()


async def test_a_worker_with_no_slot_free_leaves_the_next_run_queued(
    store: BlackboardStore,
) -> None:
    claimed = count_claims(store)
    flock = Flock(store=store, worker=WorkerSettings(concurrency=1))
    cascade(flock)
    try:
        artifact = await flock.publish(A(n=0))
        runs = await finished(flock, artifact.correlation_id)
        by_agent = {run.agent: run for run in runs}
        assert all(run.state == RunState.SUCCEEDED for run in runs)
        # The publish took the one free slot; the runs after it waited for it, queued.
        assert by_agent["first"].id not in claimed
        assert {by_agent["second"].id, by_agent["third"].id} <= set(claimed)
    finally:
        await flock.close()


async def test_a_capped_agent_is_claimed_under_its_cap(store: BlackboardStore) -> None:
    claimed = count_claims(store)
    flock = Flock(store=store)
    cascade(flock, capped="second")
    try:
        artifact = await flock.publish(A(n=0))
        runs = await finished(flock, artifact.correlation_id)
        by_agent = {run.agent: run for run in runs}
        assert all(run.state == RunState.SUCCEEDED for run in runs)
        assert claimed == [by_agent["second"].id]  # the others were handed on
    finally:
        await flock.close()


@flock_type(name=f"HandPing_{_SUFFIX}")
class Ping(BaseModel):
    n: int


@flock_type(name=f"HandPong_{_SUFFIX}")
class Pong(BaseModel):
    n: int


async def test_a_run_past_the_correlation_bound_is_neither_stored_nor_executed(
    store: BlackboardStore,
) -> None:
    calls: list[int] = []

    async def pong(item: Ping) -> Pong:
        calls.append(item.n)
        return Pong(n=item.n + 1)

    async def ping(item: Pong) -> Ping:
        calls.append(item.n)
        return Ping(n=item.n + 1)

    flock = Flock(store=store, max_runs_per_correlation=3)  # a loop of two agents
    flock.agent("pong").consumes(Ping).publishes(Pong).with_engines(pong)
    flock.agent("ping").consumes(Pong).publishes(Ping).with_engines(ping)
    try:
        artifact = await flock.publish(Ping(n=0))
        runs = await finished(flock, artifact.correlation_id)
        assert calls == [0, 1, 2]  # the fourth run was refused: nobody executed it
        assert len(runs) == 3 and all(run.state == RunState.SUCCEEDED for run in runs)
        status = await flock.correlation_status(artifact.correlation_id)
        assert status is not None and status.state == "idle"
        assert any("limit of 3 agent runs" in error.message for error in status.errors)
    finally:
        await flock.close()


async def test_many_cascades_at_once_each_run_exactly_once(store: BlackboardStore) -> None:
    """64 cascades published together on 8 slots: some runs are handed on, others
    queue for a claim; every run executes once and every cascade ends with its D."""
    executed: list[str] = []
    flock = Flock(store=store, worker=WorkerSettings(concurrency=8))
    for name, consumes, publishes in (("first", A, B), ("second", B, C), ("third", C, D)):

        def make(kind: type[BaseModel], agent: str) -> Callable[..., Any]:
            async def step(item: Any) -> BaseModel:
                executed.append(f"{agent}:{item.n}")
                return kind(n=item.n)

            return step

        flock.agent(name).consumes(consumes).publishes(publishes).with_engines(
            make(publishes, name)
        )
    try:
        published = await asyncio.gather(*(flock.publish(A(n=n)) for n in range(64)))
        await flock.run_until_idle(timeout=60)
        assert sorted(executed) == sorted(
            f"{agent}:{n}" for agent in ("first", "second", "third") for n in range(64)
        )
        for artifact in published:
            status = await flock.correlation_status(artifact.correlation_id)
            assert status is not None and status.state == "idle"
            filters = FilterConfig(correlation_id=artifact.correlation_id)
            stored, _ = await store.query_artifacts(filters)
            assert sorted(a.type for a in stored) == sorted(f"Hand{k}_{_SUFFIX}" for k in "ABCD")
    finally:
        await flock.close()


@flock_type(name=f"HandNote_{_SUFFIX}")
class Note(BaseModel):
    text: str


async def test_a_commit_that_creates_only_a_dead_run_still_wakes_its_waiters(
    store: BlackboardStore,
) -> None:
    """A `where` that raises makes the run dead at once: the correlation is idle after
    the commit that created it, and whoever waits for it must hear so (the memory store
    has no polling to fall back on)."""

    def broken(note: Note) -> bool:
        raise ValueError("this predicate cannot read the note")

    async def write(item: A) -> Note:
        return Note(text=str(item.n))

    async def review(note: Note) -> D:
        return D(n=0)

    flock = Flock(store=store, worker=WorkerSettings(poll_seconds=60))
    flock.agent("writer").consumes(A).publishes(Note).with_engines(write)
    flock.agent("reviewer").consumes(Note, where=broken).publishes(D).with_engines(review)
    try:
        artifact = await flock.publish(A(n=1))
        # No timeout of its own: only a wake-up ends this wait (the memory store never
        # polls), so a commit that told nobody would hang here.
        await asyncio.wait_for(flock.run_until_idle(correlation_id=artifact.correlation_id), 10)
        status = await flock.correlation_status(artifact.correlation_id)
        assert status is not None and status.state == "idle"
        assert [e.agent for e in status.errors] == ["reviewer"]
    finally:
        await flock.close()


async def test_runs_a_commit_leaves_queued_beside_those_it_hands_on_start_at_once(
    store: BlackboardStore,
) -> None:
    """A commit that hands on one run and leaves another queued (a capped agent's) wakes
    the claim loop: the queued run does not wait for the poll (60 s here) or the claim
    loop's next look at open groups (2 s). The bound below is a liveness check with a wide
    margin: the claim takes milliseconds."""

    async def write(item: A) -> B:
        return B(n=item.n)

    async def free(item: B) -> C:
        return C(n=item.n)

    async def capped(item: B) -> D:
        return D(n=item.n)

    flock = Flock(store=store, worker=WorkerSettings(poll_seconds=60))
    flock.agent("writer").consumes(A).publishes(B).with_engines(write)
    flock.agent("free").consumes(B).publishes(C).with_engines(free)
    flock.agent("capped").consumes(B).publishes(D).with_engines(capped).max_concurrency(1)
    try:
        await flock.publish(A(n=0))  # the worker has started and settled once
        await flock.run_until_idle(timeout=20)
        started = time.monotonic()
        artifact = await flock.publish(A(n=1))
        runs = await finished(flock, artifact.correlation_id)
        assert time.monotonic() - started < 1.5
        assert sorted(run.agent for run in runs) == ["capped", "free", "writer"]
        assert all(run.state == RunState.SUCCEEDED for run in runs)
    finally:
        await flock.close()


class Stopper:
    """`flock.stop(0.0)` in a task of its own, started once, from wherever a test needs it."""

    def __init__(self, flock: Flock) -> None:
        self.flock = flock
        self.stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> bool:
        """Start the stop (True), unless it was started already (False)."""
        if self._task is not None:
            return False
        self._task = asyncio.get_running_loop().create_task(self._stop())
        return True

    async def _stop(self) -> None:
        await self.flock.stop(0.0)
        self.stopped.set()


async def test_a_run_handed_on_and_stopped_before_it_began_is_released(
    store: BlackboardStore,
) -> None:
    # `stop(0)` (a second SIGTERM, `Flock.close()`) from a task that runs between the
    # commit that handed the next run on and that run's first step: the run never began,
    # and must go back to the queue, not wait out its lease.
    flock = Flock(store=store)
    cascade(flock)
    original: Callable[..., Any] = store.complete_run
    stopper = Stopper(flock)

    async def complete_run(*args: Any, **kwargs: Any) -> Any:
        commit = await original(*args, **kwargs)
        stopper.start()  # once, before the handed-on run's first step
        return commit

    store.complete_run = complete_run  # type: ignore[method-assign]
    try:
        artifact = await flock.publish(A(n=0))
        await asyncio.wait_for(stopper.stopped.wait(), 20)
        runs, _ = await flock.list_runs(limit=100)
        by_agent = {run.agent: run for run in runs if run.correlation_id == artifact.correlation_id}
        assert by_agent["first"].state == RunState.SUCCEEDED
        second = by_agent["second"]
        assert (second.state, second.attempt) == (RunState.QUEUED, 0)  # not counted
        assert "third" not in by_agent
    finally:
        await flock.close()


async def test_runs_a_claim_returns_while_the_worker_stops_are_released(
    make_store: StoreFactory,
) -> None:
    publisher = Flock(store=make_store(), worker=False)  # queues, runs nothing
    cascade(publisher)
    store = make_store()
    flock = Flock(store=store)
    cascade(flock)
    original: Callable[..., Any] = store.claim_runs
    stopper = Stopper(flock)

    async def claim_runs(*args: Any, **kwargs: Any) -> Any:
        found = await original(*args, **kwargs)
        if found and stopper.start():
            await asyncio.sleep(0)  # the stop begins while this claim is in flight
        return found

    store.claim_runs = claim_runs  # type: ignore[method-assign]
    try:
        artifact = await publisher.publish(A(n=0))
        flock.start()
        await asyncio.wait_for(stopper.stopped.wait(), 20)
        runs, _ = await store.query_runs()
        (first,) = [run for run in runs if run.correlation_id == artifact.correlation_id]
        assert (first.agent, first.state, first.attempt) == ("first", RunState.QUEUED, 0)
        assert flock.stats.run_outcomes.get(("first", "released")) == 1
    finally:
        await flock.close()
        await publisher.close()
