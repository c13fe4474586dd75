"""Publishing: models, dicts and Artifacts; bad input is rejected and nothing is stored."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel, ValidationError

from flock import (
    Artifact,
    FilterConfig,
    Flock,
    PrivateVisibility,
    PublicVisibility,
    RegistryError,
    flock_type,
)

_SUFFIX = uuid.uuid4().hex[:8]
NOTE = f"PublishNote_{_SUFFIX}"


@flock_type(name=NOTE)
class Note(BaseModel):
    text: str
    stars: int = 0


class Unregistered(BaseModel):
    text: str


async def assert_nothing_stored(flock: Flock) -> None:
    items, total = await flock.store.query_artifacts()
    assert (items, total) == ([], 0)
    assert flock.stats.artifacts_published == 0
    assert (await flock.store.summarize_artifacts())["total"] == 0


async def test_publish_a_model() -> None:
    flock = Flock()
    artifact = await flock.publish(Note(text="hi", stars=3))

    assert artifact.type == NOTE
    assert artifact.payload == {"text": "hi", "stars": 3}
    assert artifact.produced_by == "external"
    assert artifact.correlation_id and artifact.id
    assert isinstance(artifact.visibility, PublicVisibility)
    assert await flock.store.get(artifact.id) == artifact
    assert flock.stats.artifacts_published == 1


async def test_publish_a_dict() -> None:
    flock = Flock()
    artifact = await flock.publish({"type": NOTE, "text": "from dict"})

    assert artifact.type == NOTE
    assert artifact.payload == {"text": "from dict", "stars": 0}  # defaults filled in
    assert artifact.model() == Note(text="from dict")
    stored = await flock.store.get(artifact.id)
    assert stored is not None and stored.payload == artifact.payload


async def test_publish_an_artifact() -> None:
    flock = Flock()
    given = Artifact(type=NOTE, payload={"text": "raw"}, tags={"t"}, correlation_id="c-1")
    artifact = await flock.publish(given)

    assert artifact.id == given.id
    assert artifact.correlation_id == "c-1"
    assert artifact.tags == frozenset({"t"})
    items, total = await flock.store.query_artifacts(FilterConfig(correlation_id="c-1"))
    assert total == 1 and items[0].id == given.id


async def test_publish_options() -> None:
    flock = Flock()
    cid = str(uuid.uuid4())
    artifact = await flock.publish(
        Note(text="x"),
        correlation_id=cid,
        tags=["a", "b"],
        partition_key="p1",
        visibility=PrivateVisibility(agents=frozenset({"someone"})),
        produced_by="tester",
    )
    assert artifact.correlation_id == cid
    assert artifact.tags == frozenset({"a", "b"})
    assert artifact.partition_key == "p1"
    assert artifact.visibility.kind == "Private"
    assert artifact.produced_by == "tester"
    items, total = await flock.store.query_artifacts(
        FilterConfig(correlation_id=cid, tags=frozenset({"a"}))
    )
    assert total == 1 and items[0].id == artifact.id


async def test_each_publish_gets_a_fresh_correlation_id() -> None:
    flock = Flock()
    a = await flock.publish(Note(text="a"))
    b = await flock.publish(Note(text="b"))
    assert a.correlation_id != b.correlation_id
    assert a.id != b.id


@pytest.mark.parametrize(
    "obj",
    [
        {"type": f"Unknown_{_SUFFIX}", "text": "x"},
        Unregistered(text="x"),
        Artifact(type=f"Unknown_{_SUFFIX}", payload={"text": "x"}),
    ],
    ids=["dict", "model", "artifact"],
)
async def test_unknown_type_raises_and_stores_nothing(obj: object) -> None:
    flock = Flock()
    with pytest.raises(RegistryError):
        await flock.publish(obj)  # type: ignore[arg-type]
    await assert_nothing_stored(flock)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": NOTE},  # missing field
        {"type": NOTE, "text": "x", "stars": "many"},  # wrong type
        Artifact(type=NOTE, payload={"stars": 1}),
        Artifact(type=NOTE, payload={"text": "x", "stars": "many"}),
    ],
    ids=["dict-missing", "dict-wrong-type", "artifact-missing", "artifact-wrong-type"],
)
async def test_invalid_payload_raises_validation_error_and_stores_nothing(obj: object) -> None:
    flock = Flock()
    with pytest.raises(ValidationError):
        await flock.publish(obj)  # type: ignore[arg-type]
    await assert_nothing_stored(flock)


async def test_dict_without_type_is_rejected() -> None:
    flock = Flock()
    with pytest.raises(TypeError):
        await flock.publish({"text": "no type"})
    await assert_nothing_stored(flock)


async def test_rejected_publish_does_not_trigger_agents() -> None:
    flock = Flock()
    seen: list[Note] = []

    def record(note: Note) -> None:
        seen.append(note)

    flock.agent("reader").consumes(Note).with_engines(record)
    with pytest.raises(ValidationError):
        await flock.publish({"type": NOTE, "stars": 1})
    await flock.run_until_idle(timeout=5)
    assert seen == []
    assert flock.stats.agent_runs == 0
