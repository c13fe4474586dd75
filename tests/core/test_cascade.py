"""Cascades: agents consume what others publish; results are queryable by correlation."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from flock import Artifact, FilterConfig, Flock, RunContext, flock_type

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"CascadeIdea_{_SUFFIX}")
class Idea(BaseModel):
    topic: str


@flock_type(name=f"CascadeDraft_{_SUFFIX}")
class Draft(BaseModel):
    text: str


@flock_type(name=f"CascadeReview_{_SUFFIX}")
class Review(BaseModel):
    verdict: str


@flock_type(name=f"CascadeStray_{_SUFFIX}")
class Stray(BaseModel):
    pass


def write(idea: Idea) -> Draft:
    return Draft(text=f"about {idea.topic}")


async def review(draft: Draft) -> Review:
    return Review(verdict=f"ok: {draft.text}")


async def by_correlation(flock: Flock, correlation_id: str) -> list[Artifact]:
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=correlation_id), limit=100
    )
    assert total == len(items)
    return items  # type: ignore[return-value]


async def test_three_step_cascade_with_sync_and_async_engines() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    flock.agent("reviewer").consumes(Draft).publishes(Review).with_engines(review)

    idea = await flock.publish(Idea(topic="tea"))
    await flock.run_until_idle(correlation_id=idea.correlation_id, timeout=10)

    items = await by_correlation(flock, idea.correlation_id)
    by_type = {a.type: a for a in items}
    assert [a.type for a in items] == [
        f"CascadeIdea_{_SUFFIX}",
        f"CascadeDraft_{_SUFFIX}",
        f"CascadeReview_{_SUFFIX}",
    ]
    assert all(a.correlation_id == idea.correlation_id for a in items)
    assert by_type[f"CascadeDraft_{_SUFFIX}"].produced_by == "writer"
    assert by_type[f"CascadeReview_{_SUFFIX}"].produced_by == "reviewer"
    assert by_type[f"CascadeReview_{_SUFFIX}"].payload == {"verdict": "ok: about tea"}
    assert by_type[f"CascadeIdea_{_SUFFIX}"].produced_by == "external"

    assert flock.stats.artifacts_published == 3
    assert flock.stats.agent_runs == 2
    assert flock.stats.agent_failures == 0
    status = await flock.correlation_status(idea.correlation_id)
    assert status is not None
    assert status.state == "idle" and status.errors == [] and status.artifact_count == 3


async def test_query_filters_on_a_cascade() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    flock.agent("reviewer").consumes(Draft).publishes(Review).with_engines(review)
    first = await flock.publish(Idea(topic="one"))
    second = await flock.publish(Idea(topic="two"))
    await flock.run_until_idle(timeout=10)

    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=first.correlation_id, produced_by=frozenset({"reviewer"}))
    )
    assert total == 1 and items[0].payload == {"verdict": "ok: about one"}
    _, total = await flock.store.query_artifacts(
        FilterConfig(type_names=frozenset({f"CascadeDraft_{_SUFFIX}"}))
    )
    assert total == 2
    assert len(await by_correlation(flock, second.correlation_id)) == 3
    summary = await flock.store.summarize_artifacts(
        FilterConfig(correlation_id=second.correlation_id)
    )
    assert summary["total"] == 3
    assert summary["by_producer"] == {"external": 1, "writer": 1, "reviewer": 1}


async def test_engine_object_with_async_evaluate_gets_the_context() -> None:
    contexts: list[RunContext] = []

    class Writer:
        async def evaluate(self, ctx: RunContext, inputs: list[BaseModel]) -> Draft:
            contexts.append(ctx)
            (idea,) = inputs
            assert isinstance(idea, Idea)
            return Draft(text=f"engine on {idea.topic}")

    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(Writer())
    idea = await flock.publish(Idea(topic="cats"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)

    items = await by_correlation(flock, idea.correlation_id)
    assert [a.payload for a in items[1:]] == [{"text": "engine on cats"}]
    (ctx,) = contexts
    assert ctx.agent == "writer"
    assert ctx.correlation_id == idea.correlation_id
    assert [a.id for a in ctx.artifacts] == [idea.id]
    assert ctx.flock is flock


async def test_async_callable_object_engine() -> None:
    class Callable:
        async def __call__(self, idea: Idea) -> Draft:
            return Draft(text=idea.topic.upper())

    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(Callable())
    idea = await flock.publish(Idea(topic="loud"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)
    items = await by_correlation(flock, idea.correlation_id)
    assert items[-1].payload == {"text": "LOUD"}


async def test_engine_returning_a_list_publishes_each_item() -> None:
    def split(idea: Idea) -> list[Draft]:
        return [Draft(text=word) for word in idea.topic.split()]

    reviewed: list[str] = []

    def count(draft: Draft) -> None:
        reviewed.append(draft.text)

    flock = Flock()
    flock.agent("splitter").consumes(Idea).publishes(Draft).with_engines(split)
    flock.agent("counter").consumes(Draft).with_engines(count)
    idea = await flock.publish(Idea(topic="a b c"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)

    items = await by_correlation(flock, idea.correlation_id)
    drafts = [a for a in items if a.type == f"CascadeDraft_{_SUFFIX}"]
    assert sorted(a.payload["text"] for a in drafts) == ["a", "b", "c"]
    assert all(a.produced_by == "splitter" for a in drafts)
    assert sorted(reviewed) == ["a", "b", "c"]  # each list item triggers its own run
    assert flock.stats.agent_runs == 4


async def test_engine_returning_none_publishes_nothing() -> None:
    calls: list[str] = []

    def sink(idea: Idea) -> None:
        calls.append(idea.topic)

    flock = Flock()
    flock.agent("sink").consumes(Idea).publishes(Draft).with_engines(sink)
    idea = await flock.publish(Idea(topic="void"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)

    assert calls == ["void"]
    assert [a.id for a in await by_correlation(flock, idea.correlation_id)] == [idea.id]
    status = await flock.correlation_status(idea.correlation_id)
    assert status is not None and status.errors == [] and status.state == "idle"
    assert flock.stats.agent_runs == 1 and flock.stats.agent_failures == 0


async def test_several_engines_all_contribute_outputs() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(
        write, lambda idea: Draft(text=f"second take on {idea.topic}")
    )
    idea = await flock.publish(Idea(topic="x"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)
    texts = sorted(
        a.payload["text"] for a in (await by_correlation(flock, idea.correlation_id))[1:]
    )
    assert texts == ["about x", "second take on x"]


@pytest.mark.parametrize(
    "result",
    [Stray(), [Draft(text="fine"), Stray()]],
    ids=["single", "inside-a-list"],
)
async def test_engine_returning_an_undeclared_type_fails_the_run(result: Any) -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(lambda idea: result)
    idea = await flock.publish(Idea(topic="x"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)

    # the run fails as a whole: not even the declared output is published
    assert [a.id for a in await by_correlation(flock, idea.correlation_id)] == [idea.id]
    status = await flock.correlation_status(idea.correlation_id)
    assert status is not None
    (error,) = status.errors
    assert error.agent == "writer"
    assert error.artifact_id == idea.id
    assert "Stray" in error.message
    assert flock.stats.agent_failures == 1


async def test_engine_returning_a_non_model_fails_the_run() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(lambda idea: "text")
    idea = await flock.publish(Idea(topic="x"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)
    status = await flock.correlation_status(idea.correlation_id)
    assert status is not None
    (error,) = status.errors
    assert error.agent == "writer" and "str" in error.message


async def test_outputs_inherit_correlation_and_partition_key() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    cid = f"my-correlation-{uuid.uuid4()}"
    idea = await flock.publish(Idea(topic="x"), correlation_id=cid, partition_key="p7")
    assert idea.correlation_id == cid
    await flock.run_until_idle(cid, timeout=10)
    items = await by_correlation(flock, cid)
    assert len(items) == 2
    assert all(a.partition_key == "p7" for a in items)


async def test_consumption_records_are_kept() -> None:
    flock = Flock()
    flock.agent("writer").consumes(Idea).publishes(Draft).with_engines(write)
    idea = await flock.publish(Idea(topic="x"))
    await flock.run_until_idle(idea.correlation_id, timeout=10)
    (record,) = await flock.store.get_consumptions(idea.id)
    assert record.consumer == "writer"
    assert record.correlation_id == idea.correlation_id
