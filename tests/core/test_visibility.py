"""Visibility: agents only consume artifacts their identity (name, labels, tenant) may see."""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import (
    AgentBuilder,
    FilterConfig,
    Flock,
    Identity,
    LabelledVisibility,
    PrivateVisibility,
    PublicVisibility,
    TenantVisibility,
    flock_type,
)
from flock.core.artifacts import Artifact

pytestmark = pytest.mark.timeout(30)

_SUFFIX = uuid.uuid4().hex[:8]


@flock_type(name=f"VisSecret_{_SUFFIX}")
class Secret(BaseModel):
    text: str


@flock_type(name=f"VisSeed_{_SUFFIX}")
class Seed(BaseModel):
    text: str


def build(flock: Flock, seen: dict[str, list[str]]) -> None:
    """Five listeners with different identities, all consuming Secret."""

    def listener(name: str) -> AgentBuilder:
        seen[name] = []

        def engine(secret: Secret) -> None:
            seen[name].append(secret.text)

        return flock.agent(name).consumes(Secret).with_engines(engine)

    listener("alice")
    listener("bob")
    listener("cleared").labels("secret", "hr")
    listener("half_cleared").labels("secret")
    listener("acme_bot").tenant("acme")
    listener("globex_bot").tenant("globex").labels("secret", "hr")


async def consumers_of(visibility: object) -> set[str]:
    flock = Flock()
    seen: dict[str, list[str]] = {}
    build(flock, seen)
    await flock.publish(Secret(text="s"), visibility=visibility)  # type: ignore[arg-type]
    await flock.run_until_idle(timeout=10)
    return {name for name, texts in seen.items() if texts}


ALL = {"alice", "bob", "cleared", "half_cleared", "acme_bot", "globex_bot"}


async def test_public_is_seen_by_everyone() -> None:
    assert await consumers_of(PublicVisibility()) == ALL
    assert await consumers_of(None) == ALL  # the default


async def test_private_is_seen_only_by_the_named_agents() -> None:
    visibility = PrivateVisibility(agents=frozenset({"alice", "acme_bot"}))
    assert await consumers_of(visibility) == {"alice", "acme_bot"}


async def test_private_with_nobody_named_is_seen_by_nobody() -> None:
    assert await consumers_of(PrivateVisibility()) == set()


async def test_labelled_needs_every_required_label() -> None:
    visibility = LabelledVisibility(required_labels=frozenset({"secret", "hr"}))
    assert await consumers_of(visibility) == {"cleared", "globex_bot"}
    one_label = LabelledVisibility(required_labels=frozenset({"secret"}))
    assert await consumers_of(one_label) == {"cleared", "half_cleared", "globex_bot"}


async def test_tenant_is_seen_by_its_tenant_and_the_shared_agents() -> None:
    """An agent without a tenant serves every tenant; a tenant-bound one only its own."""
    shared = {"alice", "bob", "cleared", "half_cleared"}
    assert await consumers_of(TenantVisibility(tenant_id="acme")) == shared | {"acme_bot"}
    assert await consumers_of(TenantVisibility(tenant_id="initech")) == shared


async def test_agent_output_visibility_is_applied() -> None:
    """`publishes(..., visibility=...)` stamps outputs; only allowed agents pick them up."""
    flock = Flock()
    seen: dict[str, list[str]] = {}
    build(flock, seen)
    flock.agent("source").consumes(Seed).publishes(
        Secret, visibility=PrivateVisibility(agents=frozenset({"bob"}))
    ).with_engines(lambda seed: Secret(text=seed.text))

    seed = await flock.publish(Seed(text="psst"))
    await flock.run_until_idle(seed.correlation_id, timeout=10)

    assert {name for name, texts in seen.items() if texts} == {"bob"}
    assert seen["bob"] == ["psst"]
    items, _ = await flock.store.query_artifacts(
        FilterConfig(correlation_id=seed.correlation_id, produced_by=frozenset({"source"}))
    )
    (output,) = items
    assert output.visibility == PrivateVisibility(agents=frozenset({"bob"}))
    assert output.visibility_kind == "Private"


async def test_store_queries_can_filter_by_what_an_identity_may_see() -> None:
    flock = Flock()
    await flock.publish(Secret(text="public"))
    await flock.publish(Secret(text="acme"), visibility=TenantVisibility(tenant_id="acme"))
    await flock.publish(
        Secret(text="alice"), visibility=PrivateVisibility(agents=frozenset({"alice"}))
    )

    async def visible(identity: Identity) -> set[str]:
        items, _ = await flock.store.query_artifacts(FilterConfig(visible_to=identity))
        return {a.payload["text"] for a in items}

    assert await visible(Identity("alice")) == {"public", "alice"}
    assert await visible(Identity("bot", tenant="acme")) == {"public", "acme"}
    assert await visible(Identity()) == {"public"}
    _, total = await flock.store.query_artifacts(
        FilterConfig(visibility=frozenset({"Tenant", "Private"}))
    )
    assert total == 2


async def test_an_agents_identity_follows_changes_to_it() -> None:
    flock = Flock()
    builder = flock.agent("late_cleared").consumes(Secret).with_engines(lambda s: None)
    labelled = LabelledVisibility(required_labels=frozenset({"secret"}))
    secret = Artifact(type=f"VisSecret_{_SUFFIX}", payload={"text": "x"}, visibility=labelled)
    agent = builder.agent
    assert not agent.subscribes_to(secret)  # cached identity: no labels yet
    builder.labels("secret")
    assert agent.identity.labels == {"secret"}
    assert agent.subscribes_to(secret)
    builder.tenant("acme")
    assert agent.identity.tenant == "acme"
