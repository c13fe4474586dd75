"""direct_invoke: run one agent on given inputs, without triggering a cascade."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import AgentOutputError, Artifact, FilterConfig, Flock, flock_type

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"DirectQuestion_{_SUFFIX}")
class Question(BaseModel):
    text: str


@flock_type(name=f"DirectAnswer_{_SUFFIX}")
class Answer(BaseModel):
    text: str


@flock_type(name=f"DirectAudit_{_SUFFIX}")
class Audit(BaseModel):
    text: str


def build() -> tuple[Flock, list[str]]:
    flock = Flock()
    audited: list[str] = []

    def audit(answer: Answer) -> Audit:
        audited.append(answer.text)
        return Audit(text=answer.text)

    flock.agent("answerer").consumes(Question).publishes(Answer).with_engines(
        lambda q: Answer(text=f"answer to {q.text}")
    )
    flock.agent("auditor").consumes(Answer).publishes(Audit).with_engines(audit)
    return flock, audited


async def test_direct_invoke_runs_one_agent_only() -> None:
    flock, audited = build()
    outputs = await flock.direct_invoke("answerer", [Question(text="why")])

    (output,) = outputs
    assert isinstance(output, Artifact)
    assert output.type == f"DirectAnswer_{_SUFFIX}"
    assert output.payload == {"text": "answer to why"}
    assert output.produced_by == "answerer"

    await flock.run_until_idle(timeout=5)
    assert audited == []  # the downstream agent was not triggered
    stored = await flock.store.get(output.id)
    assert stored is not None and stored.payload == output.payload
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=output.correlation_id)
    )
    assert total == 1 and items[0].id == output.id
    assert flock.stats.agent_runs == 1


async def test_direct_invoke_accepts_a_builder_an_agent_and_artifacts() -> None:
    flock = Flock()
    builder = (
        flock.agent("answerer")
        .consumes(Question)
        .publishes(Answer)
        .with_engines(lambda q: Answer(text=q.text.upper()))
    )
    (a,) = await flock.direct_invoke(builder, [Question(text="one")])
    (b,) = await flock.direct_invoke(flock.get_agent("answerer"), [Question(text="two")])
    artifact = Artifact(type=f"DirectQuestion_{_SUFFIX}", payload={"text": "three"})
    (c,) = await flock.direct_invoke("answerer", [artifact])
    assert [x.payload["text"] for x in (a, b, c)] == ["ONE", "TWO", "THREE"]
    assert len({a.correlation_id, b.correlation_id, c.correlation_id}) == 3


async def test_direct_invoke_with_several_inputs_passes_a_list() -> None:
    flock = Flock()
    flock.agent("joiner").consumes(Question).publishes(Answer).with_engines(
        lambda qs: Answer(text="+".join(q.text for q in qs))
    )
    (output,) = await flock.direct_invoke("joiner", [Question(text="a"), Question(text="b")])
    assert output.payload == {"text": "a+b"}


async def test_direct_invoke_raises_the_agents_error() -> None:
    flock = Flock()

    def boom(q: Question) -> Answer:
        raise RuntimeError("no answer")

    flock.agent("answerer").consumes(Question).publishes(Answer).with_engines(boom)
    with pytest.raises(RuntimeError, match="no answer"):
        await flock.direct_invoke("answerer", [Question(text="x")])
    assert flock.stats.agent_failures == 1
    _, total = await flock.store.query_artifacts()
    assert total == 0


async def test_direct_invoke_rejects_undeclared_outputs() -> None:
    flock = Flock()
    flock.agent("answerer").consumes(Question).publishes(Answer).with_engines(
        lambda q: Audit(text="nope")
    )
    with pytest.raises(AgentOutputError, match="Audit"):
        await flock.direct_invoke("answerer", [Question(text="x")])
    _, total = await flock.store.query_artifacts()
    assert total == 0


async def test_direct_invoke_unknown_agent() -> None:
    flock, _ = build()
    with pytest.raises(KeyError):
        await flock.direct_invoke("nobody", [Question(text="x")])
