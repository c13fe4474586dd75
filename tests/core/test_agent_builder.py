"""Declaring agents: the fluent builder and the checks made when the flock is used."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import AgentBuilder, AgentConfigError, Flock, RegistryError, flock_type

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"BuilderIn_{_SUFFIX}")
class In(BaseModel):
    x: int


@flock_type(name=f"BuilderOut_{_SUFFIX}")
class Out(BaseModel):
    y: int


def double(item: In) -> Out:
    return Out(y=item.x * 2)


class NotRegistered(BaseModel):
    z: int


def test_builder_methods_chain_and_describe_the_agent() -> None:
    flock = Flock()
    builder = (
        flock.agent("doubler")
        .description("doubles x")
        .consumes(In)
        .publishes(Out)
        .with_engines(double)
        .max_concurrency(3)
        .prevent_self_trigger(False)
        .labels("a", "b")
        .tenant("acme")
    )
    assert isinstance(builder, AgentBuilder)
    assert builder.name == "doubler"

    agent = flock.get_agent("doubler")
    assert [a.name for a in flock.agents] == ["doubler"]
    described = agent.describe()
    assert described["name"] == "doubler"
    assert described["description"] == "doubles x"
    assert described["subscriptions"][0]["types"] == [f"BuilderIn_{_SUFFIX}"]
    assert described["outputs"] == [{"type": f"BuilderOut_{_SUFFIX}", "visibility": "Public"}]
    assert described["max_concurrency"] == 3
    assert described["labels"] == ["a", "b"]
    assert described["tenant"] == "acme"
    assert agent.prevent_self_trigger is False


def test_defaults() -> None:
    flock = Flock()
    flock.agent("plain").consumes(In).publishes(Out).with_engines(double)
    agent = flock.get_agent("plain")
    assert agent.max_concurrency is None
    assert agent.prevent_self_trigger is True
    assert agent.labels == frozenset()
    assert agent.tenant is None


def test_consumes_accepts_registered_type_names() -> None:
    flock = Flock()
    flock.agent("by_name").consumes(f"BuilderIn_{_SUFFIX}").publishes(Out).with_engines(double)
    sub = flock.get_agent("by_name").subscriptions[0]
    assert sub.type_names == frozenset({f"BuilderIn_{_SUFFIX}"})


async def test_agent_without_engine_fails_when_the_flock_is_used() -> None:
    flock = Flock()
    flock.agent("lazy").consumes(In).publishes(Out)  # declaring is allowed ...
    with pytest.raises(AgentConfigError, match="no engine"):
        await flock.publish(In(x=1))  # ... using the flock is not
    items, total = await flock.store.query_artifacts()
    assert total == 0 and items == []


async def test_duplicate_agent_names_fail_when_the_flock_is_used() -> None:
    flock = Flock()
    flock.agent("twin").consumes(In).publishes(Out).with_engines(double)
    flock.agent("twin").consumes(In).publishes(Out).with_engines(double)
    with pytest.raises(AgentConfigError, match="twin"):
        await flock.publish(In(x=1))
    _, total = await flock.store.query_artifacts()
    assert total == 0


async def test_fixing_the_declaration_makes_the_flock_usable_again() -> None:
    flock = Flock()
    builder = flock.agent("late").consumes(In).publishes(Out)
    with pytest.raises(AgentConfigError):
        await flock.publish(In(x=1))
    builder.with_engines(double)
    artifact = await flock.publish(In(x=2))
    await flock.run_until_idle(artifact.correlation_id, timeout=5)
    _, total = await flock.store.query_artifacts()
    assert total == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_concurrency_must_be_a_positive_int(bad: object) -> None:
    flock = Flock()
    builder = flock.agent("a").consumes(In).publishes(Out).with_engines(double)
    with pytest.raises(AgentConfigError, match="max_concurrency"):
        builder.max_concurrency(bad)  # type: ignore[arg-type]
    assert flock.get_agent("a").max_concurrency is None


def test_consumes_needs_a_type() -> None:
    flock = Flock()
    with pytest.raises(AgentConfigError, match="at least one type"):
        flock.agent("a").consumes()


def test_consumes_an_unknown_type_name() -> None:
    flock = Flock()
    with pytest.raises(RegistryError, match="unknown artifact type"):
        flock.agent("a").consumes(f"NoSuchType_{uuid.uuid4().hex}")


def test_consumes_an_unregistered_model() -> None:
    flock = Flock()
    with pytest.raises(RegistryError):
        flock.agent("a").consumes(NotRegistered)


def test_publishes_needs_a_registered_type() -> None:
    flock = Flock()
    with pytest.raises(AgentConfigError):
        flock.agent("a").publishes()
    with pytest.raises(RegistryError):
        flock.agent("b").publishes(NotRegistered)


def test_where_takes_callables() -> None:
    flock = Flock()
    with pytest.raises(AgentConfigError, match="where="):
        flock.agent("a").consumes(In, where=["not callable"])  # type: ignore[list-item]


def test_with_engines_needs_an_engine() -> None:
    flock = Flock()
    with pytest.raises(AgentConfigError):
        flock.agent("a").with_engines()
    with pytest.raises(AgentConfigError):
        flock.agent("b").with_engines(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   ", None])
def test_agent_needs_a_name(name: object) -> None:
    with pytest.raises(AgentConfigError):
        Flock().agent(name)  # type: ignore[arg-type]


def test_unknown_agent_lookup() -> None:
    flock = Flock()
    with pytest.raises(KeyError):
        flock.get_agent("nobody")


def test_max_runs_per_correlation_must_be_positive() -> None:
    assert Flock().max_runs_per_correlation == 1000
    with pytest.raises(ValueError):
        Flock(max_runs_per_correlation=0)
