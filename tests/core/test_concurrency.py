"""max_concurrency: how many runs of one agent may be in flight at once.

Runs are held on per-run asyncio.Event gates and released one by one, so the peak is
measured by construction, not by timing.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import BaseModel

from flock import Flock, flock_type
from flock.core.worker import WorkerSettings

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"ConcJob_{_SUFFIX}")
class Job(BaseModel):
    n: int


@flock_type(name=f"ConcResult_{_SUFFIX}")
class Result(BaseModel):
    n: int


class GatedEngine:
    """Each run announces itself with its own gate, then waits until the test opens it."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.entered: asyncio.Queue[tuple[int, asyncio.Event]] = asyncio.Queue()

    async def __call__(self, job: Job) -> Result:
        self.active += 1
        self.peak = max(self.peak, self.active)
        gate = asyncio.Event()
        self.entered.put_nowait((job.n, gate))
        try:
            await gate.wait()
        finally:
            self.active -= 1
        return Result(n=job.n)

    async def next_run(self) -> tuple[int, asyncio.Event]:
        async with asyncio.timeout(5):
            return await self.entered.get()


async def drain_one_at_a_time(engine: GatedEngine, limit: int, total: int) -> list[int]:
    """Wait for `limit` runs to be in flight, then release them one by one."""
    held = [await engine.next_run() for _ in range(limit)]
    assert engine.active == limit
    order: list[int] = []
    released = 0
    while held:
        n, gate = held.pop(0)
        gate.set()
        order.append(n)
        released += 1
        # a freed slot lets exactly one queued run in
        if released + len(held) < total:
            held.append(await engine.next_run())
        assert engine.active <= limit
    return order


@pytest.mark.parametrize("limit", [2, 3])
async def test_max_concurrency_caps_parallel_runs(limit: int) -> None:
    flock = Flock()
    engine = GatedEngine()
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(engine).max_concurrency(
        limit
    )
    for n in range(6):
        await flock.publish(Job(n=n))

    order = await drain_one_at_a_time(engine, limit, total=6)
    await flock.run_until_idle(timeout=10)

    assert engine.peak == limit
    assert sorted(order) == list(range(6))
    assert engine.entered.empty()
    assert flock.stats.agent_runs == 6
    _, total = await flock.store.query_artifacts()
    assert total == 12


async def test_no_per_agent_limit_by_default() -> None:
    flock = Flock()
    engine = GatedEngine()
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(engine)
    for n in range(8):
        await flock.publish(Job(n=n))

    gates = [await engine.next_run() for _ in range(8)]
    assert engine.active == 8  # every caller's run at once: no head-of-line blocking
    for _, gate in gates:
        gate.set()
    await flock.run_until_idle(timeout=10)
    assert engine.peak == 8
    assert flock.stats.agent_runs == 8


async def test_the_worker_concurrency_caps_runs_of_every_agent_in_a_process() -> None:
    flock = Flock(worker=WorkerSettings(concurrency=2))
    first, second = GatedEngine(), GatedEngine()
    flock.agent("first").consumes(Job).publishes(Result).with_engines(first)
    flock.agent("second").consumes(Job).publishes(Result).with_engines(second)
    for n in range(3):
        await flock.publish(Job(n=n))  # six runs, two slots

    released = 0
    while released < 6:
        gates = [await _next_of(first, second) for _ in range(2)]
        # a slot frees only when a run has ended: never more than two at once
        assert first.active + second.active == 2
        for gate in gates:
            gate.set()
            released += 1
        await asyncio.sleep(0)
    await flock.run_until_idle(timeout=10)
    assert first.peak + second.peak <= 4 and flock.stats.agent_runs == 6


async def _next_of(*engines: GatedEngine) -> asyncio.Event:
    """The gate of the next run that enters any of the engines."""
    async with asyncio.timeout(5):
        while True:
            for engine in engines:
                if not engine.entered.empty():
                    return engine.entered.get_nowait()[1]
            await asyncio.sleep(0.001)


async def test_different_agents_do_not_share_a_limit() -> None:
    flock = Flock()
    first, second = GatedEngine(), GatedEngine()
    flock.agent("first").consumes(Job).publishes(Result).with_engines(first)
    flock.agent("second").consumes(Job).publishes(Result).with_engines(second)
    await flock.publish(Job(n=1))

    # both agents' single slot is taken at the same time
    (_, gate_a), (_, gate_b) = await first.next_run(), await second.next_run()
    assert first.active == 1 and second.active == 1
    gate_a.set()
    gate_b.set()
    await flock.run_until_idle(timeout=10)
    assert flock.stats.agent_runs == 2


async def test_a_high_limit_lets_the_whole_burst_run_at_once() -> None:
    flock = Flock()
    engine = GatedEngine()
    flock.agent("worker").consumes(Job).publishes(Result).with_engines(engine).max_concurrency(10)
    for n in range(6):
        await flock.publish(Job(n=n))
    gates = [await engine.next_run() for _ in range(6)]
    assert engine.active == 6
    for _, gate in gates:
        gate.set()
    await flock.run_until_idle(timeout=10)
    assert engine.peak == 6
