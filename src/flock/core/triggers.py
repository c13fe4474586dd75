"""What an artifact triggers: runs of the agents it reaches alone, and parts of the open
groups of AND gates, joins and batches (see `flock.core.groups`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from flock.core.agent import Agent, Subscription
from flock.core.artifacts import Artifact
from flock.core.failures import describe_failure
from flock.core.groups import GroupPart, deadline_after, group_name
from flock.core.runs import Run, RunState
from flock.core.visibility import tenant_of


@dataclass(slots=True)
class Triggers:
    """The runs and group parts some artifacts trigger, stored with them."""

    runs: list[Run] = field(default_factory=list)
    parts: list[GroupPart] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs or self.parts)

    def extend(self, other: Triggers) -> None:
        self.runs.extend(other.runs)
        self.parts.extend(other.parts)

    def next_deadline(self) -> datetime | None:
        return min((p.deadline for p in self.parts if p.deadline is not None), default=None)


def triggers_for(
    by_type: Mapping[str, Sequence[Agent]],
    artifact: Artifact,
    *,
    principal: str | None,
    at: datetime,
) -> Triggers:
    """What `artifact` triggers: a queued run per agent it reaches through a one-type
    subscription, a part per AND gate, join or batch subscription it enters.

    A `where` predicate or join key that raises fails its agent alone: that run is created
    `dead`, with the error, so it shows in the correlation's errors.
    """
    found = Triggers()
    for agent in by_type.get(artifact.type, ()):
        try:
            if not agent.may_take(artifact):
                continue
            single = False
            for index, sub in enumerate(agent.subscriptions):
                if not sub.accepts(artifact):
                    continue
                if sub.grouped:
                    found.parts.append(_part(agent, index, sub, artifact, principal, at))
                else:
                    single = True
            if not single:
                continue
            state, error = RunState.QUEUED, None
        except Exception as exc:
            state = RunState.DEAD
            error = f"its `where` predicate or join key raised {describe_failure(exc)}"
        found.runs.append(
            Run.new(
                agent.name,
                artifact.correlation_id,
                (artifact.id,),
                max_attempts=agent.retry_policy.max_attempts,
                principal=principal,
                at=at,
                state=state,
                error=error,
            )
        )
    return found


def triggers_of(
    by_type: Mapping[str, Sequence[Agent]],
    artifacts: Iterable[Artifact],
    *,
    principal: str | None,
    at: datetime,
) -> Triggers:
    found = Triggers()
    for artifact in artifacts:
        found.extend(triggers_for(by_type, artifact, principal=principal, at=at))
    return found


def _part(
    agent: Agent,
    index: int,
    sub: Subscription,
    artifact: Artifact,
    principal: str | None,
    at: datetime,
) -> GroupPart:
    tenant = tenant_of(artifact.visibility)
    if sub.batch is not None:
        group, kind, seconds = group_name(index, "b", None, tenant), "batch", sub.batch.timeout
    elif sub.join is not None:
        key = sub.join.by(artifact.model())
        group, kind, seconds = group_name(index, "j", key, tenant), "and", sub.join.within
    else:
        group, kind, seconds = group_name(index, "c", artifact.correlation_id, tenant), "and", None
    return GroupPart(
        agent=agent.name,
        group=group,
        kind=kind,  # type: ignore[arg-type]
        artifact_id=artifact.id,
        type_name=artifact.type,
        correlation_id=artifact.correlation_id,
        arrived_at=at,
        need=sub.types,
        size=sub.batch.size if sub.batch is not None else 0,
        deadline=deadline_after(at, seconds),
        principal=principal,
        max_attempts=agent.retry_policy.max_attempts,
    )


__all__ = ["Triggers", "triggers_for", "triggers_of"]
