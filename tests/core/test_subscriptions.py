"""Which artifacts an agent runs on: where=, from_agents=, channels=, prevent_self_trigger."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import FilterConfig, Flock, flock_type

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"SubTask_{_SUFFIX}")
class Task(BaseModel):
    n: int
    label: str = ""


@flock_type(name=f"SubDone_{_SUFFIX}")
class Done(BaseModel):
    n: int


@flock_type(name=f"SubCounter_{_SUFFIX}")
class Counter(BaseModel):
    n: int


class Recorder:
    """A sync engine that remembers the tasks it saw and marks each one done."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, task: Task) -> Done:
        self.seen.append(task.n)
        return Done(n=task.n)


async def publish_all(flock: Flock, *tasks: Task, tags: list[str] | None = None) -> None:
    for task in tasks:
        await flock.publish(task, tags=tags)
    await flock.run_until_idle(timeout=10)


async def test_where_single_predicate() -> None:
    flock = Flock()
    evens = Recorder()
    flock.agent("evens").consumes(Task, where=lambda t: t.n % 2 == 0).publishes(Done).with_engines(
        evens
    )
    await publish_all(flock, *(Task(n=i) for i in range(6)))
    assert sorted(evens.seen) == [0, 2, 4]


async def test_where_predicate_gets_the_typed_model() -> None:
    received: list[object] = []

    def predicate(task: Task) -> bool:
        received.append(task)
        return True

    flock = Flock()
    flock.agent("a").consumes(Task, where=predicate).with_engines(Recorder())
    await publish_all(flock, Task(n=1))
    assert received == [Task(n=1)]


async def test_where_list_of_predicates_must_all_hold() -> None:
    flock = Flock()
    picky = Recorder()
    flock.agent("picky").consumes(
        Task, where=[lambda t: t.n > 2, lambda t: t.label == "go"]
    ).publishes(Done).with_engines(picky)
    await publish_all(
        flock,
        Task(n=1, label="go"),
        Task(n=3, label="stop"),
        Task(n=4, label="go"),
        Task(n=5, label="go"),
    )
    assert sorted(picky.seen) == [4, 5]


async def test_from_agents_filters_by_producer() -> None:
    flock = Flock()
    from_trusted = Recorder()
    flock.agent("trusted").consumes(Counter).publishes(Task).with_engines(
        lambda c: Task(n=c.n, label="trusted")
    )
    flock.agent("other").consumes(Counter).publishes(Task).with_engines(
        lambda c: Task(n=c.n + 100, label="other")
    )
    flock.agent("listener").consumes(Task, from_agents="trusted").publishes(Done).with_engines(
        from_trusted
    )
    await publish_all(flock, Counter(n=1))
    await publish_all(flock, Task(n=7))  # published by "external"
    assert from_trusted.seen == [1]


async def test_from_agents_accepts_several_producers() -> None:
    flock = Flock()
    seen = Recorder()
    flock.agent("listener").consumes(Task, from_agents=["alice", "bob"]).with_engines(seen)
    await flock.publish(Task(n=1), produced_by="alice")
    await flock.publish(Task(n=2), produced_by="bob")
    await flock.publish(Task(n=3), produced_by="mallory")
    await flock.run_until_idle(timeout=10)
    assert sorted(seen.seen) == [1, 2]


async def test_channels_match_artifact_tags() -> None:
    flock = Flock()
    urgent = Recorder()
    anything = Recorder()
    flock.agent("urgent").consumes(Task, channels=["urgent", "pager"]).with_engines(urgent)
    flock.agent("anything").consumes(Task).with_engines(anything)
    await publish_all(flock, Task(n=1), tags=["urgent"])
    await publish_all(flock, Task(n=2), tags=["pager", "other"])
    await publish_all(flock, Task(n=3), tags=["other"])
    await publish_all(flock, Task(n=4))
    assert sorted(urgent.seen) == [1, 2]
    assert sorted(anything.seen) == [1, 2, 3, 4]


async def test_single_channel_string() -> None:
    flock = Flock()
    seen = Recorder()
    flock.agent("a").consumes(Task, channels="blue").with_engines(seen)
    await publish_all(flock, Task(n=1), tags=["blue"])
    await publish_all(flock, Task(n=2), tags=["bluegrass"])
    assert seen.seen == [1]


async def test_several_consumes_clauses_are_alternatives() -> None:
    flock = Flock()
    seen: list[str] = []
    flock.agent("a").consumes(Task, where=lambda t: t.n == 1).consumes(Counter).with_engines(
        lambda m: seen.append(type(m).__name__)
    )
    await publish_all(flock, Task(n=1), Task(n=2))
    await flock.publish(Counter(n=5))
    await flock.run_until_idle(timeout=10)
    assert sorted(seen) == ["Counter", "Task"]


async def test_an_agent_does_not_trigger_itself_by_default() -> None:
    flock = Flock()
    runs: list[int] = []

    def bump(c: Counter) -> Counter:
        runs.append(c.n)
        return Counter(n=c.n + 1)

    flock.agent("bumper").consumes(Counter).publishes(Counter).with_engines(bump)
    start = await flock.publish(Counter(n=0))
    await flock.run_until_idle(start.correlation_id, timeout=10)

    assert runs == [0]
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=start.correlation_id)
    )
    assert total == 2 and items[1].produced_by == "bumper"
    status = await flock.correlation_status(start.correlation_id)
    assert status is not None and status.errors == []


async def test_self_trigger_allowed_loops_until_the_correlation_bound() -> None:
    flock = Flock(max_runs_per_correlation=15)
    runs: list[int] = []

    def bump(c: Counter) -> Counter:
        runs.append(c.n)
        return Counter(n=c.n + 1)

    flock.agent("bumper").consumes(Counter).publishes(Counter).with_engines(
        bump
    ).prevent_self_trigger(False)
    start = await flock.publish(Counter(n=0))
    await flock.run_until_idle(start.correlation_id, timeout=10)

    assert runs == list(range(15))
    _, total = await flock.store.query_artifacts(FilterConfig(correlation_id=start.correlation_id))
    assert total == 16
    status = await flock.correlation_status(start.correlation_id)
    assert status is not None and status.state == "idle"
    (error,) = status.errors
    assert error.agent == "flock" and "limit of 15" in error.message


async def test_prevent_self_trigger_only_skips_the_producer_itself() -> None:
    flock = Flock()
    echo = Recorder()
    watcher = Recorder()

    def echo_engine(task: Task) -> Task:
        echo.seen.append(task.n)
        return Task(n=task.n + 1)

    flock.agent("echo").consumes(Task).publishes(Task).with_engines(echo_engine)
    flock.agent("watcher").consumes(Task).publishes(Done).with_engines(watcher)
    await publish_all(flock, Task(n=1))
    assert echo.seen == [1]
    assert sorted(watcher.seen) == [1, 2]  # the watcher also sees echo's output
